"""Helpers shared by the benchmarks: scratch databases and timing."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgqueue_sync import DBSettings, SyncPsycopgDriver
from pgqueue_sync.schema import Schema

DEFAULT_DSN = "host=127.0.0.1 port=5432 user=root dbname=postgres"


def server_dsn() -> str:
    """The server to benchmark against (``PGQUEUE_SYNC_BENCH_DSN``, else the local one)."""
    return os.environ.get("PGQUEUE_SYNC_BENCH_DSN") or os.environ.get(
        "PGQUEUE_SYNC_TEST_DSN", DEFAULT_DSN
    )


@contextlib.contextmanager
def scratch_database(install: bool = True) -> Iterator[str]:
    """A fresh database with the queue schema installed, dropped afterwards."""
    admin_dsn = server_dsn()
    name = f"pgqs_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(admin_dsn, dbname=name)
    try:
        if install:
            with psycopg.connect(dsn, autocommit=True) as conn:
                Schema(SyncPsycopgDriver(conn), DBSettings()).install()
        yield dsn
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def timed(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(runs: int, fn: Callable[[], float]) -> float:
    """The median of ``runs`` rates returned by ``fn`` (higher is better)."""
    return statistics.median(fn() for _ in range(runs))


def row(name: str, ours: float, theirs: float, unit: str = "jobs/s") -> str:
    """One aligned line: ours, PgQueuer's and the ratio."""
    ratio = ours / theirs if theirs else float("nan")
    return f"{name:<34} {ours:>12,.0f} {theirs:>12,.0f} {unit:<7} {ratio:>6.2f}x"


HEADER = f"{'benchmark':<34} {'pgqueue_sync':>12} {'pgqueuer':>12} {'unit':<7} {'ratio':>7}"
