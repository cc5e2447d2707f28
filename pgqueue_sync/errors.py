"""The exception tree: everything the package raises derives from :class:`PgqException`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any


class PgqException(Exception):
    """A pgqueue_sync operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(PgqException, ValueError):
    """A setting or argument is invalid; the message says what to change."""


#: SQLSTATE classes and codes of errors that may go away by themselves: a lost or
#: refused connection (08, 57P0x), a broken deadlock or serialization conflict
#: (40), exhausted resources (53), a lock timeout (55P03), a cancelled statement
#: (57014) and system errors (58). Everything else (a missing table, a missing
#: grant, a value the server refuses) needs someone to change something.
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "58"})
TRANSIENT_SQLSTATES = frozenset({"55P03", "57014", "57P01", "57P02", "57P03", "57P05"})


def is_transient_sqlstate(sqlstate: str | None) -> bool:
    """Whether an error with this SQLSTATE is worth retrying unchanged."""
    if not sqlstate:
        return False
    return sqlstate in TRANSIENT_SQLSTATES or sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES


class DatabaseError(PgqException):
    """The database reported an error; the psycopg error is the ``__cause__``.

    :attr:`transient` says whether the same statement may succeed if sent
    again later (see :data:`TRANSIENT_SQLSTATE_CLASSES`); workers retry
    transient errors with backoff and stop a drain-mode run on the others.
    """

    def __init__(self, message: str | None = None, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate

    @property
    def transient(self) -> bool:
        """True when retrying unchanged may succeed (a connection or contention problem)."""
        return is_transient_sqlstate(self.sqlstate)


class ConnectionFailed(DatabaseError):
    """The database connection could not be opened or was lost.

    Transient, except when the server refused the login itself (wrong
    password, unknown database or role: SQLSTATE classes 28 and 3D) or when
    ``permanent`` says the driver cannot reconnect.
    """

    def __init__(
        self, message: str | None = None, *, sqlstate: str | None = None, permanent: bool = False
    ) -> None:
        super().__init__(message, sqlstate=sqlstate)
        self.permanent = permanent

    @property
    def transient(self) -> bool:
        """False only for a refused login or a driver that cannot reconnect."""
        return not self.permanent and (self.sqlstate or "")[:2] not in ("28", "3D")


class UniqueViolation(DatabaseError):
    """A unique index rejected a row (SQLSTATE 23505)."""

    def __init__(
        self,
        message: str | None = None,
        *,
        sqlstate: str | None = "23505",
        constraint_name: str | None = None,
    ) -> None:
        super().__init__(message, sqlstate=sqlstate)
        self.constraint_name = constraint_name


class DeadlockDetected(DatabaseError):
    """PostgreSQL broke a deadlock by failing this statement (SQLSTATE 40P01)."""


class PermissionDenied(DatabaseError):
    """The role lacks a privilege the operation needs (SQLSTATE 42501).

    Not transient: only a grant fixes it (``pgq-sync grants producer|worker|admin
    ROLE``, see ``docs/permissions.md``), so a drain-mode worker stops on it.
    """


class SchemaNotInstalledError(DatabaseError):
    """The queue tables are missing: run ``pgq-sync install`` (or ``pgq install``) first."""


class SchemaError(PgqException):
    """The installed schema does not match what the operation needs."""


class AlreadyInstalledError(SchemaError):
    """Some queue objects already exist; use ``pgq-sync upgrade`` or uninstall first."""


class DuplicateJobError(PgqException):
    """A job with the same ``dedupe_key`` is already queued or picked."""

    def __init__(self, dedupe_key: Sequence[str | None]) -> None:
        keys = list(dedupe_key)
        super().__init__(
            f"a job with dedupe_key {keys!r} is already queued or picked; "
            "pass on_conflict='skip' or 'update_priority' to accept duplicates"
        )
        self.dedupe_key = keys


class RetryException(PgqException):
    """Base for exceptions that ask the worker to run a job again later."""


class RetryRequested(RetryException):
    """Raised by a handler to re-queue its job after ``delay``, keeping id and payload.

    ``attempts`` is incremented; the job keeps its priority, payload and headers.
    """

    def __init__(self, delay: timedelta | float = timedelta(0), reason: str | None = None) -> None:
        from .options import duration  # options imports this module: import at call time

        delay = duration("RetryRequested delay", delay)
        super().__init__(f"retry requested in {delay}" + (f": {reason}" if reason else ""))
        self.delay = delay
        self.reason = reason


class FactoryError(PgqException):
    """A worker factory could not be imported or raised while building the worker.

    The message is one summary line (``could not load tasks:make_app:
    ModuleNotFoundError: No module named 'x'``); the user's exception is the
    ``__cause__``, with its traceback.
    """


class FailingListenerError(PgqException):
    """The worker's LISTEN connection did not receive its own health-check probe in time."""


class CompletionTimeout(PgqException, TimeoutError):
    """Jobs did not reach a final status within the timeout.

    ``pending`` lists the job ids still unfinished (in the order asked for),
    ``done`` maps the ids that did finish to their status, and ``timeout`` is
    the limit in seconds. Catch it as ``TimeoutError`` or :class:`PgqException`.
    """

    #: At most this many ids are spelled out in the message.
    SHOWN = 20

    def __init__(
        self,
        pending: Sequence[int],
        timeout: float | None,
        *,
        done: Mapping[Any, str] | None = None,
    ) -> None:
        ids = list(pending)
        shown = ", ".join(str(i) for i in ids[: self.SHOWN])
        if len(ids) > self.SHOWN:
            shown += f", ... ({len(ids) - self.SHOWN} more)"
        limit = "the timeout" if timeout is None else f"{timeout:g}s"
        super().__init__(f"{len(ids)} job(s) still pending after {limit}: {shown}")
        self.pending = ids
        self.done = dict(done or {})
        self.timeout = timeout


class PoolerError(DatabaseError, ConfigurationError):
    """A connection pooler in transaction mode (PgBouncer before 1.21) broke psycopg's
    automatic server-side prepared statements; the message says how to fix it.

    Not transient: the connections need ``prepare_threshold=None`` (see
    docs/pgbouncer.md). A worker that meets it stops with this error instead of
    retrying forever. Catch it as :class:`DatabaseError` or
    :class:`ConfigurationError`.
    """
