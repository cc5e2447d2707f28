"""Batched writes off the handler threads: job outcomes, retries and heartbeats.

Each buffer owns one named thread. Writes that fail stay in memory and are
retried on the next tick, so a database blip delays bookkeeping but never
drops an outcome.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import NamedTuple, Protocol

from .errors import PgqException
from .models import Job, TracebackRecord
from .results import StoredResult
from .threads import Ticker
from .types import JOB_STATUS, JobId

logger = logging.getLogger(__name__)

#: Completion writes are flushed at least this often (seconds, ±20 %).
COMPLETION_FLUSH_INTERVAL = 0.1
#: Attempts to flush what is left at shutdown.
SHUTDOWN_FLUSH_ATTEMPTS = 5
SHUTDOWN_RETRY_DELAY = 0.2


class _Writer(Protocol):
    def log_jobs(
        self,
        job_status: list[tuple[Job | JobId | int, JOB_STATUS, TracebackRecord | None]],
        *,
        results: Sequence[StoredResult] = ...,
    ) -> list[JobId]: ...

    def retry_job(
        self, job: Job | JobId | int, delay: timedelta, traceback_record: TracebackRecord | None
    ) -> bool: ...

    def update_heartbeat(self, job_ids: list[int]) -> None: ...


@dataclasses.dataclass
class Retry:
    """A retry to write now; ``fallback`` is the outcome if the write fails
    (with a result row when ``store_result``)."""

    job: Job
    delay: timedelta
    record: TracebackRecord
    fallback: JOB_STATUS
    store_result: bool = False


Outcome = tuple[Job, JOB_STATUS, TracebackRecord | None]


class Batch(NamedTuple):
    """Outcomes taken from the buffer, and the results of those jobs that store one."""

    outcomes: list[Outcome]
    results: list[StoredResult]


class CompletionBuffer:
    """Collects job outcomes and writes them with ``log_jobs`` in batches.

    Flushes every ~100 ms, or at once when ``max_size`` outcomes wait or a
    retry is queued (retries are written immediately, never held back).
    :meth:`add` and :meth:`add_retry` are thread-safe and never block on I/O.
    """

    def __init__(
        self,
        writer: _Writer,
        *,
        max_size: int,
        name: str = "pgqueue_sync-flusher",
        on_written: Callable[[list[Job]], None] = lambda jobs: None,
    ) -> None:
        self._writer = writer
        self._max_size = max_size
        self._on_written = on_written
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        # Results travel beside their outcomes and are written in the same
        # statement; empty unless some entrypoint stores results.
        self._results: list[StoredResult] = []
        self._retries: list[Retry] = []
        self._writing = 0
        # Serialises flushes from the ticker and from stop() on another thread.
        self._flush_lock = threading.Lock()
        self._ticker = Ticker(self.flush, COMPLETION_FLUSH_INTERVAL, name=name)

    def start(self) -> None:
        """Start the flush thread."""
        self._ticker.start()

    def add(
        self,
        job: Job,
        status: JOB_STATUS,
        record: TracebackRecord | None,
        result: StoredResult | None = None,
    ) -> None:
        """Queue an outcome (and the job's result, if it stores one) for the next write."""
        with self._lock:
            self._outcomes.append((job, status, record))
            if result is not None:
                self._results.append(result)
            full = len(self._outcomes) >= self._max_size
        if full:
            self._ticker.wake()

    def add_retry(self, retry: Retry) -> None:
        """Queue a retry and write it right away."""
        with self._lock:
            self._retries.append(retry)
        self._ticker.wake()

    def take(self) -> Batch:
        """Remove and return the queued outcomes (and results), for a caller that
        writes them itself (the dispatcher piggybacks them on its next claim).
        Pair with :meth:`restore` on failure and :meth:`written` on success."""
        with self._lock:
            outcomes, self._outcomes = self._outcomes, []
            results, self._results = self._results, []
            return Batch(outcomes, results)

    def restore(self, batch: Batch) -> None:
        """Put back a batch that :meth:`take` returned but could not be written."""
        if batch.outcomes:
            with self._lock:
                self._outcomes[:0] = batch.outcomes
                self._results[:0] = batch.results

    def written(self, batch: Batch) -> None:
        """Report a batch from :meth:`take` as written."""
        if batch.outcomes:
            self._on_written([job for job, _, _ in batch.outcomes])

    def pending(self) -> int:
        """Outcomes and retries not yet written, counting those being written now."""
        with self._lock:
            return len(self._outcomes) + len(self._retries) + self._writing

    def flush(self) -> None:
        """Write everything queued; on failure keep it for the next attempt and raise."""
        with self._flush_lock:
            with self._lock:
                retries, self._retries = self._retries, []
                outcomes, self._outcomes = self._outcomes, []
                results, self._results = self._results, []
                self._writing = len(retries) + len(outcomes)
            try:
                for retry in retries:
                    self._write_retry(retry)
                if outcomes:
                    self._write_outcomes(Batch(outcomes, results))
            finally:
                with self._lock:
                    self._writing = 0

    def _write_outcomes(self, batch: Batch) -> None:
        try:
            if batch.results:
                self._writer.log_jobs(list(batch.outcomes), results=batch.results)
            else:
                self._writer.log_jobs(list(batch.outcomes))
        except PgqException:
            self.restore(batch)
            raise
        self._on_written([job for job, _, _ in batch.outcomes])

    def _write_retry(self, retry: Retry) -> None:
        try:
            self._writer.retry_job(retry.job, retry.delay, retry.record)
        except PgqException:
            # As in PgQueuer: a retry that cannot be written is a failure.
            logger.warning("retry of job %d could not be written; recording failure", retry.job.id)
            stored = StoredResult(retry.job) if retry.store_result else None
            self.add(retry.job, retry.fallback, retry.record, stored)
            return
        self._on_written([retry.job])

    def stop(self) -> bool:
        """Stop the thread and flush what is left (a few attempts). True if nothing is lost."""
        self._ticker.stop()
        for attempt in range(SHUTDOWN_FLUSH_ATTEMPTS):
            try:
                self.flush()
                return True
            except PgqException as exc:
                logger.warning("final flush attempt %d failed: %s", attempt + 1, exc)
                time.sleep(SHUTDOWN_RETRY_DELAY)
        logger.error("%d job outcomes could not be written at shutdown", self.pending())
        return False


class Heartbeats:
    """Keeps running jobs alive from its own thread: each job's heartbeat is written
    every ``period`` (half its stale timeout), in batches flushed every
    ``tick`` seconds (± 20 %).

    ``running()`` returns a snapshot ``{job_id: (claimed_at, period)}`` with
    ``time.monotonic()`` claim times; reading a snapshot each tick keeps the
    per-job cost of the hot path at zero. A failed write is retried next tick.
    """

    def __init__(
        self,
        writer: _Writer,
        running: Callable[[], dict[int, tuple[float, float]]],
        *,
        tick: float,
        name: str = "pgqueue_sync-heartbeat",
    ) -> None:
        self._writer = writer
        self._running = running
        self._last: dict[int, float] = {}
        self._ticker = Ticker(self.flush, tick, name=name)

    def is_alive(self) -> bool:
        """True while the heartbeat thread runs."""
        return self._ticker.is_alive()

    def start(self) -> None:
        """Start the heartbeat thread."""
        self._ticker.start()

    def flush(self) -> None:
        """Write the heartbeats that are due."""
        now = time.monotonic()
        running = self._running()
        self._last = {job_id: t for job_id, t in self._last.items() if job_id in running}
        due = [
            job_id
            for job_id, (claimed_at, period) in running.items()
            if self._last.get(job_id, claimed_at) + period <= now
        ]
        if due:
            self._writer.update_heartbeat(due)
            self._last.update(dict.fromkeys(due, now))

    def stop(self) -> None:
        """Stop the thread (bounded)."""
        self._ticker.stop()
