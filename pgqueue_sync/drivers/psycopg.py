"""Drivers over a psycopg 3 connection or a psycopg_pool pool."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.rows import RowMaker
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import ConnectionFailed
from .base import Driver, Params, Query, Row, expected_columns, out_of_step, translate_errors

logger = logging.getLogger(__name__)


class SyncPsycopgDriver:
    """Runs statements on one psycopg connection; thread-safe.

    On an autocommit connection the driver **reconnects** when it finds the
    connection lost (a killed backend, a server restart): the statement that
    hit the loss raises :class:`~pgqueue_sync.errors.ConnectionFailed`, and
    the next one runs on a fresh connection to the same server (same
    parameters, password and ``prepare_threshold`` included). :attr:`connection`
    then names the new connection. A statement is never re-sent by the driver itself: it cannot
    know whether the lost one committed.

    On an autocommit connection each statement commits by itself and
    :meth:`transaction` opens a real transaction. On a connection that is not in
    autocommit mode the driver **joins the caller's transaction**: statements
    run inside it, and the driver never commits, rolls back, opens
    ``conn.transaction()`` or changes autocommit. Jobs enqueued that way become
    visible, and wake workers, when the caller commits; a rollback leaves no
    job and no notification. (psycopg begins that transaction implicitly on
    the first statement if none is open yet, so the caller must commit.)

    The driver does not close the connection.
    """

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        if connection.closed:
            raise ConnectionFailed("the psycopg connection is closed; pass an open connection")
        self.connection = connection
        # Read now: a lost connection can no longer tell where it was connected.
        info = connection.info
        self._conninfo = psycopg.conninfo.make_conninfo(info.dsn, password=info.password or None)
        # A reconnect keeps the caller's choice (None behind a pooler in transaction mode).
        self._prepare_threshold = connection.prepare_threshold
        # An RLock, so a transaction() block can call fetch() on the same thread.
        self._lock = threading.RLock()

    def new_connection(self) -> psycopg.Connection[Any]:
        """Open another autocommit connection to the same server (e.g. for LISTEN)."""
        return connect(self._conninfo, prepare_threshold=self._prepare_threshold)

    def _live_connection(self) -> psycopg.Connection[Any]:
        # Called with the lock held. Only an autocommit connection is replaced: a
        # lost caller transaction is the caller's to handle (it rolled back).
        conn = self.connection
        if conn.closed and conn.autocommit:
            self.connection = conn = connect(self._conninfo,
                                             prepare_threshold=self._prepare_threshold)
        return conn

    @property
    def joins_caller_transaction(self) -> bool:
        """True when statements run inside a transaction that the caller owns."""
        return not self.connection.autocommit

    def fetch(self, query: Query, params: Params = None) -> list[Row]:
        """Run one statement; see :meth:`Driver.fetch`."""
        with self._lock:
            conn = self._live_connection()
            with translate_errors():
                return _fetch(conn, query, params)

    def execute(self, query: Query, params: Params = None) -> None:
        """Run one statement and discard its rows."""
        self.fetch(query, params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Driver]:
        """Hold the connection for a block that commits (or rolls back) as one.

        In a caller's transaction this only holds the lock: the caller commits.
        """
        with self._lock:
            if self.joins_caller_transaction:
                yield self
                return
            conn = self._live_connection()
            with translate_errors(), conn.transaction():
                yield self


class SyncPsycopgPoolDriver:
    """Runs each statement on a connection borrowed from a ``psycopg_pool.ConnectionPool``.

    Thread-safe. Each statement commits on its own; :meth:`transaction` keeps
    one connection for the whole block. Borrowing waits at most the pool's
    ``timeout`` and raises :class:`~pgqueue_sync.errors.ConnectionFailed`.
    """

    def __init__(self, pool: ConnectionPool[Any]) -> None:
        self.pool = pool

    def new_connection(self) -> psycopg.Connection[Any]:
        """Open an autocommit connection outside the pool (e.g. for LISTEN)."""
        # psycopg_pool >= 3.3 also accepts callables producing these per connection.
        raw_conninfo = self.pool.conninfo
        raw_kwargs = self.pool.kwargs
        conninfo = raw_conninfo() if callable(raw_conninfo) else raw_conninfo
        kwargs = dict((raw_kwargs() if callable(raw_kwargs) else raw_kwargs) or {})
        kwargs.pop("autocommit", None)
        return connect(conninfo, **kwargs)

    def fetch(self, query: Query, params: Params = None) -> list[Row]:
        """Run one statement on a pooled connection and return its rows.

        When the connection turns out to be lost, the pool's other idle
        connections are checked at once (they were most likely lost together:
        a server restart, terminated backends), so the next statement does not
        meet them one failure at a time.
        """
        try:
            with translate_errors(), self.pool.connection() as conn:
                return _fetch(conn, query, params)
        except ConnectionFailed as exc:
            if not isinstance(exc.__cause__, PoolTimeout):  # no connection was even lent
                self._check_idle()
            raise

    def _check_idle(self) -> None:
        try:
            self.pool.check()
        except Exception:  # the check is a courtesy; the caller handles the failure
            logger.debug("pool check after a lost connection failed", exc_info=True)

    def execute(self, query: Query, params: Params = None) -> None:
        """Run one statement and discard its rows."""
        self.fetch(query, params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Driver]:
        """Borrow one connection and run the block in a single transaction."""
        with translate_errors(), self.pool.connection() as conn:
            if conn.autocommit:
                with conn.transaction():
                    yield SyncPsycopgDriver(conn)
            else:
                # pool.connection() commits on a clean exit and rolls back on error.
                yield SyncPsycopgDriver(conn)


def _fetch(conn: psycopg.Connection[Any], query: Query, params: Params) -> list[Row]:
    with conn.cursor(row_factory=_dict_rows) as cur:
        cur.execute(query, params)
        result = cur.pgresult
        columns = expected_columns(query)
        if columns:
            names = [] if result is None else [
                (result.fname(i) or b"").decode() for i in range(result.nfields)]
            if not set(columns) <= set(names):
                conn.close()  # out of step for good: never lend it again
                raise out_of_step(names, columns)
        if result is None or result.status != psycopg.pq.ExecStatus.TUPLES_OK:
            return []
        return cur.fetchall()




def _dict_rows(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    # Like psycopg's dict_row, without building Column objects for each result.
    result = cursor.pgresult
    if result is None or not result.nfields:
        return lambda values: {}
    names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
    return lambda values: dict(zip(names, values, strict=True))


#: What :func:`connect`'s error tells the user to check, by default.
CONNECT_HINT = "check --dsn / PGQUEUE_SYNC_DSN and that the server is running"
#: Seconds a new connection may take when neither the DSN nor libpq's
#: environment (``PGCONNECT_TIMEOUT``) sets ``connect_timeout``: a host that
#: accepts and never answers must not hang a worker or a command.
DEFAULT_CONNECT_TIMEOUT = 10


def connect(
    conninfo: str, *, autocommit: bool = True, hint: str = CONNECT_HINT, **kwargs: Any
) -> psycopg.Connection[Any]:
    """Open a psycopg connection (autocommit by default), raising :class:`ConnectionFailed`.

    Applies :data:`DEFAULT_CONNECT_TIMEOUT` unless a timeout is set. The
    message names the target without its password, then ``hint``.
    """
    if "connect_timeout" not in kwargs:
        conninfo = with_connect_timeout(conninfo)
    try:
        return psycopg.connect(conninfo, autocommit=autocommit, **kwargs)
    except psycopg.Error as exc:
        raise ConnectionFailed(
            f"cannot connect to PostgreSQL ({describe_conninfo(conninfo)}): {_brief(exc)}; "
            f"{hint}",
            sqlstate=getattr(exc, "sqlstate", None),
        ) from exc


def with_connect_timeout(conninfo: str, seconds: int | None = None) -> str:
    """``conninfo`` with ``connect_timeout=seconds`` (default
    :data:`DEFAULT_CONNECT_TIMEOUT`) added, unless the DSN or libpq's defaults (its
    environment variables) already set one."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error:
        return conninfo  # let connect() report the unparsable DSN
    if params.get("connect_timeout") is not None or _libpq_default("connect_timeout"):
        return conninfo
    timeout = DEFAULT_CONNECT_TIMEOUT if seconds is None else seconds
    return psycopg.conninfo.make_conninfo(conninfo, connect_timeout=timeout)


