"""What bounds batch enqueue: the server's own time for one batch statement.

    python benchmarks/enqueue_bound.py [--batch 1000] [--batches 20]

For batches of ``--batch`` rows, in one scratch database, prints the median of:

* our ``Queries.enqueue()`` call (wall time, client and server);
* the server's execution of that same statement (``EXPLAIN (ANALYZE, TIMING OFF)``
  on the same parameters: planning plus execution, no network, no client);
* PgQueuer 1.6's ``enqueue()`` call on asyncpg (wall time).

No client can make a batch faster than the server executes it, so
``theirs / server`` is the best ratio any client could reach with this
statement and schema: the same job rows, log rows, indexes and trigger.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psycopg  # noqa: E402
from common import scratch_database  # noqa: E402
from enqueue import _asyncpg_url  # noqa: E402
from psycopg import sql  # noqa: E402

from pgqueue_sync import DBSettings, Queries, SyncPsycopgDriver  # noqa: E402
from pgqueue_sync.drivers import psycopg as driver_module  # noqa: E402

PAYLOAD = b"x" * 32


def _statement(queries: Queries, batch: int) -> tuple[Any, Any]:
    """Run one batch enqueue, returning the statement and parameters it sent."""
    captured: list[tuple[Any, Any]] = []
    original = driver_module._fetch

    def capture(conn: Any, query: Any, params: Any) -> Any:
        captured.append((query, params))
        return original(conn, query, params)

    driver_module._fetch = capture  # type: ignore[assignment]
    try:
        queries.enqueue(["bench"] * batch, [PAYLOAD] * batch)
    finally:
        driver_module._fetch = original  # type: ignore[assignment]
    return captured[-1]


def ours(dsn: str, batch: int, batches: int) -> float:
    """Median wall ms of ``enqueue()`` (after one warm-up batch)."""
    walls = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
        queries.enqueue(["bench"] * batch, [PAYLOAD] * batch)
        for _ in range(batches):
            start = time.perf_counter()
            queries.enqueue(["bench"] * batch, [PAYLOAD] * batch)
            walls.append(time.perf_counter() - start)
    return statistics.median(walls) * 1000


def server(dsn: str, batch: int, batches: int) -> float:
    """Median server ms (planning + execution) of our batch statement."""
    times = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        query, params = _statement(Queries(SyncPsycopgDriver(conn), settings=DBSettings()),
                                   batch)
        explain = sql.SQL("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) ") + query
        for _ in range(batches):
            row = conn.execute(explain, params).fetchone()
            plan = row[0][0] if row else {}
            if isinstance(plan, str):
                plan = json.loads(plan)[0]
            times.append(plan["Planning Time"] + plan["Execution Time"])
    return statistics.median(times)


async def _theirs(dsn: str, batch: int, batches: int) -> float:
    import asyncpg
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries as TheirQueries

    conn = await asyncpg.connect(_asyncpg_url(dsn))
    try:
        queries = TheirQueries(AsyncpgDriver(conn))
        walls = []
        for _ in range(batches + 1):
            start = time.perf_counter()
            await queries.enqueue(["bench"] * batch, [PAYLOAD] * batch, [0] * batch)
            walls.append(time.perf_counter() - start)
        return statistics.median(walls[1:]) * 1000
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    # Each in its own database, so each fills its queue table the same way.
    with scratch_database() as dsn:
        wall = ours(dsn, args.batch, args.batches)
    with scratch_database() as dsn:
        floor = server(dsn, args.batch, args.batches)
    with scratch_database() as dsn:
        theirs = asyncio.run(_theirs(dsn, args.batch, args.batches))
    print(f"batches of {args.batch:,} rows, medians of {args.batches}")
    print(f"  pgqueue_sync enqueue():          {wall:7.2f} ms")
    print(f"  server time of that statement:   {floor:7.2f} ms")
    print(f"  PgQueuer 1.6 enqueue() (asyncpg): {theirs:6.2f} ms")
    print(f"  ratio now (theirs / ours):        {theirs / wall:6.2f}x")
    print(f"  best any client could reach:      {theirs / floor:6.2f}x (theirs / server time)")


if __name__ == "__main__":
    main()
