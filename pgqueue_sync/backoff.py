"""Exponential backoff for every retry loop of the worker (one definition).

A loop that keeps failing waits longer each time, up to a cap, and logs one
line per step, so a database outage gives a few lines instead of a storm.
"""

from __future__ import annotations

import random

#: First delay after a failure, and the cap (seconds).
INITIAL_DELAY = 0.5
MAX_DELAY = 5.0
#: Growth per consecutive failure, and the +/- random fraction applied to each delay.
FACTOR = 2.0
JITTER = 0.1


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