def with_connect_timeout_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """``psycopg.connect()`` keywords with the default ``connect_timeout`` added, on the
    same terms as :func:`with_connect_timeout`."""
    if params.get("connect_timeout") is not None or _libpq_default("connect_timeout"):
        return params
    return {**params, "connect_timeout": DEFAULT_CONNECT_TIMEOUT}


def _libpq_default(keyword: str) -> str | None:
    # libpq resolves its own environment variables (PGCONNECT_TIMEOUT, ...).
    for option in psycopg.pq.Conninfo.get_defaults():
        if option.keyword.decode() == keyword and option.val is not None:
            return option.val.decode()
    return None


def describe_conninfo(conninfo: str) -> str:
    """A password-free ``host:port/dbname`` description of a DSN, for messages."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "an unparsable DSN"
    host = params.get("host") or "localhost (default)"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or "(default database)"
    return f"{host}:{port}/{dbname}"


def _brief(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


_warned_implementation = False


def warn_if_pure_python() -> None:
    """Log one WARNING per process when psycopg runs on its pure-Python implementation.

    The C implementation (the ``binary`` extra, or psycopg[c]) costs about 2.5x
    less CPU per job; a worker on the Python one works, just slower.
    """
    global _warned_implementation
    if _warned_implementation or psycopg.pq.__impl__ != "python":
        return
    _warned_implementation = True
    logger.warning(
        "psycopg is using its pure-Python implementation, which costs about 2.5x the CPU "
        "per job; install the binary extra: pip install 'pgqueue_sync[binary]' "
        "(or psycopg[binary])"
    )
