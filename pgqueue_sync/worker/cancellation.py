"""A thread-friendly cancellation token, and the ``Context`` handed to handlers."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, MutableMapping
from types import TracebackType
from typing import Any

from ..errors import PgqException

logger = logging.getLogger(__name__)


class JobCancelled(PgqException):
    """The job was cancelled (``mark_job_as_cancelled`` / ``pgq-sync cancel``) while running."""


class CancellationToken:
    """Cooperative cancellation for one job; all methods are thread-safe.

    A running thread cannot be interrupted, so a ``def`` handler notices
    cancellation only when it looks: poll :attr:`cancelled`, block with
    :meth:`wait`, call :meth:`raise_if_cancelled` at checkpoints, or wrap a
    section in ``with ctx.cancellation:``, which checks on entry and on exit.
    For ``async def`` handlers cancelling also cancels the coroutine's task.
    """

    # One token per job: keep construction cheap; the Event exists only once
    # somebody waits on it.
    __slots__ = ("_callbacks", "_cancelled", "_event", "_lock")

    def __init__(self) -> None:
        self._cancelled = False
        self._event: threading.Event | None = None
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []

    @property
    def cancelled(self) -> bool:
        """True once cancellation was requested."""
        return self._cancelled

    def cancel(self) -> None:
        """Request cancellation; idempotent. Runs registered callbacks once."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            if self._event is not None:
                self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a broken callback must not stop the others
                logger.exception("cancellation callback %r failed", callback)

    def wait(self, timeout: float | None) -> bool:
        """Block up to ``timeout`` seconds for cancellation; True if cancelled.

        Handy as an interruptible ``sleep``: ``if ctx.cancellation.wait(5): return``.
        """
        with self._lock:
            if self._cancelled:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)

    def raise_if_cancelled(self) -> None:
        """Raise :class:`JobCancelled` if cancellation was requested."""
        if self._cancelled:
            raise JobCancelled()

    def add_callback(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` on cancellation (at once if already cancelled)."""
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(callback)
                return
        callback()

    def __enter__(self) -> CancellationToken:
        self.raise_if_cancelled()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc_type is None:
            self.raise_if_cancelled()
        # A JobCancelled raised inside the block ends the block quietly, as an
        # anyio cancel scope would; the job is then recorded as canceled.
        return exc_type is not None and issubclass(exc_type, JobCancelled)


@dataclasses.dataclass
class Context:
    """What a handler that accepts a context receives next to its job.

    ``resources`` is the one mapping passed to ``PgQueuer(resources=...)``:
    the same object for every job and schedule, so mutations are shared.
    """

    cancellation: CancellationToken
    resources: MutableMapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ScheduleContext:
    """What a schedule function that accepts a context receives."""

    resources: MutableMapping[str, Any] = dataclasses.field(default_factory=dict)
