"""A worker application for ``tests/test_worker_processes.py``, run in a child process.

Start it with::

    python -m tests.apps.process_worker --dsn DSN --events FILE [--concurrency N ...]

(from the repository root, or with it on ``PYTHONPATH``). ``main`` hands
:func:`factory` to :func:`pgqueue_sync.launcher.run`, the way ``pgq-sync run
tests.apps.process_worker:factory`` would, so the signal handling under test is
the library's own.

Handlers report to the test through an append-only JSON-lines file (``--events``):
one ``start`` line when a handler begins and one ``end`` line when it returns, each
written with a single ``os.write`` on an ``O_APPEND`` descriptor, so lines from
several processes never interleave. A job's payload says how long it runs::

    {"seconds": 0.1}                     # sleep, then return
    {"release": "/tmp/x", "max": 30}     # return once the file exists (or after max s)
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

from pgqueue_sync import DBSettings, Job
from pgqueue_sync.app import PgQueuer

#: How often a held handler looks for its release file (seconds).
RELEASE_POLL = 0.01


def build_parser() -> argparse.ArgumentParser:
    """Options of the app (read by :func:`factory`) and of ``run()`` (read by :func:`main`)."""
    parser = argparse.ArgumentParser(prog="python -m tests.apps.process_worker")
    parser.add_argument("--dsn", required=True, help="libpq connection string")
    parser.add_argument("--events", required=True, help="JSON-lines file handlers append to")
    parser.add_argument("--limit", type=int, default=2,
                        help="concurrency_limit of the 'limited' entrypoint")
    parser.add_argument("--pool-size", type=int, default=4)
    run = parser.add_argument_group("run() options")
    run.add_argument("--concurrency", type=int, default=4)
    run.add_argument("--batch-size", type=int, default=10)
    run.add_argument("--heartbeat-timeout", type=float, default=30.0)
    run.add_argument("--dequeue-timeout", type=float, default=30.0)
    run.add_argument("--shutdown-timeout", type=float, default=None,
                     help="seconds to let running jobs finish (default: wait for them)")
    run.add_argument("--mode", default="continuous", choices=("continuous", "drain"))
    return parser


def run_options(ns: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments for ``PgQueuer.run``."""
    return {
        "concurrency": ns.concurrency,
        "batch_size": ns.batch_size,
        "heartbeat_timeout": ns.heartbeat_timeout,
        "dequeue_timeout": ns.dequeue_timeout,
        "shutdown_timeout": ns.shutdown_timeout,
        "mode": ns.mode,
        "log_aggregation_interval": 0,  # statistics are not under test
    }


def record(path: str, event: str, job: Job) -> None:
    """Append one event line atomically (one ``write`` on an ``O_APPEND`` descriptor)."""
    line = json.dumps({
        "event": event,
        "job": int(job.id),
        "entrypoint": job.entrypoint,
        "attempts": job.attempts,
        "pid": os.getpid(),
        "t": time.monotonic(),  # CLOCK_MONOTONIC: comparable across processes on one host
    }) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def perform(payload: bytes | None) -> None:
    """Do what the payload asks: sleep, or wait for a release file."""
    spec = json.loads(payload or b"{}")
    if "release" in spec:
        deadline = time.monotonic() + float(spec.get("max", 30))
        while not os.path.exists(spec["release"]) and time.monotonic() < deadline:
            time.sleep(RELEASE_POLL)
    else:
        time.sleep(float(spec.get("seconds", 0)))


@contextlib.contextmanager
def factory(args: Sequence[str]) -> Iterator[PgQueuer]:
    """``module:factory`` for the supervisor: a PgQueuer over an autocommit pool."""
    ns, _ = build_parser().parse_known_args(list(args))
    events: str = ns.events
    pool: ConnectionPool[Any] = ConnectionPool(
        ns.dsn, min_size=1, max_size=ns.pool_size, kwargs={"autocommit": True}, open=True
    )
    try:
        pool.wait(timeout=10)
        pgq = PgQueuer.from_psycopg_pool(pool, settings=DBSettings())

        def handler(job: Job) -> None:
            record(events, "start", job)
            perform(job.payload)
            record(events, "end", job)

        pgq.entrypoint("hold")(handler)
        pgq.entrypoint("filler")(handler)
        pgq.entrypoint("limited", concurrency_limit=ns.limit)(handler)
        yield pgq
    finally:
        pool.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker until SIGINT/SIGTERM; exit status 0 after a clean shutdown."""
    from pgqueue_sync import launcher as supervisor

    args = list(sys.argv[1:] if argv is None else argv)
    ns = build_parser().parse_args(args)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format=f"%(asctime)s pid={os.getpid()} %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    supervisor.run(factory, args, **run_options(ns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
