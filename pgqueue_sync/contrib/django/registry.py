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

import contextlib
import dataclasses
import functools
import inspect
import threading
from collections.abc import Callable, Iterator
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

    Runs ``close_old_connections()`` before and after the call in the calling
    (handler) thread, as Django does around each request, and clears the
    debug query log. ``async def`` functions are returned unchanged.
    """
    if inspect.iscoroutinefunction(func):
        return func

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with connection_hygiene():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def connection_hygiene() -> Iterator[None]:
    """Close this thread's stale Django connections around a job, as around a request."""
    from django.db import close_old_connections, reset_queries

    close_old_connections()
    try:
        yield
    finally:
        reset_queries()
        close_old_connections()


def _check_free(existing: Declaration | None, new: Declaration, what: str) -> None:
    if existing is None or existing.qualified_name == new.qualified_name:
        return
    raise ConfigurationError(
        f"{what} is declared twice, by {existing.qualified_name} and {new.qualified_name}; "
        "give one of them another name"
    )
