"""Enqueue throughput, pgqueue_sync (psycopg, sync) beside PgQueuer 1.6 (asyncpg), one run.

    python benchmarks/enqueue.py [--jobs 20000] [--batch 1000] [--single 2000] [--runs 3]

Each measurement uses a fresh database on the same server; the table prints
jobs/s for both libraries and our ratio (higher is better for us).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import psycopg  # noqa: E402
from common import HEADER, best_of, row, scratch_database, timed  # noqa: E402

from pgqueue_sync import DBSettings, Queries, SyncPsycopgDriver  # noqa: E402


def ours_batch(jobs: int, batch: int) -> float:
    with scratch_database() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
        payloads = [b"x" * 32] * batch

        def run() -> None:
            for _ in range(jobs // batch):
                queries.enqueue(["bench"] * batch, payloads)

        return jobs / timed(run)


def ours_single(jobs: int) -> float:
    with scratch_database() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())

        def run() -> None:
            for _ in range(jobs):
                queries.enqueue("bench", b"x" * 32)

        return jobs / timed(run)


def theirs_batch(jobs: int, batch: int) -> float:
    return asyncio.run(_theirs(jobs, batch))


def theirs_single(jobs: int) -> float:
    return asyncio.run(_theirs(jobs, 1))


async def _theirs(jobs: int, batch: int) -> float:
    import time

    import asyncpg
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries as PgqQueries

    with scratch_database() as dsn:
        conn = await asyncpg.connect(_asyncpg_url(dsn))
        try:
            queries = PgqQueries(AsyncpgDriver(conn))
            start = time.perf_counter()
            for _ in range(jobs // batch):
                if batch == 1:
                    await queries.enqueue("bench", b"x" * 32)
                else:
                    await queries.enqueue(["bench"] * batch, [b"x" * 32] * batch, [0] * batch)
            return jobs / (time.perf_counter() - start)
        finally:
            await conn.close()


def _asyncpg_url(dsn: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    host = params.get("host", "127.0.0.1")
    port = params.get("port", "5432")
    user = params.get("user", "postgres")
    return f"postgresql://{user}@{host}:{port}/{params['dbname']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--single", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(HEADER)
    ours = best_of(args.runs, lambda: ours_batch(args.jobs, args.batch))
    theirs = best_of(args.runs, lambda: theirs_batch(args.jobs, args.batch))
    print(row(f"enqueue {args.jobs} in batches of {args.batch}", ours, theirs))
    ours = best_of(args.runs, lambda: ours_single(args.single))
    theirs = best_of(args.runs, lambda: theirs_single(args.single))
    print(row(f"enqueue {args.single} single rows", ours, theirs))


if __name__ == "__main__":
    main()
