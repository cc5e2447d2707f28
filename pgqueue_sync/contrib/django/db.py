"""Django's database connections as pgqueue_sync drivers and connection parameters.

:class:`DjangoDriver` runs the queue's SQL on Django's own connection for an
alias, through Django's cursor, so an enqueue joins the caller's
``transaction.atomic()`` and shows in Django's query logging and
``assertNumQueries``. It never commits, rolls back, opens a psycopg
transaction or changes autocommit on that connection.

The worker does not use Django's connections: :func:`worker_connection_params`
turns the alias's settings into ``psycopg.connect()`` keywords for its own pool
and LISTEN connection, computed when called (so they follow the test runner's
``test_<NAME>`` rename).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db import Error as DjangoDatabaseError
from psycopg.conninfo import make_conninfo
from psycopg.types.datetime import TimestamptzLoader
from psycopg.types.json import JsonbLoader, JsonLoader

from ...drivers.base import Driver, Params, Query, Row, translate
from ...errors import DatabaseError, SchemaNotInstalledError
from .errors import DjangoConfigurationError

#: Keys of ``get_connection_params()`` that only Django's own connection understands.
_DJANGO_ONLY_PARAMS = ("cursor_factory", "context")


def check_backend(alias: str = DEFAULT_DB_ALIAS) -> None:
    """Raise :class:`DjangoConfigurationError` unless ``alias`` is PostgreSQL on psycopg 3.

    Reads settings only; does not connect.
    """
    if alias not in connections.settings:
        raise DjangoConfigurationError(
            f"database alias {alias!r} is not in DATABASES; set PGQUEUE_SYNC['DATABASE_ALIAS']"
        )
    wrapper = connections[alias]
    if wrapper.vendor != "postgresql":
        raise DjangoConfigurationError(
            f"DATABASES[{alias!r}] uses the {wrapper.vendor!r} backend; pgqueue_sync needs "
            "ENGINE 'django.db.backends.postgresql'"
        )
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if not is_psycopg3:
        raise DjangoConfigurationError(
            f"DATABASES[{alias!r}] runs on psycopg2; pgqueue_sync needs psycopg 3: "
            "pip install 'psycopg[binary]' (Django picks it over psycopg2 when both are present)"
        )


def django_connection(alias: str = DEFAULT_DB_ALIAS) -> psycopg.Connection[Any]:
    """The psycopg connection behind ``connections[alias]`` in this thread (connecting if needed).

    Use it at once and never hand it to another thread or keep it: Django
    may close and reopen it between requests.
    """
    wrapper = connections[alias]
    wrapper.ensure_connection()
    conn: psycopg.Connection[Any] = wrapper.connection
    return conn


def worker_connection_params(alias: str = DEFAULT_DB_ALIAS) -> dict[str, Any]:
    """``psycopg.connect()`` keywords for the database of ``alias``, as configured now.

    Django's cursor class and adapter context are left out, so connections
    made from these load ``jsonb`` as ``dict`` and timestamps as aware values.
    """
    check_backend(alias)
    params = dict(connections[alias].get_connection_params())
    for key in _DJANGO_ONLY_PARAMS:
        params.pop(key, None)
    return params


def worker_conninfo(alias: str = DEFAULT_DB_ALIAS) -> str:
    """A libpq connection string for ``alias`` (holds the password: never print it)."""
    return conninfo_of(worker_connection_params(alias))


def conninfo_of(params: dict[str, Any]) -> str:
    """The libpq connection string of ``psycopg.connect()`` keywords (password included)."""
    # prepare_threshold is a psycopg keyword, not a libpq one.
    usable = {k: v for k, v in params.items() if k != "prepare_threshold" and v is not None}
    return make_conninfo("", **usable)


class DjangoDriver:
    """A :class:`~pgqueue_sync.drivers.Driver` over Django's connection for ``alias``.

    Each statement borrows the calling thread's connection when it runs, so
    one driver serves every thread and request. Inside ``transaction.atomic()``
    statements join that transaction: the jobs, and the NOTIFY that wakes the
    workers, appear at commit and vanish on rollback. Outside it each
    statement commits by itself (Django's autocommit).

    Errors arrive as :mod:`pgqueue_sync.errors` classes chained to Django's.
    A failed statement inside ``atomic`` aborts the caller's transaction, as
    any database error does: wrap the enqueue in a nested ``atomic()`` to
    survive it. Raises :class:`DjangoConfigurationError` at construction when
    the alias is not PostgreSQL on psycopg 3.
    """

    def __init__(self, alias: str = DEFAULT_DB_ALIAS) -> None:
        check_backend(alias)
        self.alias = alias

    @property
    def joins_caller_transaction(self) -> bool:
        """True while this thread is inside ``atomic()`` on the alias."""
        return bool(connections[self.alias].in_atomic_block)

    def fetch(self, query: Query, params: Params = None) -> list[Row]:
        """Run one statement through Django's cursor; rows as dicts."""
        with _translate_errors(), connections[self.alias].cursor() as cursor:
            _plain_loaders(cursor.cursor)
            text = query.as_string(cursor.cursor)
            cursor.execute(text, params)
            if cursor.description is None:
                return []
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def execute(self, query: Query, params: Params = None) -> None:
        """Run one statement and discard its rows."""
        self.fetch(query, params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Driver]:
        """A block that commits as one, through Django's ``atomic`` (a savepoint when nested).

        Django, not this driver, begins and ends it; inside the caller's
        ``atomic`` nothing is committed before the caller commits.
        """
        with transaction.atomic(using=self.alias):
            yield self


def _plain_loaders(cursor: psycopg.Cursor[Any]) -> None:
    # Django's adapter context loads jsonb as str and may strip time zones;
    # on this cursor only (Django's own cursors are unaffected) load them as
    # the queue's code expects.
    cursor.adapters.register_loader("jsonb", JsonbLoader)
    cursor.adapters.register_loader("json", JsonLoader)
    cursor.adapters.register_loader("timestamptz", TimestamptzLoader)


@contextlib.contextmanager
def _translate_errors() -> Iterator[None]:
    try:
        yield
    except DjangoDatabaseError as exc:
        cause = exc.__cause__
        if isinstance(cause, psycopg.Error):
            raise _for_django(translate(cause), cause) from exc
        raise DatabaseError(str(exc).strip() or type(exc).__name__) from exc
    except psycopg.Error as exc:
        raise _for_django(translate(exc), exc) from exc


def _for_django(error: DatabaseError, cause: psycopg.Error) -> DatabaseError:
    # The core's hint names the pgq-sync CLI; in a Django project the
    # migration installs the schema.
    if not isinstance(error, SchemaNotInstalledError):
        return error
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return SchemaNotInstalledError(
        f"{first}; is the queue schema installed? run 'manage.py migrate' "
        "(and check PGQUEUE_SYNC['PREFIX'] / ['SCHEMA'])",
        sqlstate=error.sqlstate,
    )
