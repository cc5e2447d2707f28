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


class DatabaseError(PgqException):
    """The database reported an error; the psycopg error is the ``__cause__``."""

    def __init__(self, message: str | None = None, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class ConnectionFailed(DatabaseError):
    """The database connection could not be opened or was lost."""


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
        if not isinstance(delay, timedelta):
            delay = timedelta(seconds=delay)
        if delay < timedelta(0):
            raise ConfigurationError(f"RetryRequested delay must be >= 0, got {delay}")
        super().__init__(f"retry requested in {delay}" + (f": {reason}" if reason else ""))
        self.delay = delay
        self.reason = reason


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
