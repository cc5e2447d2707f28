"""The worker application of ``tests/test_chaos.py``, run in a child process.

Start it with::

    python -m tests.apps.chaos_worker --dsn DSN --events FILE [--concurrency N ...]

(from the repository root, or with it on ``PYTHONPATH``). :func:`main` hands
:func:`factory` to :func:`pgqueue_sync.launcher.run` with
``restart_on_failure=True``, the way ``pgq-sync run tests.apps.chaos_worker:factory
--restart-on-failure`` would: a worker cycle that fails (e.g. the database went
away for longer than ``--wait-for-database``) is rebuilt from the factory in the
same process. The process logs to stderr at WARNING, and SIGUSR1 makes it print the
stack of every thread there (:mod:`faulthandler`).

Every handler appends one JSON line to the events file when it starts and one
when it ends (``outcome``: ``ok``, ``retry`` or ``error``), each with a single
``os.write`` on an ``O_APPEND`` descriptor, so lines from several processes never
interleave::

    {"event": "start", "job": 17, "entrypoint": "plain", "attempts": 0, "pid": 4242,
     "t": 1767000000.123}

The job's JSON payload says what the handler does:

* ``plain``: ``{"sleep": s}``: sleep ``s`` seconds, return;
* ``retrying``: ``{"n": n, "delay": d}``: raise ``RetryRequested(delay=d)`` while
  ``job.attempts < n``, then return;
* ``held`` (``on_failure="hold"``): always raise :class:`ValueError`;
* ``async_job`` (``async def``): ``{"sleep": s}``: ``await asyncio.sleep(s)``;
* ``limited`` (``concurrency_limit``, default 2): ``{"sleep": s}``: sleep, return.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from pgqueue_sync import DBSettings, Job, RetryRequested
from pgqueue_sync.app import PgQueuer

logger = logging.getLogger("tests.apps.chaos_worker")

#: The entrypoints this app registers (the test enqueues only these).
ENTRYPOINTS = ("plain", "retrying", "held", "async_job", "limited")


def build_parser() -> argparse.ArgumentParser:
    """Options of the app (read by :func:`factory`) and of ``run()`` (read by :func:`main`)."""
    parser = argparse.ArgumentParser(prog="python -m tests.apps.chaos_worker")
    parser.add_argument("--dsn", required=True, help="libpq connection string")
    parser.add_argument("--events", required=True, help="JSON-lines file handlers append to")
    parser.add_argument("--name", default="chaos", help="label in application_name and logs")
    parser.add_argument("--limit", type=int, default=2,
                        help="concurrency_limit of the 'limited' entrypoint")
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--pool-check", action="store_true",
                        help="check pooled connections on checkout "
                             "(ConnectionPool.check_connection, as docs/workers.md advises)")
    parser.add_argument("--restart-delay", type=float, default=1.0,
                        help="seconds before a failed worker cycle is rebuilt")
    run = parser.add_argument_group("run() options")
    run.add_argument("--concurrency", type=int, default=4)
    run.add_argument("--batch-size", type=int, default=10)
    run.add_argument("--heartbeat-timeout", type=float, default=2.0)
    run.add_argument("--dequeue-timeout", type=float, default=3.0)
    run.add_argument("--shutdown-timeout", type=float, default=None,
                     help="seconds to let running jobs finish at SIGTERM (default: wait)")
    run.add_argument("--wait-for-database", type=float, default=60.0,
                     help="seconds to wait for an unreachable database at start")
    run.add_argument("--log-aggregation-interval", type=float, default=2.0,
                     help="seconds between log aggregations (0: never)")
    return parser


def run_options(ns: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments for ``PgQueuer.run``."""
    return {
        "concurrency": ns.concurrency,
        "batch_size": ns.batch_size,
        "heartbeat_timeout": ns.heartbeat_timeout,
        "dequeue_timeout": ns.dequeue_timeout,
        "shutdown_timeout": ns.shutdown_timeout,
        "wait_for_database": ns.wait_for_database,
        "log_aggregation_interval": ns.log_aggregation_interval or None,
    }


def append(path: str, fields: dict[str, Any]) -> None:
    """Append one JSON line atomically (one ``write`` on an ``O_APPEND`` descriptor)."""
    line = json.dumps(fields) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def record(path: str, event: str, job: Job, **extra: Any) -> None:
    """Append a handler's ``start`` or ``end`` line."""
    append(path, {
        "event": event,
        "job": int(job.id),
        "entrypoint": job.entrypoint,
        "attempts": job.attempts,
        "pid": os.getpid(),
        "t": time.time(),  # wall clock: compared with the test's fault times
        **extra,
    })


