"""Entrypoints and schedules declared in Django apps, before any worker exists.

Apps declare handlers at import time, usually in ``<app>/tasks.py``::

    from pgqueue_sync import Job
    from pgqueue_sync.contrib.django import entrypoint

    @entrypoint("send_invoice", concurrency_limit=4)
    def send_invoice(job: Job) -> None:
        Invoice.objects.get(pk=int(job.payload)).send()

The worker (``manage.py pgq_sync worker``) imports those modules, then
registers every declaration on its own :class:`~pgqueue_sync.PgQueuer`. The
registry is process-wide and thread-safe; re-importing a module (as Django's
autoreloader and some test runners do) replaces a declaration instead of
failing.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ...errors import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
_entrypoints: dict[str, Declaration] = {}
_schedules: dict[tuple[str, str], Declaration] = {}


@dataclasses.dataclass(frozen=True)
class Declaration:
    """One ``@entrypoint`` or ``@schedule``: the function and its keyword options."""

    func: Callable[..., Any]
    options: dict[str, Any]

    @property
    def qualified_name(self) -> str:
        return f"{self.func.__module__}.{self.func.__qualname__}"


def entrypoint(name: str, **options: Any) -> Callable[[F], F]:
    """Declare a handler for jobs of ``name``; options as :meth:`PgQueuer.entrypoint`.

    Raises :class:`ConfigurationError` when another function already claims
    ``name``. Sync handlers run in the worker's handler threads with Django's
    stale connections closed before and after each job; ``async def``
    handlers run on its event-loop thread and must use Django's async ORM
    (or ``sync_to_async``).
    """

    def register(func: F) -> F:
        declared = Declaration(func, dict(options))
        with _lock:
            _check_free(_entrypoints.get(name), declared, f"entrypoint {name!r}")
            _entrypoints[name] = declared
        return func

    return register


def schedule(entrypoint: str, expression: str, **options: Any) -> Callable[[F], F]:
    """Declare a cron schedule; arguments as :meth:`PgQueuer.schedule`."""

    def register(func: F) -> F:
        declared = Declaration(func, dict(options))
        with _lock:
            key = (entrypoint, expression)
            _check_free(_schedules.get(key), declared, f"schedule {entrypoint!r} {expression!r}")
            _schedules[key] = declared
        return func

    return register


def entrypoints() -> dict[str, Declaration]:
    """A snapshot of the declared entrypoints, by name."""
    with _lock:
        return dict(_entrypoints)


def schedules() -> dict[tuple[str, str], Declaration]:
    """A snapshot of the declared schedules, by ``(entrypoint, expression)``."""
    with _lock:
        return dict(_schedules)


def clear() -> None:
    """Forget every declaration (for tests)."""
    with _lock:
        _entrypoints.clear()
        _schedules.clear()


def with_django_hygiene(func: F) -> F:
    """Wrap a sync handler so Django's stale connections close around each call.

    Closes this thread's unusable or obsolete Django connections before and
    after the call (what ``close_old_connections()`` does around each
    request) and clears the debug query log after it; see
    :func:`tidy_connections`. ``async def`` functions are returned unchanged.
    """
    if inspect.iscoroutinefunction(func):
        return func

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tidy_connections()
        try:
            return func(*args, **kwargs)
        finally:
            tidy_connections(after_job=True)

    return wrapper  # type: ignore[return-value]


def tidy_connections(*, after_job: bool = False) -> None:
    """Django's per-request connection care, for this thread, before or after one job.

    For every Django connection this thread has initialised it does what
    ``close_old_connections()`` does (``close_if_unusable_or_obsolete()``:
    drop a connection left out of autocommit, one whose errors make it
    unusable, or one past ``CONN_MAX_AGE``; and re-arm ``CONN_HEALTH_CHECKS``
    for the next use) and, ``after_job``, what ``reset_queries()`` does (clear
    the debug query log), in one pass.

    The pass after a job always runs. The one before a job is skipped when
    the last pass in this thread left no connection open and Django's
    ``connection_created`` signal has not said the thread opened one since:
    then every connection of the thread is closed, with nothing to check or
    drop. A connection kept open (``CONN_MAX_AGE``), or opened between jobs
    by other code of the thread, is checked before the next job as well.
    """
    if not after_job and getattr(_thread, "idle", False):
        return
    if not _watching:
        _watch_connections()
    from django.db import connections

    open_left = False
    for connection in connections.all(initialized_only=True):
        if after_job:
            connection.queries_log.clear()
        connection.close_if_unusable_or_obsolete()
        open_left = open_left or connection.connection is not None
    _thread.idle = not open_left


# Per thread: ``idle`` is True while no Django connection has been opened in
# the thread since a tidy pass left none open.
_thread = threading.local()
_watching = False


def _watch_connections() -> None:
    """Connect the ``connection_created`` receiver (once; before the first pass
    relies on it)."""
    global _watching
    from django.db.backends.signals import connection_created

    with _lock:
        if not _watching:
            connection_created.connect(_opened, dispatch_uid="pgqueue_sync.tidy_connections")
            _watching = True


def _opened(**kwargs: Any) -> None:
    # Sent by DatabaseWrapper.connect() in the thread that connects.
    _thread.idle = False


def _check_free(existing: Declaration | None, new: Declaration, what: str) -> None:
    if existing is None or existing.qualified_name == new.qualified_name:
        return
    raise ConfigurationError(
        f"{what} is declared twice, by {existing.qualified_name} and {new.qualified_name}; "
        "give one of them another name"
    )
