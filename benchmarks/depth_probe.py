"""Drain a deep backlog with one pgqueue_sync worker and print the rate per tenth.

    python benchmarks/depth_probe.py [JOBS] [--no-upkeep] [--private-cluster]

Fills JOBS queued no-op jobs (default 200,000) into a scratch database without
ANALYZE or VACUUM, as an application enqueueing a burst would on a server with
autovacuum off, then drains them with one worker on a pool of 4 connections at
its defaults. Prints the rate of each tenth and overall; ``--no-upkeep`` runs
the worker with ``queue_upkeep=False``; ``--private-cluster`` runs it on a new
private cluster with stock settings, autovacuum on (``benchmarks/cluster.py``).
Checks that every job ran once and the queue is empty. See the depth section of
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import benchmark_server, settings_summary  # noqa: E402
from common import scratch_database  # noqa: E402
from psycopg_pool import ConnectionPool  # noqa: E402

from pgqueue_sync import DBSettings, Job, Queries, SyncPsycopgDriver  # noqa: E402
from pgqueue_sync.app import PgQueuer  # noqa: E402

FILL_BATCH = 1_000
POOL_SIZE = 4


def fill(dsn: str, jobs: int) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
        for start in range(0, jobs, FILL_BATCH):
            count = min(FILL_BATCH, jobs - start)
            queries.enqueue(["probe"] * count, [b"x" * 32] * count)


def drain(dsn: str, jobs: int, *, upkeep: bool, aggregation: bool = True,
          ) -> list[tuple[int, float]]:
    """Drain and return (jobs done, perf_counter) marks: the start and every tenth."""
    seen: set[int] = set()
    marks: list[tuple[int, float]] = []
    lock = threading.Lock()
    tenth = max(jobs // 10, 1)

    def handler(job: Job) -> None:
        with lock:
            seen.add(job.id)
            if len(seen) % tenth == 0:
                marks.append((len(seen), time.perf_counter()))

    with ConnectionPool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE,
                        kwargs={"autocommit": True}) as pool:
        pgq = PgQueuer.from_psycopg_pool(pool, settings=DBSettings())
        pgq.entrypoint("probe")(handler)
        marks.append((0, time.perf_counter()))
        pgq.run(mode="drain", dequeue_timeout=1.0, queue_upkeep=upkeep,
                **({} if aggregation else {"log_aggregation_interval": None}))
        end = time.perf_counter()
        left = pgq.queries.queue_size()
    if len(seen) != jobs or left:
        raise SystemExit(f"ran {len(seen)} of {jobs} jobs; left in the queue: {left}")
    if marks[-1][0] != jobs:
        marks.append((jobs, end))
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="?", type=int, default=200_000)
    parser.add_argument("--no-upkeep", action="store_true")
    parser.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="with --private-cluster, a postgresql.conf line (repeatable), "
                             "e.g. shared_buffers=1GB")
    parser.add_argument("--no-aggregation", action="store_true",
                        help="do not fold the log into statistics (to see what that costs)")
    parser.add_argument("--private-cluster", action="store_true",
                        help="run on a new private cluster with stock settings (autovacuum on)")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.pg_setting)
    server_settings = benchmark_server(args.private_cluster, settings or None)
    with server_settings as server, scratch_database() as dsn:
        print(settings_summary(server), file=sys.stderr, flush=True)
        fill(dsn, args.jobs)
        marks = drain(dsn, args.jobs, upkeep=not args.no_upkeep,
                      aggregation=not args.no_aggregation)
    for (done_a, at_a), (done_b, at_b) in zip(marks, marks[1:], strict=False):
        print(f"{done_b:>9,} jobs: {(done_b - done_a) / (at_b - at_a):>8,.0f} jobs/s")
    total = marks[-1][1] - marks[0][1]
    print(f"total {args.jobs / total:,.0f} jobs/s in {total:.1f} s "
          f"(upkeep {'off' if args.no_upkeep else 'on'})")


if __name__ == "__main__":
    main()
