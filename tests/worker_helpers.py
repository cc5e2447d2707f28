"""Helpers for worker tests: run a worker in a thread, wait for conditions."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from pgqueue_sync import DBSettings
from pgqueue_sync.app import PgQueuer


def wait_for(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    interval: float = 0.02,
    *,
    what: str | None = None,
) -> Any:
    """Poll ``predicate`` until it is truthy (and return that); fail the test after
    ``timeout`` seconds, naming ``what`` (default: the predicate)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {what or predicate}")
        time.sleep(interval)


@contextlib.contextmanager
def pool_for(dsn: str, size: int = 4) -> Iterator[ConnectionPool[Any]]:
    """An autocommit pool, closed afterwards."""
    pool = ConnectionPool(dsn, min_size=1, max_size=size, kwargs={"autocommit": True}, open=True)
    try:
        yield pool
    finally:
        pool.close()


@contextlib.contextmanager
def running(pgq: PgQueuer, **options: Any) -> Iterator[threading.Thread]:
    """Run ``pgq.run(**options)`` in a thread; stop and join it afterwards."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            pgq.run(**options)
        except BaseException as exc:  # surfaced by the context manager
            errors.append(exc)

    thread = threading.Thread(target=target, name="test-worker", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        pgq.shutdown.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "worker did not stop within 30s"
    if errors:
        raise errors[0]


def make_pgq(pool: ConnectionPool[Any], **kwargs: Any) -> PgQueuer:
    """A facade over a pool with default object names."""
    return PgQueuer.from_psycopg_pool(pool, settings=DBSettings(), **kwargs)


@contextlib.contextmanager
def login_role(server_dsn: str, prefix: str, *, databases: Sequence[str] = ()) -> Iterator[str]:
    """A new LOGIN role (trust auth: connect with ``user=<name>``), dropped afterwards.

    ``databases``: DSNs of databases where the role may be granted things;
    ``DROP OWNED BY`` runs in each before the role is dropped.
    """
    from psycopg import sql

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    role = sql.Identifier(name)
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
    try:
        yield name
    finally:
        for dsn in databases:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
