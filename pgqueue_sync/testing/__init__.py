"""Helpers for testing code that uses the queue, without PostgreSQL.

Example::

    from datetime import timedelta
    from pgqueue_sync.testing import ManualClock, in_memory_queries

    clock = ManualClock()
    queries = in_memory_queries(clock)
    queries.enqueue("report", None, execute_after=timedelta(minutes=5))
    clock.advance(timedelta(minutes=5, seconds=1))   # now it is due

See :mod:`pgqueue_sync.testing.inmemory` for what the in-memory adapter cannot reproduce
(durability, other processes, caller transactions).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from ..errors import ConfigurationError
from ..models import utc_now
from .inmemory import InMemoryDriver, InMemoryQueries

__all__ = ["InMemoryDriver", "InMemoryQueries", "ManualClock", "in_memory_queries"]


class ManualClock:
    """A clock for :class:`InMemoryDriver` that only moves when told to, plus ``tick``.

    Every reading returns the current time and then moves it forward by
    ``tick`` (default 1 µs), so consecutive operations see strictly increasing
    ``NOW()`` as on a real server: a job enqueued with no delay is claimable by
    the next call. Use ``tick=timedelta(0)`` for a frozen clock. Thread-safe.
    """

    def __init__(
        self, start: datetime | None = None, *, tick: timedelta = timedelta(microseconds=1)
    ) -> None:
        self._now = _aware(start) if start is not None else utc_now()
        self._tick = tick
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            now = self._now
            self._now += self._tick
            return now

    def peek(self) -> datetime:
        """The time the next reading will return, without moving the clock."""
        with self._lock:
            return self._now

    def advance(self, delta: timedelta | float) -> datetime:
        """Move forward by ``delta`` (a ``timedelta`` or seconds); returns the new time."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        with self._lock:
            self._now += step
            return self._now

    def set(self, when: datetime) -> None:
        """Jump to ``when`` (an aware datetime), forwards or backwards."""
        value = _aware(when)
        with self._lock:
            self._now = value


def in_memory_queries(clock: Callable[[], datetime] | None = None) -> InMemoryQueries:
    """Fresh :class:`InMemoryQueries` over a new :class:`InMemoryDriver`.

    ``clock`` plays the database's ``NOW()`` (default: the real UTC time); pass
    a :class:`ManualClock` to move time in tests. The driver is
    ``queries.driver``, e.g. for ``queries.driver.add_listener(callback)``.
    """
    return InMemoryQueries(InMemoryDriver(clock=clock or utc_now))


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ConfigurationError(
            f"ManualClock needs an aware datetime, got {value!r}; "
            "e.g. datetime(2025, 1, 1, tzinfo=timezone.utc)"
        )
    return value
