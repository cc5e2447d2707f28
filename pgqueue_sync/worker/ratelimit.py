"""A token bucket for ``requests_per_second`` (per worker, not fleet-wide)."""

from __future__ import annotations

import math
import threading
import time

from ..options import requests_per_second


class TokenBucket:
    """Allows ``rate`` starts per second on average, bursts up to ``max(rate, 1)``.

    Thread-safe. The limit is local to one worker: N workers allow N × rate.
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"requests_per_second must be > 0, got {rate}")
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def available(self) -> int:
        """Whole tokens available now."""
        with self._lock:
            self._refill()
            return int(self._tokens)

    def take(self, count: int = 1) -> None:
        """Spend tokens (may go negative when a claim returned more than expected)."""
        with self._lock:
            self._refill()
            self._tokens -= count

    def seconds_until_token(self) -> float:
        """How long until one whole token is available (0 if one is)."""
        with self._lock:
            self._refill()
            return max(0.0, (1 - self._tokens) / self.rate)

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now


def rate_bucket(rate: float) -> TokenBucket | None:
    """A token bucket for a finite ``requests_per_second``, else ``None`` (no limit)."""
    rate = requests_per_second(rate)
    return None if math.isinf(rate) else TokenBucket(rate)
