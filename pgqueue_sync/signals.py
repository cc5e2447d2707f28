"""What SIGINT and SIGTERM mean, for the worker, the scheduler and the process supervisor.

One definition: the first stop signal asks for a graceful stop (running work
finishes), every later one for a stop at once (running work goes back to the
queue; the supervisor kills its children at the third). A stop already asked
for another way (a caller set ``shutdown``) counts as the first signal, so one
signal then stops at once.

Handlers run in the main thread between two bytecodes: the callbacks only set
events or counters, and whoever owns the main thread acts on them.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

#: The signals that ask a worker, a scheduler or a supervisor to stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest(NamedTuple):
    """One stop signal: its name, and which stop request it is (1 for the first)."""

    name: str
    number: int

    @property
    def at_once(self) -> bool:
        """True from the second request on: stop without waiting for running work."""
        return self.number > 1


class StopSignals:
    """Counts stop signals and passes each to ``on_stop`` as a :class:`StopRequest`.

    ``stopping`` tells whether a stop was already requested another way; if so,
    the first signal counts as the second. Use :meth:`installed` around the
    blocking part of ``run()``.
    """

    def __init__(
        self,
        on_stop: Callable[[StopRequest], None],
        *,
        stopping: Callable[[], bool] | None = None,
    ) -> None:
        self._on_stop = on_stop
        self._stopping = stopping
        self.count = 0

    def __call__(self, signum: int) -> None:
        if self.count == 0 and self._stopping is not None and self._stopping():
            self.count = 1
        self.count += 1
        self._on_stop(StopRequest(signal.Signals(signum).name, self.count))

    def reset(self) -> None:
        """Forget earlier signals (a new ``run()`` starts afresh)."""
        self.count = 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Route SIGINT/SIGTERM here while active, then restore the previous handlers.

        Only the main thread may set signal handlers: elsewhere this does nothing.
        """
        with handling_stop_signals(self):
            yield self


@contextlib.contextmanager
def handling_stop_signals(callback: Callable[[int], None]) -> Iterator[None]:
    """Route SIGINT/SIGTERM to ``callback(signum)`` while active; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {
        signum: signal.signal(signum, lambda number, _frame: callback(number))
        for signum in STOP_SIGNALS
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)
