"""Enqueue from Django code, inside the caller's transaction.

Example (a view)::

    from django.db import transaction
    from pgqueue_sync.contrib.django import enqueue

    def checkout(request):
        with transaction.atomic():
            order = Order.objects.create(...)
            enqueue("send_invoice", str(order.pk).encode())
        # committed: the order and its job exist, and a worker has been woken
        ...

Outside ``atomic()`` the job commits at once (Django's autocommit). Every
call blocks for one statement on the calling thread's Django connection and
may raise :mod:`pgqueue_sync.errors` exceptions (e.g. ``DuplicateJobError``).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ...queries import ExecuteAfter, Queries
from ...settings import DBSettings
from ...types import JobId, OnConflict
from .conf import get_settings
from .db import DjangoDriver


@dataclasses.dataclass(frozen=True)
class EnqueueRequest:
    """One :func:`enqueue` call, as test interceptors see it (lists, one item per job)."""

    entrypoints: list[str]
    payloads: list[bytes | None]
    priorities: list[int]
    execute_after: list[ExecuteAfter]
    dedupe_keys: list[str | None]
    headers: list[Mapping[str, Any] | None]
    on_conflict: OnConflict
    using: str


#: An interceptor answers a request with job ids, or ``None`` to let it through.
Interceptor = Callable[[EnqueueRequest], "list[JobId | None] | None"]

_lock = threading.Lock()
_interceptors: list[Interceptor] = []
_queries: dict[tuple[str, DBSettings], Queries] = {}


def get_queries(using: str | None = None) -> Queries:
    """:class:`~pgqueue_sync.Queries` over Django's connection for ``using``.

    ``using`` defaults to ``PGQUEUE_SYNC["DATABASE_ALIAS"]``. The object is
    shared and thread-safe: each statement runs on the calling thread's
    connection, inside its ``atomic()`` block if one is open. Use it for
    everything beyond :func:`enqueue` (``queue_size()``, ``requeue_jobs()``,
    ``mark_job_as_cancelled()``, ...).
    """
    conf = get_settings()
    alias = using or conf.database_alias
    key = (alias, conf.db_settings)
    with _lock:
        queries = _queries.get(key)
        if queries is None:
            queries = _queries[key] = Queries(DjangoDriver(alias), settings=key[1])
        return queries


def enqueue(
    entrypoint: str | Sequence[str],
    payload: bytes | None | Sequence[bytes | None] = None,
    priority: int | Sequence[int] = 0,
    execute_after: ExecuteAfter | Sequence[ExecuteAfter] = None,
    dedupe_key: str | None | Sequence[str | None] = None,
    headers: Mapping[str, Any] | None | Sequence[Mapping[str, Any] | None] = None,
    *,
    on_conflict: OnConflict = "raise",
    using: str | None = None,
) -> list[JobId | None]:
    """Insert one job, or a batch (lists), on Django's connection; see :meth:`Queries.enqueue`.

    Joins the caller's ``transaction.atomic()``: the job becomes visible and
    wakes workers when the outermost block commits, and disappears with a
    rollback. Returns the job ids in input order (``None`` for a duplicate
    skipped with ``on_conflict="skip"``). Under a test mode (see
    :mod:`pgqueue_sync.contrib.django.testing`) nothing may be written.
    """
    queries = get_queries(using)
    if intercepting():
        request = _request(entrypoint, payload, priority, execute_after, dedupe_key, headers,
                           on_conflict, using)
        answer = _intercept(request)
        if answer is not None:
            return answer
    ids = queries.enqueue(  # type: ignore[misc]
        entrypoint, payload, priority, execute_after, dedupe_key, headers,
        on_conflict=on_conflict,  # type: ignore[arg-type]
    )
    return list(ids)


def enqueue_on_commit(*args: Any, using: str | None = None, **kwargs: Any) -> None:
    """Enqueue (arguments as :func:`enqueue`) once the current transaction on ``using`` commits.

    For a queue on another database alias than the data it follows: the job
    is written by ``transaction.on_commit``, after the commit, so a crash in
    between loses it. On the same alias prefer :func:`enqueue`, which is
    atomic with the caller's writes. Outside ``atomic()`` it enqueues at once.
    """
    from django.db import transaction

    data_alias = using or get_settings().database_alias
    transaction.on_commit(functools.partial(enqueue, *args, **kwargs), using=data_alias)


def add_interceptor(interceptor: Interceptor) -> None:
    """Route every :func:`enqueue` in this process through ``interceptor`` first (tests)."""
    with _lock:
        _interceptors.append(interceptor)


def remove_interceptor(interceptor: Interceptor) -> None:
    """Undo :func:`add_interceptor` (no error if it is not installed)."""
    with _lock:
        if interceptor in _interceptors:
            _interceptors.remove(interceptor)


def intercepting() -> bool:
    return bool(_interceptors) or get_settings().test_mode is not None


def _intercept(request: EnqueueRequest) -> list[JobId | None] | None:
    with _lock:
        chain = list(reversed(_interceptors))
    for interceptor in chain:
        answer = interceptor(request)
        if answer is not None:
            return answer
    mode = get_settings().test_mode
    if mode is None:
        return None
    from .testing import settings_interceptor

    return settings_interceptor(mode)(request)


def _request(
    entrypoint: Any, payload: Any, priority: Any, execute_after: Any, dedupe_key: Any,
    headers: Any, on_conflict: OnConflict, using: str | None,
) -> EnqueueRequest:
    from ...queries.batch import normalize_batch

    rows = normalize_batch(entrypoint, payload, priority, execute_after, dedupe_key, headers)
    return EnqueueRequest(
        entrypoints=rows["entrypoint"],
        payloads=rows["payload"],
        priorities=rows["priority"],
        execute_after=_execute_after(rows),
        dedupe_keys=rows["dedupe_key"],
        headers=[None if h is None else h.obj for h in rows["headers"]],
        on_conflict=on_conflict,
        using=using or get_settings().database_alias,
    )


def _execute_after(rows: dict[str, list[Any]]) -> list[ExecuteAfter]:
    return [at if at is not None else delay for delay, at in zip(rows["delay"], rows["at"],
                                                                 strict=True)]
