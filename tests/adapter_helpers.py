"""The two queue adapters behind one test interface, for tests/test_adapters.py.

An :class:`Adapter` holds a ``Queries``-like object over one empty queue store
(``adapter.queries``): :class:`~pgqueue_sync.queries.Queries` on a PostgreSQL
database, or :class:`~pgqueue_sync.testing.InMemoryQueries` on an in-memory
driver. It opens more sessions on the same store (``session()``, as other
workers would) and records what the store sends on the queue's channel
(``events()``), so one test body states one behaviour for both.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from pgqueue_sync import DBSettings, Queries, SyncPsycopgDriver
from pgqueue_sync.testing import InMemoryDriver, InMemoryQueries

#: The heartbeat timeout of claims that do not test stale jobs.
HB = timedelta(seconds=30)
#: Tables emptied (and their id sequences restarted) before each PostgreSQL test.
STORE_TABLES = ("queue_table", "queue_table_log", "statistics_table", "schedules_table")
#: How long to wait for the end-of-batch marker on a PostgreSQL listener.
EVENT_TIMEOUT = 5.0


def claim(
    queries: Any,
    entrypoints: dict[str, Any],
    batch: int = 10,
    *,
    worker: uuid.UUID | None = None,
    budget: int | None = None,
    timeout: timedelta = HB,
) -> list[Any]:
    """``queries.dequeue`` with the arguments most tests leave alone."""
    return list(queries.dequeue(batch, entrypoints, worker or uuid.uuid4(), budget, timeout))


def kinds(payloads: list[str]) -> list[tuple[str, str | None]]:
    """``(type, operation)`` of each payload, e.g. ``("table_changed_event", "insert")``."""
    return [(e["type"], e.get("operation")) for e in map(json.loads, payloads)]


class Events:
    """What the store sent on the queue's channel since the last :meth:`take`.

    ``take()`` sends a health check of its own as an end marker and returns
    everything before it, so "nothing was sent" needs no waiting: PostgreSQL
    delivers notifications in commit order.
    """

    def __init__(self, queries: Any, receive: Callable[[str], list[str]]) -> None:
        self._queries = queries
        self._receive = receive

    def take(self) -> list[str]:
        """The payloads sent since the previous call, oldest first."""
        marker = uuid.uuid4()
        self._queries.notify_health_check(marker)
        return self._receive(str(marker))


def _is_marker(payload: str, marker: str) -> bool:
    event = json.loads(payload)
    return bool(event.get("type") == "health_check_event" and event.get("id") == marker)


class Adapter:
    """One empty queue store and a ``Queries``-like object over it."""

    name: str
    queries: Any

    def session(self) -> Any:
        """Another ``Queries``-like object on the same store (another worker's)."""
        raise NotImplementedError

    def events(self) -> Events:
        """Start recording the store's notifications."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the adapter opened."""


class MemoryAdapter(Adapter):
    """A fresh :class:`InMemoryQueries` on its own driver (the real clock plays ``NOW()``)."""

    name = "memory"

    def __init__(self) -> None:
        self.driver = InMemoryDriver()
        self.queries = InMemoryQueries(self.driver, settings=DBSettings())

    def session(self) -> InMemoryQueries:
        return InMemoryQueries(self.driver, settings=DBSettings())

    def events(self) -> Events:
        received: list[str] = []
        self.driver.add_listener(received.append)

        def receive(marker: str) -> list[str]:
            taken = [p for p in received if not _is_marker(p, marker)]
            del received[:]
            return taken

        return Events(self.queries, receive)


class PostgresAdapter(Adapter):
    """:class:`Queries` over autocommit connections to a database emptied for this test."""

    name = "postgresql"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.settings = DBSettings()
        self._connections: list[psycopg.Connection[Any]] = []
        self._empty_store()
        self.queries = self.session()

    def _connect(self) -> psycopg.Connection[Any]:
        connection = psycopg.connect(self.dsn, autocommit=True)
        self._connections.append(connection)
        return connection

    def _empty_store(self) -> None:
        # Much cheaper than a database (or a TRUNCATE) per test; restarting the
        # sequences makes ids start at 1, as on a fresh schema.
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            connection.execute("SET lock_timeout = '10s'")
            with connection.transaction():
                for table in STORE_TABLES:
                    connection.execute(sql.SQL("DELETE FROM {}").format(self.settings.ident(table)))
                    connection.execute(
                        "SELECT setval(pg_get_serial_sequence(%s, 'id'), 1, false)",
                        [self.settings.qualified_text(table)],
                    )

    def session(self) -> Queries:
        return Queries(SyncPsycopgDriver(self._connect()), settings=self.settings)

    def events(self) -> Events:
        listener = self._connect()
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.settings.channel)))

        def receive(marker: str) -> list[str]:
            taken: list[str] = []
            for notify in listener.notifies(timeout=EVENT_TIMEOUT):
                if _is_marker(notify.payload, marker):
                    return taken
                taken.append(notify.payload)
            raise AssertionError(f"no end marker within {EVENT_TIMEOUT}s; got {taken}")

        return Events(self.queries, receive)

    def close(self) -> None:
        for connection in self._connections:
            connection.close()