def watch_shutdown(pgq: PgQueuer, path: str, name: str) -> None:
    """Append a ``shutdown`` line (no job) as soon as ``pgq.shutdown`` is set: by the
    worker's own signal handler at SIGTERM, or by the supervisor when a cycle ends.
    Handlers that start later than that started after the worker knew it was stopping."""

    def watch() -> None:
        pgq.shutdown.wait()
        append(path, {"event": "shutdown", "pid": os.getpid(), "t": time.time(), "name": name})

    threading.Thread(target=watch, name="chaos-shutdown-watch", daemon=True).start()


@contextlib.contextmanager
def reported(path: str, job: Job) -> Iterator[dict[str, Any]]:
    """Record ``start``, yield the payload, record ``end`` with how the handler left."""
    record(path, "start", job)
    outcome = "ok"
    try:
        yield json.loads(job.payload or b"{}")
    except RetryRequested:
        outcome = "retry"
        raise
    except BaseException:
        outcome = "error"
        raise
    finally:
        record(path, "end", job, outcome=outcome)


def register(pgq: PgQueuer, events: str, limit: int) -> None:
    """Register the five entrypoints of the job mix on ``pgq``."""

    @pgq.entrypoint("plain")
    def plain(job: Job) -> None:
        with reported(events, job) as spec:
            time.sleep(float(spec.get("sleep", 0)))

    @pgq.entrypoint("retrying")
    def retrying(job: Job) -> None:
        with reported(events, job) as spec:
            if job.attempts < int(spec["n"]):
                raise RetryRequested(delay=float(spec.get("delay", 0)),
                                     reason=f"attempt {job.attempts} of {spec['n']}")

    @pgq.entrypoint("held", on_failure="hold")
    def held(job: Job) -> None:
        with reported(events, job):
            raise ValueError(f"job {job.id} always fails and is held")

    @pgq.entrypoint("async_job")
    async def async_job(job: Job) -> None:
        with reported(events, job) as spec:
            await asyncio.sleep(float(spec.get("sleep", 0)))

    @pgq.entrypoint("limited", concurrency_limit=limit)
    def limited(job: Job) -> None:
        with reported(events, job) as spec:
            time.sleep(float(spec.get("sleep", 0)))


@contextlib.contextmanager
def factory(args: Sequence[str]) -> Iterator[PgQueuer]:
    """``module:factory`` for the supervisor: a PgQueuer over an autocommit pool.

    The pool is not waited for: the database may be restarting while a cycle is
    built, and ``run(wait_for_database=...)`` is what waits for it.
    """
    ns, _ = build_parser().parse_known_args(list(args))
    dsn = make_conninfo(ns.dsn, application_name=f"{ns.name}-{os.getpid()}")
    pool: ConnectionPool[Any] = ConnectionPool(
        dsn, min_size=1, max_size=ns.pool_size, kwargs={"autocommit": True}, open=True,
        name=f"{ns.name}-pool", check=ConnectionPool.check_connection if ns.pool_check else None,
    )
    logger.warning("worker %s (pid %d): building a worker cycle", ns.name, os.getpid())
    try:
        pgq = PgQueuer.from_psycopg_pool(pool, settings=DBSettings())
        register(pgq, ns.events, ns.limit)
        watch_shutdown(pgq, ns.events, ns.name)
        yield pgq
    finally:
        pool.close()


def _not_a_held_failure(record: logging.LogRecord) -> bool:
    """Drop the worker's ERROR for each ``held`` job (they fail on purpose, by the
    hundred), so a worker's log shows what matters."""
    args = record.args if isinstance(record.args, tuple) else ()
    return not (
        record.name == "pgqueue_sync.worker.outcomes" and len(args) == 2 and args[1] == "held"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker until SIGINT/SIGTERM; exit status 0 after a clean shutdown."""
    from pgqueue_sync import launcher as supervisor

    args = list(sys.argv[1:] if argv is None else argv)
    ns = build_parser().parse_args(args)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr,
        format=f"%(asctime)s pid={os.getpid()} %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_a_held_failure)
    # SIGUSR1 prints every thread's stack to stderr: the test asks for it before it
    # kills a worker that does not stop.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    supervisor.run(
        factory, args, restart_on_failure=True, restart_delay=ns.restart_delay,
        **run_options(ns),
    )
    logger.warning("worker %s (pid %d): stopped", ns.name, os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
