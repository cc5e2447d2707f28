"""The driver protocol and the translation of psycopg errors into ours.

A driver only runs SQL: it knows nothing about jobs, threads or schedules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, Protocol

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from ..errors import (
    ConfigurationError,
    ConnectionFailed,
    DatabaseError,
    DeadlockDetected,
    PermissionDenied,
    PoolerError,
    SchemaNotInstalledError,
    UniqueViolation,
)

Params = Mapping[str, Any] | Sequence[Any] | None
Row = dict[str, Any]
Query = sql.SQL | sql.Composed
#: Appended to a permission error: how to give the role what it lacks.
GRANT_HINT = (
    "grant the role its part of the queue's privileges "
    "(pgq-sync grants producer|worker|admin ROLE; see docs/permissions.md)"
)
#: SQLSTATEs of a server-side prepared statement that is missing (26000) or already
#: exists (42P05): what psycopg's automatic prepared statements (named ``_pg3_N``)
#: meet when a pooler in transaction mode moves the connection between backends.
_PREPARED_STATEMENT_SQLSTATES = ("26000", "42P05")
#: Appended to such an error: what to change.
POOLER_HINT = (
    "a connection pooler in transaction mode (PgBouncer before 1.21) sits between this "
    "process and PostgreSQL and moved psycopg's automatic prepared statements between "
    "server connections; open the connections with prepare_threshold=None "
    "(psycopg.connect(dsn, prepare_threshold=None), ConnectionPool(dsn, "
    "kwargs={'autocommit': True, 'prepare_threshold': None}), or in Django "
    "DATABASES[...]['OPTIONS']['prepare_threshold'] = None); see docs/pgbouncer.md"
)


class Driver(Protocol):
    """What :class:`~pgqueue_sync.queries.Queries` needs from a database connection.

    Every method blocks until the statement has run. Errors are raised as
    :class:`~pgqueue_sync.errors.DatabaseError` subclasses.
    """

    def fetch(self, query: Query, params: Params = None) -> list[Row]:
        """Run one statement and return its rows as dicts (``[]`` if it returns none)."""
        ...

    def execute(self, query: Query, params: Params = None) -> None:
        """Run one statement and discard any result."""
        ...

    def transaction(self) -> contextlib.AbstractContextManager[Driver]:
        """A block whose statements run on one connection and commit together.

        Drivers bound to a caller's transaction join it instead: they never
        commit or roll back on the caller's behalf.
        """
        ...


def require_autocommit(driver: object, user: str) -> None:
    """Refuse a driver that joins a caller's transaction: ``user`` (the worker, the
    scheduler) would write into a transaction nobody commits."""
    if getattr(driver, "joins_caller_transaction", False):
        raise ConfigurationError(
            f"the {user} needs a connection in autocommit mode: on this one its writes "
            "would stay in an uncommitted transaction; use psycopg.connect(dsn, "
            "autocommit=True) or a connection pool"
        )


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise psycopg errors as :mod:`pgqueue_sync.errors` classes (``from`` the original)."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc) from exc


def translate(exc: psycopg.Error) -> DatabaseError:
    """The pgqueue_sync error for a psycopg error; the caller chains it with ``from``."""
    message = _first_line(exc)
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, pg_errors.UniqueViolation):
        return UniqueViolation(message, constraint_name=exc.diag.constraint_name)
    if isinstance(exc, pg_errors.DeadlockDetected):
        return DeadlockDetected(message, sqlstate=sqlstate)
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return PermissionDenied(f"{message}: {GRANT_HINT}", sqlstate=sqlstate)
    if sqlstate in _PREPARED_STATEMENT_SQLSTATES and '"_pg3_' in message:
        return PoolerError(f"{message}: {POOLER_HINT}", sqlstate=sqlstate)
    if isinstance(exc, (pg_errors.UndefinedTable, pg_errors.UndefinedObject)):
        return SchemaNotInstalledError(
            f"{message}; is the queue schema installed? run 'pgq-sync install' "
            "(and check PGQUEUER_PREFIX / PGQUEUER_SCHEMA)",
            sqlstate=sqlstate,
        )
    if _connection_lost(exc, sqlstate):
        return ConnectionFailed(message, sqlstate=sqlstate)
    return DatabaseError(message, sqlstate=sqlstate)


def _connection_lost(exc: psycopg.Error, sqlstate: str | None) -> bool:
    # Client-side failures (a dropped socket, a closed connection, a pool that
    # timed out) carry no SQLSTATE; the server's own connection states are
    # class 08 and the shutdown codes 57P01-57P03.
    if sqlstate is None:
        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
    return sqlstate[:2] == "08" or sqlstate in ("57P01", "57P02", "57P03")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ExpectingColumns(sql.SQL):
    """A statement whose reply must have ``columns`` (the claim's job columns).

    A reply without them is not the statement's own: the connection is out of
    step with the server, answering each statement with the reply to an
    earlier one. PgBouncer in transaction mode did this in our tests when a
    backend holding a ``LISTEN`` was checked (``server_check_query``). The
    psycopg drivers then close that connection, so the pool or the driver
    replaces it, and raise a transient :class:`ConnectionFailed`; for other
    drivers :func:`check_reply` raises it after the fact. A statement that read
    such a reply may have run: a claim's jobs are then re-picked once their
    heartbeat is stale, like a lost worker's.
    """

    def __init__(self, text: str, columns: Collection[str]) -> None:
        super().__init__(text)
        self.columns = tuple(columns)


def expected_columns(query: Query) -> tuple[str, ...]:
    """The columns ``query``'s reply must have (none for an ordinary statement)."""
    return query.columns if isinstance(query, ExpectingColumns) else ()


def check_reply(rows: Sequence[Row], query: Query) -> None:
    """Raise :func:`out_of_step`'s error when ``rows`` lack ``query``'s columns."""
    columns = expected_columns(query)
    if columns and rows and not set(columns) <= rows[0].keys():
        raise out_of_step(list(rows[0]), columns)


def out_of_step(names: list[str], columns: Collection[str]) -> ConnectionFailed:
    """The error for a reply without the ``columns`` its statement returns."""
    missing = sorted(set(columns) - set(names))
    return ConnectionFailed(
        f"the reply did not belong to the statement (columns {names}, missing {missing}): "
        "the connection is out of step with the server and was dropped. A pooler in "
        "transaction mode does this to connections that LISTEN through it: see "
        "docs/pgbouncer.md (--listen-dsn or --poll-only)",
        sqlstate="08P01",
    )
