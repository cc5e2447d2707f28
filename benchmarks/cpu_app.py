"""The worker ``benchmarks/processes.py`` runs: CPU-bound ``def`` handlers.

    pgq-sync --dsn DSN run cpu_app:factory [--processes N] --mode drain -- --work-ms MS

(with ``benchmarks/`` on ``PYTHONPATH``). Each job of the entrypoint ``cpu``
spins in pure Python for ``--work-ms`` milliseconds of CPU, holding the GIL as
image, report or PDF code does, then returns. The worker uses a pool of 4
connections and the library's defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator, Sequence

from psycopg_pool import ConnectionPool

from pgqueue_sync import DBSettings, Job
from pgqueue_sync.app import PgQueuer

POOL_SIZE = 4


def spin(seconds: float) -> int:
    """Burn ``seconds`` of this thread's CPU in Python bytecode; returns a checksum."""
    end = time.thread_time() + seconds
    total = 0
    while time.thread_time() < end:
        for i in range(1_000):
            total += i * i
    return total


@contextlib.contextmanager
def factory(args: Sequence[str]) -> Iterator[PgQueuer]:
    parser = argparse.ArgumentParser(prog="cpu_app")
    parser.add_argument("--work-ms", type=float, default=5.0)
    work = parser.parse_args(list(args)).work_ms / 1000
    with ConnectionPool(os.environ["PGQUEUE_SYNC_DSN"], min_size=POOL_SIZE,
                        max_size=POOL_SIZE, kwargs={"autocommit": True}) as pool:
        pgq = PgQueuer.from_psycopg_pool(pool, settings=DBSettings())

        @pgq.entrypoint("cpu")
        def cpu(job: Job) -> None:
            spin(work)

        yield pgq
