"""A scheduler application for ``tests/test_scheduler.py``, run in a child process.

Start it with::

    python -m tests.sched_apps.ticker --dsn DSN --events FILE [--api sm|pgq] [--seconds S]

(from the repository root). ``main`` hands :func:`factory` to
:func:`pgqueue_sync.launcher.run`, as ``pgq-sync run tests.sched_apps.ticker:factory``
would: with ``--api sm`` the factory yields a bare :class:`SchedulerManager`, with
``--api pgq`` a :class:`PgQueuer` that has a schedule and no entrypoint.

The schedule ``tick`` runs every second (``* * * * * *``). Each run appends one
JSON line to ``--events`` (a single ``os.write`` on an ``O_APPEND`` descriptor, so
lines of several processes never interleave): the process id, the schedule row
id, the ``next_run`` its claim set, and wall-clock start and end times, taken
``--seconds`` apart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from psycopg_pool import ConnectionPool

from pgqueue_sync import DBSettings, PgQueuer, Queries, Schedule, SchedulerManager

EXPRESSION = "* * * * * *"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.sched_apps.ticker")
    parser.add_argument("--dsn", required=True, help="libpq connection string")
    parser.add_argument("--events", required=True, help="JSON-lines file each run appends to")
    parser.add_argument("--api", choices=("sm", "pgq"), default="sm")
    parser.add_argument("--seconds", type=float, default=0.3, help="how long each run lasts")
    return parser


def record(path: str, **fields: Any) -> None:
    """Append one line atomically: ``fields``, the process id and the wall-clock time."""
    line = json.dumps({"pid": os.getpid(), "t": time.time(), **fields}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@contextlib.contextmanager
def factory(args: Sequence[str]) -> Iterator[SchedulerManager | PgQueuer]:
    """``module:factory`` for the supervisor, over an autocommit pool."""
    ns, _ = build_parser().parse_known_args(list(args))
    events: str = ns.events
    seconds: float = ns.seconds
    pool: ConnectionPool[Any] = ConnectionPool(
        ns.dsn, min_size=1, max_size=3, kwargs={"autocommit": True}, open=True
    )
    try:
        pool.wait(timeout=10)
        queries = Queries.from_pool(pool, settings=DBSettings())
        app: SchedulerManager | PgQueuer
        if ns.api == "sm":
            app = SchedulerManager(queries)
        else:
            app = PgQueuer(queries.driver, queries=queries)

        @app.schedule("tick", EXPRESSION)
        def tick(schedule: Schedule) -> None:
            started = time.time()
            time.sleep(seconds)
            record(events, id=int(schedule.id), next_run=schedule.next_run.isoformat(),
                   start=started, end=time.time())

        yield app
    finally:
        pool.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM; exit status 0 after a clean shutdown."""
    from pgqueue_sync import launcher as supervisor

    args = list(sys.argv[1:] if argv is None else argv)
    build_parser().parse_args(args)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format=f"%(asctime)s pid={os.getpid()} %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    supervisor.run(factory, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
