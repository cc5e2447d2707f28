"""Worker and scheduler applications for ``tests/test_pgbouncer.py``, run by ``pgq-sync run``.

Both read the database from ``PGQUEUE_SYNC_DSN`` (``pgq-sync --dsn ... run``
exports it): in the tests, PgBouncer in transaction mode. Their pools follow the
rule of docs/pgbouncer.md, ``prepare_threshold=None``, unless the arguments after
``--`` say otherwise::

    pgq-sync --dsn DSN run tests.apps.pooled_worker:worker -- --events FILE
    pgq-sync --dsn DSN run tests.apps.pooled_worker:scheduler -- --events FILE

The worker's entrypoint ``ping`` and the scheduler's every-second schedule
``tick`` each append one JSON line per run to ``--events`` (a single
``os.write`` on an ``O_APPEND`` descriptor): the job id (or schedule id), the
process id and the wall-clock time the run started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from psycopg_pool import ConnectionPool

from pgqueue_sync import DBSettings, Job, PgQueuer, Queries, Schedule, SchedulerManager
from tests.sched_apps.ticker import record

#: The schedule ``tick`` runs every second.
EXPRESSION = "* * * * * *"
#: How long the factory waits for the pool's first connection (seconds).
POOL_WAIT = 10.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tests.apps.pooled_worker")
    parser.add_argument("--events", required=True, help="JSON-lines file each run appends to")
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--prepare-threshold", type=int, default=None,
                        help="psycopg's prepare_threshold (default None: never prepare)")
    return parser


@contextlib.contextmanager
def _pool(ns: argparse.Namespace) -> Iterator[ConnectionPool[Any]]:
    pool: ConnectionPool[Any] = ConnectionPool(
        os.environ["PGQUEUE_SYNC_DSN"], min_size=1, max_size=ns.pool_size, open=True,
        kwargs={"autocommit": True, "prepare_threshold": ns.prepare_threshold},
    )
    try:
        pool.wait(timeout=POOL_WAIT)
        yield pool
    finally:
        pool.close()


@contextlib.contextmanager
def worker(args: Sequence[str]) -> Iterator[PgQueuer]:
    """A worker with the entrypoint ``ping``."""
    ns = _parser().parse_args(list(args))
    events: str = ns.events
    with _pool(ns) as pool:
        pgq = PgQueuer.from_psycopg_pool(pool, settings=DBSettings())

        @pgq.entrypoint("ping")
        def ping(job: Job) -> None:
            record(events, job=int(job.id))

        yield pgq


@contextlib.contextmanager
def scheduler(args: Sequence[str]) -> Iterator[SchedulerManager]:
    """A scheduler with the every-second schedule ``tick``."""
    ns = _parser().parse_args(list(args))
    events: str = ns.events
    with _pool(ns) as pool:
        sm = SchedulerManager(Queries.from_pool(pool, settings=DBSettings()))

        @sm.schedule("tick", EXPRESSION)
        def tick(schedule: Schedule) -> None:
            record(events, schedule=int(schedule.id))

        yield sm
