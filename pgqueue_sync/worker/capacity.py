"""How many jobs a worker may claim right now: threads (minus those held by timed-out
handlers), a bounded prefetch, reservations.

A worker claims only what it can start soon. It may hold one batch per claim lane more
than it has free handler threads, but only while recent handlers are short (their
moving average is under :data:`PREFETCH_MAX_JOB_SECONDS`), so a queued job
waits for a thread for milliseconds, never for a long job to end.
"""

from __future__ import annotations

import threading

#: Prefetch only while the average handler takes less than this (seconds).
PREFETCH_MAX_JOB_SECONDS = 0.05
#: Weight of the newest duration in the moving average.
EWMA_WEIGHT = 0.2


class Capacity:
    """Thread-safe slot accounting shared by the claim lanes of one worker."""

    def __init__(self, concurrency: int, batch_size: int, *, lanes: int = 1) -> None:
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.prefetch = batch_size * lanes
        self._lock = threading.Lock()
        self._in_flight = 0
        self._reserved = 0
        self._lost = 0
        self._average: float | None = None

    def limit(self) -> int:
        """Jobs this worker may hold now: its threads, plus a batch per claim lane while
        jobs are short."""
        threads = self.concurrency - self._lost
        if threads <= 0:  # every handler thread is held by a timed-out handler
            return 0
        average = self._average
        short = average is not None and average < PREFETCH_MAX_JOB_SECONDS
        return threads + (self.prefetch if short else 0)

    def reserve(self) -> int:
        """Reserve up to one batch of room for a claim; 0 when full. Pair with :meth:`settle`."""
        with self._lock:
            free = self.limit() - self._in_flight - self._reserved
            wanted = max(0, min(self.batch_size, free))
            self._reserved += wanted
            return wanted

    def settle(self, reserved: int, claimed: int) -> None:
        """Turn ``claimed`` of a reservation into in-flight jobs and free the rest."""
        with self._lock:
            self._reserved -= reserved
            self._in_flight += claimed

    def finished(self, seconds: float | None) -> None:
        """One job left; ``seconds`` is how long its handler ran (None if it did not run)."""
        with self._lock:
            self._in_flight -= 1
            if seconds is not None:
                previous = self._average
                self._average = (
                    seconds if previous is None
                    else previous + EWMA_WEIGHT * (seconds - previous)
                )

    def lose(self) -> int:
        """A handler thread is held by a timed-out handler: one slot fewer until
        :meth:`regain`. Call it before that job's :meth:`finished`, so its slot is
        never handed out in between. Returns the number of lost slots."""
        with self._lock:
            self._lost += 1
            return self._lost

    def regain(self) -> int:
        """A timed-out handler returned: its thread is free again. Returns the
        number of slots still lost."""
        with self._lock:
            self._lost -= 1
            return self._lost

    def lost(self) -> int:
        """Slots held by timed-out handlers that have not returned yet."""
        with self._lock:
            return self._lost

    def in_flight(self) -> int:
        """Claimed jobs not yet finished (queued for a thread or running)."""
        with self._lock:
            return self._in_flight
