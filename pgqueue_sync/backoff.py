"""Exponential backoff for every retry loop (one definition), and the one loop that
retries a step through database errors.

A loop that keeps failing waits longer each time, up to a cap, and logs one
line per step, so a database outage gives a few lines instead of a storm.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import TypeVar

from .errors import ConfigurationError, DatabaseError

#: First delay after a failure, and the cap (seconds).
INITIAL_DELAY = 0.5
MAX_DELAY = 5.0
#: Growth per consecutive failure, and the +/- random fraction applied to each delay.
FACTOR = 2.0
JITTER = 0.1
#: Backoff of a loop that retries after database errors: first delay and cap
#: (seconds). The cap keeps it back at work within seconds of the database returning.
DATABASE_RETRY_INITIAL = 0.5
DATABASE_RETRY_MAX = 5.0

T = TypeVar("T")


class Backoff:
    """Delays for consecutive failures: ``initial``, ``initial * factor``, ... up to ``maximum``.

    Not thread-safe: each loop owns one.
    """

    def __init__(
        self,
        *,
        initial: float = INITIAL_DELAY,
        maximum: float = MAX_DELAY,
        factor: float = FACTOR,
        jitter: float = JITTER,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self.failures = 0

    @property
    def failing(self) -> bool:
        """True after a failure that no success has reset yet."""
        return self.failures > 0

    def failure(self) -> float:
        """Count a failure; returns how long to wait before the next try."""
        delay = min(self.initial * self.factor**self.failures, self.maximum)
        self.failures += 1
        return delay * random.uniform(1 - self.jitter, 1 + self.jitter)

    def success(self) -> bool:
        """Reset after a success; True if it ends a run of failures (worth a log line)."""
        recovered = self.failures > 0
        self.failures = 0
        return recovered



class DatabaseRetry:
    """The one loop that keeps a step going through database errors.

    :meth:`run` calls ``step(failing)`` until ``stop`` is set or the step returns
    something other than ``None``. After a :class:`~pgqueue_sync.errors.DatabaseError`
    it re-raises the ones ``fatal`` picks (waiting cannot fix them); otherwise it
    logs one line per backoff step on ``log`` at ``level`` and waits ``wait(delay)``
    (``stop.wait`` unless given: a wait that another event may end early).
    ``failing`` tells the step that the previous call failed. ``recovered`` is
    logged at WARNING when a step succeeds after failures.
    """

    def __init__(
        self,
        what: str,
        *,
        stop: threading.Event,
        log: logging.Logger,
        level: int = logging.WARNING,
        fatal: Callable[[DatabaseError], bool] | None = None,
        wait: Callable[[float], object] | None = None,
        recovered: str | None = None,
    ) -> None:
        self.what = what
        self.stop = stop
        self.log = log
        self.level = level
        self.fatal = needs_a_fix if fatal is None else fatal
        self.wait = stop.wait if wait is None else wait
        self.recovered = recovered
        self.backoff = Backoff(initial=DATABASE_RETRY_INITIAL, maximum=DATABASE_RETRY_MAX)

    def run(self, step: Callable[[bool], T | None]) -> T | None:
        """Call ``step`` until ``stop`` is set or it returns a result, which is returned."""
        while not self.stop.is_set():
            try:
                result = step(self.backoff.failing)
            except DatabaseError as exc:
                if self.fatal(exc):
                    raise
                delay = self.backoff.failure()
                self.log.log(self.level, "database error in %s (%s); retrying in %.1fs",
                             self.what, exc, delay)
                self.wait(delay)
                continue
            if self.backoff.success() and self.recovered:
                self.log.warning("%s", self.recovered)
            if result is not None:
                return result
        return None


def needs_a_fix(error: DatabaseError) -> bool:
    """True for a database error that no retry fixes: a misconfiguration the database
    found, such as :class:`~pgqueue_sync.errors.PoolerError`, whose message says what does."""
    return isinstance(error, ConfigurationError)
