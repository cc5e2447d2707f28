"""Per-job timeouts: one watchdog thread that expires the runs of entrypoints
registered with ``timeout=``. No database code here; the worker decides what an
expiry means (see :meth:`pgqueue_sync.worker.manager.QueueManager.entrypoint`).

A run is armed when its handler starts and settled when it ends. Exactly one
of the two wins: :meth:`Watchdog.settle` returns True when the handler ended
first (its outcome counts), False when the deadline already fired (its outcome
is ignored: the timeout was recorded instead). Runs of one entrypoint share a
timeout, so their deadlines arrive in arming order: each timeout keeps its runs
in an insertion-ordered dict, making arm and settle O(1) with no heap to
clean up after the runs that end in time (nearly all of them).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import types
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from .threads import JOIN_TIMEOUT

logger = logging.getLogger(__name__)

#: Longest single wait of the watchdog thread (seconds): it re-checks at least
#: this often even when no deadline is near.
WATCHDOG_MAX_WAIT = 1.0
#: How long a handler that returned after its timeout waits for the expiry's
#: bookkeeping (which does no I/O) to finish before it releases its thread.
EXPIRY_BOOKKEEPING_WAIT = 5.0


class TimedRun:
    """One handler run with a deadline. ``expired`` is set once the worker has
    recorded the timeout (so a late return never overtakes that bookkeeping)."""

    __slots__ = ("context", "deadline", "expired", "job", "on_expiry", "thread_id", "timeout")

    def __init__(
        self,
        timeout: timedelta,
        on_expiry: Callable[[TimedRun], object],
        *,
        job: Any = None,
        context: Any = None,
        thread_id: int | None = None,
    ) -> None:
        self.timeout = timeout
        self.on_expiry = on_expiry
        self.job = job
        self.context = context
        self.thread_id = thread_id
        self.deadline = 0.0  # time.monotonic(); set by Watchdog.arm
        self.expired = threading.Event()


class Watchdog:
    """Fires ``run.on_expiry(run)`` on its own named daemon thread for every
    armed run not settled by its deadline. Thread-safe."""

    def __init__(self, name: str = "pgqueue_sync-timeouts") -> None:
        self._cond = threading.Condition(threading.Lock())
        # timeout (seconds) -> runs in arming (hence deadline) order.
        self._runs: dict[float, dict[TimedRun, None]] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._watch, name=name, daemon=True)

    def start(self) -> Watchdog:
        """Start the thread; returns self."""
        self._thread.start()
        return self

    def arm(self, run: TimedRun) -> TimedRun:
        """Start ``run``'s clock now; returns it."""
        seconds = run.timeout.total_seconds()
        with self._cond:
            group = self._runs.setdefault(seconds, {})
            run.deadline = time.monotonic() + seconds
            group[run] = None
            if len(group) == 1:  # a new earliest deadline for this timeout
                self._cond.notify()
        return run

    def settle(self, run: TimedRun) -> bool:
        """The handler ended: True if it beat its deadline (and the run is
        disarmed), False if the run has expired."""
        with self._cond:
            group = self._runs.get(run.timeout.total_seconds())
            if group is None or run not in group:
                return False
            del group[run]
            return True

    def stop(self, timeout: float = JOIN_TIMEOUT) -> None:
        """Stop the thread (bounded join); armed runs no longer expire."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _due(self) -> tuple[list[TimedRun], float]:
        """Remove and return the runs past their deadline, and how long to wait
        for the next one. Called with the lock held."""
        now = time.monotonic()
        due: list[TimedRun] = []
        wait = WATCHDOG_MAX_WAIT
        for group in self._runs.values():
            while group:
                run = next(iter(group))
                if run.deadline > now:
                    wait = min(wait, run.deadline - now)
                    break
                del group[run]
                due.append(run)
        return due, wait

    def _watch(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                due, wait = self._due()
                if not due:
                    self._cond.wait(wait)
                    continue
            for run in due:
                try:
                    run.on_expiry(run)
                except Exception:  # the watchdog must outlive a failed expiry
                    logger.exception("handling the timeout of %r failed", run.job)
                finally:
                    run.expired.set()


def stack_traceback(thread_id: int | None, stop_at: types.CodeType) -> types.TracebackType | None:
    """A traceback of what thread ``thread_id`` is running now, innermost last,
    starting below the frame running ``stop_at`` (the worker's call of the
    handler); ``None`` if the thread is gone. Attached to a timeout's
    ``TimeoutError`` so its log record shows where the handler was stuck."""
    if thread_id is None:
        return None
    frame: types.FrameType | None = sys._current_frames().get(thread_id)
    frames: list[types.FrameType] = []
    while frame is not None and frame.f_code is not stop_at:
        frames.append(frame)
        frame = frame.f_back
    if frame is None:  # not inside the handler call (any more): nothing useful to show
        return None
    tb: types.TracebackType | None = None
    for each in frames:  # innermost first: build the chain from the inside out
        tb = types.TracebackType(tb, each, each.f_lasti, each.f_lineno or 0)
    return tb
