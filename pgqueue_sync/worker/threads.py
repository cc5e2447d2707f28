"""Thread plumbing: the handler pool and periodic tickers. No database code here."""

from __future__ import annotations

import enum
import logging
import queue
import random
import threading
from collections.abc import Callable
from typing import Any, Final

from ..backoff import Backoff
from ..errors import PgqException

logger = logging.getLogger(__name__)

#: How long a stop() waits for each thread before warning and moving on.
JOIN_TIMEOUT = 5.0
#: Longest blocking get() in a pool thread, so no wait is unbounded.
POOL_GET_TIMEOUT = 60.0

_STOP = object()


class Idle(enum.Enum):
    """Type of :data:`IDLE`."""

    IDLE = "idle"


#: What a :class:`Ticker`'s ``fn`` returns when it had nothing to do (made no
#: database call): not a success, so a failing ticker stays failing (no "works
#: again" line, no backoff reset) until a call that does something succeeds.
IDLE: Final = Idle.IDLE


class HandlerPool:
    """A fixed set of named daemon threads running submitted callables.

    Unlike ``concurrent.futures.ThreadPoolExecutor`` the threads are daemons:
    a handler that never returns cannot keep the process alive after a
    bounded shutdown (the interpreter joins executor threads at exit).
    Exceptions escaping a callable are logged, never lost silently.
    """

    def __init__(self, size: int, *, name: str = "pgqueue_sync-runner") -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Queue ``fn(*args)`` for the next free thread; never blocks."""
        self._queue.put((fn, args))

    def take_pending(self) -> list[tuple[Callable[..., object], tuple[Any, ...]]]:
        """Remove and return the submitted calls no thread has started yet
        (``(fn, args)`` pairs, in submission order); call it before :meth:`stop`."""
        pending: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return pending
            if item is _STOP:  # stop() already ran: leave its markers in place
                self._queue.put(item)
                return pending
            pending.append(item)

    def stop(self, timeout: float = JOIN_TIMEOUT) -> list[str]:
        """Stop the threads after queued work; returns names still running at ``timeout``."""
        for _ in self._threads:
            self._queue.put(_STOP)
        stuck = []
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                stuck.append(thread.name)
        return stuck

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=POOL_GET_TIMEOUT)
            except queue.Empty:
                continue
            if item is _STOP:
                return
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # the thread must not die, whatever a job raised
                logger.exception("uncaught error in handler thread")


class Ticker:
    """Calls ``fn()`` every ``interval`` seconds (± ``jitter`` fraction) in a named thread.

    When ``fn`` raises, the ticker backs off (:class:`~pgqueue_sync.backoff.Backoff`):
    one log line per step (a traceback only for errors that are not
    :class:`~pgqueue_sync.errors.PgqException`), no ``wake()`` shortcut while
    failing, and one line when it works again. A call returning :data:`IDLE`
    (nothing to do) proves nothing: a failing ticker stays failing, silently,
    at its normal pace (the next failure is the next backoff step) until a
    call that does something succeeds. ``wake()`` runs the next tick at once;
    ``stop()`` runs ``final`` (if given) on the thread.
    """

    def __init__(
        self,
        fn: Callable[[], object],
        interval: float,
        *,
        name: str,
        jitter: float = 0.2,
        final: Callable[[], object] | None = None,
    ) -> None:
        self._fn = fn
        self._final = final
        self.interval = interval
        self._jitter = jitter
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._backoff = Backoff()
        self._last_error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def failing(self) -> bool:
        """True from a failed call of ``fn`` until a call that does something (one
        not returning :data:`IDLE`) succeeds."""
        return self._backoff.failing

    @property
    def last_error(self) -> Exception | None:
        """What the last call of ``fn`` raised; ``None`` once a call succeeds or
        has nothing to do (then no work waits on the error)."""
        return self._last_error

    def start(self) -> Ticker:
        """Start the thread; returns self."""
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def wake(self) -> None:
        """Run the next tick now instead of at the end of the interval."""
        self._wake.set()

    def stop(self, timeout: float = JOIN_TIMEOUT) -> None:
        """Stop after the current tick (then run ``final``); bounded join."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("thread %s did not stop within %.1fs", self._thread.name, timeout)

    def _run(self) -> None:
        delay = self._next_interval()
        while not self._stop.is_set():
            if self._backoff.failing:
                self._stop.wait(delay)  # no wake() shortcut while failing
            else:
                self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                break
            delay = self._call(self._fn)
        if self._final is not None:
            self._call(self._final)

    def _next_interval(self) -> float:
        return self.interval * random.uniform(1 - self._jitter, 1 + self._jitter)

    def _call(self, fn: Callable[[], object]) -> float:
        """Run ``fn``; returns the wait before the next call."""
        try:
            outcome = fn()
        except Exception as exc:  # the loop must not die
            self._last_error = exc
            delay = self._backoff.failure()
            logger.warning(
                "%s failed (%s: %s); retrying in %.1fs", self._thread.name,
                type(exc).__name__, exc, delay,
                exc_info=None if isinstance(exc, PgqException) else exc,
            )
            return delay
        self._last_error = None
        if outcome is IDLE:  # proves nothing: a failing ticker stays failing, silently
            return self._next_interval()
        if self._backoff.success():
            logger.warning("%s works again", self._thread.name)
        return self._next_interval()
