"""Batched writes off the handler threads: job outcomes (retries included) and heartbeats.

Each buffer owns one named thread. The rules that keep a job from being lost:

* an outcome or retry stays in memory until a write of it succeeds; a write
  that fails for any reason but the row's own content is kept and retried
  (with backoff), never turned into a different outcome;
* the worker's writes are guarded (only rows still ``picked`` by this worker
  change), so re-sending a batch whose reply was lost changes nothing;
* a batch the database refuses for its content is split until the one bad
  outcome is found, which is then recorded without its details: one poison
  outcome never blocks the others (or the claims they ride on).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Protocol

from ..errors import DatabaseError
from ..models import Job, TracebackRecord
from ..results import StoredResult
from ..types import JOB_STATUS, JobId, QueueManagerId
from .threads import IDLE, Idle, Ticker

logger = logging.getLogger(__name__)

#: Completion writes are flushed at least this often (seconds, ±20 %).
COMPLETION_FLUSH_INTERVAL = 0.1
#: Attempts to flush what is left at shutdown.
SHUTDOWN_FLUSH_ATTEMPTS = 5
SHUTDOWN_RETRY_DELAY = 0.2
#: SQLSTATE classes meaning "the server refused this row's values" (data
#: exception, program limit such as an oversized index row): only these make
#: the buffer look for the offending outcome and record it without details.
CONTENT_REJECTED_CLASSES = frozenset({"22", "54"})


class _Writer(Protocol):
    def log_jobs(
        self,
        job_status: Iterable[tuple[Job | JobId | int, JOB_STATUS, TracebackRecord | None]],
        *,
        results: Sequence[StoredResult] = ...,
        retries: Sequence[tuple[Job | JobId | int, timedelta, TracebackRecord | None]] = ...,
        queue_manager_id: QueueManagerId | None = ...,
    ) -> list[JobId]: ...

    def update_heartbeat(
        self, job_ids: Iterable[int], *, queue_manager_id: QueueManagerId | None = ...
    ) -> None: ...


@dataclasses.dataclass(frozen=True)
class Finished:
    """One job's outcome to record: a final status, or a retry (``status == "queued"``
    with ``delay``), with its log record and (opt-in) stored result."""

    job: Job
    status: JOB_STATUS
    record: TracebackRecord | None = None
    result: StoredResult | None = None
    delay: timedelta | None = None

    @property
    def is_retry(self) -> bool:
        """True for a retry."""
        return self.status == "queued"

    def without_details(self, reason: str) -> Finished | None:
        """The same outcome with a minimal record and no result, or ``None`` when
        there is nothing left to drop."""
        if self.result is None and (self.record is None or self.record.traceback == ""):
            return None
        record = None if self.record is None else dataclasses.replace(
            self.record,
            exception_message=f"(not stored: the database refused the details: {reason})",
            traceback="",
            additional_context=None,
        )
        return dataclasses.replace(self, record=record, result=None)


@dataclasses.dataclass
class Batch:
    """Outcomes taken from the buffer to write in one statement."""

    items: list[Finished] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.items)

    @property
    def outcomes(self) -> list[tuple[Job, JOB_STATUS, TracebackRecord | None]]:
        """Final outcomes, as ``log_jobs`` takes them."""
        return [(f.job, f.status, f.record) for f in self.items if not f.is_retry]

    @property
    def retries(self) -> list[tuple[Job, timedelta, TracebackRecord | None]]:
        """Retries, as ``log_jobs`` takes them."""
        return [(f.job, f.delay or timedelta(0), f.record) for f in self.items if f.is_retry]

    @property
    def results(self) -> list[StoredResult]:
        """Results of the jobs that store one."""
        return [f.result for f in self.items if f.result is not None]

    @property
    def jobs(self) -> list[Job]:
        """Every job in the batch."""
        return [f.job for f in self.items]


class CompletionBuffer:
    """Collects this worker's job outcomes and retries and writes them in batches.

    Flushes every ~100 ms, at once when ``max_size`` outcomes wait or a retry
    is queued; the dispatcher may also :meth:`take` a batch to send with its
    next claim. :meth:`add` is thread-safe and never blocks on I/O.
    ``on_written(jobs)`` runs after each successful write (the worker stops
    heartbeating those jobs then, not before). ``current(job)`` gives the row as
    the worker last claimed it, whose ``updated`` guards the write.
    """

    def __init__(
        self,
        writer: _Writer,
        *,
        owner: QueueManagerId,
        max_size: int,
        current: Callable[[Job], Job] = lambda job: job,
        name: str = "pgqueue_sync-flusher",
        on_written: Callable[[list[Job]], None] = lambda jobs: None,
    ) -> None:
        self._writer = writer
        self._owner = owner
        self._current = current
        self._max_size = max_size
        self._on_written = on_written
        self._lock = threading.Lock()
        self._items: list[Finished] = []
        self._writing = 0
        # Set when a piggybacked batch was refused for its content: the flusher
        # must isolate the bad outcome before outcomes ride on claims again.
        self._isolate = False
        # Serialises flushes from the ticker and from stop() on another thread.
        self._flush_lock = threading.Lock()
        self._ticker = Ticker(self.flush, COMPLETION_FLUSH_INTERVAL, name=name)

    def start(self) -> None:
        """Start the flush thread."""
        self._ticker.start()

    def add(self, finished: Finished) -> None:
        """Queue an outcome or retry for the next write."""
        with self._lock:
            self._items.append(finished)
            urgent = finished.is_retry or len(self._items) >= self._max_size
        if urgent:  # a retry's row would otherwise wait, picked, for the next claim
            self._ticker.wake()

    def take(self) -> Batch:
        """Remove and return the queued outcomes, for a caller that writes them itself
        (the dispatcher sends them with its next claim): send :meth:`prepared`
        of it, then :meth:`written` (with what was sent) on success or
        :meth:`restore` (with what was taken) on failure."""
        with self._lock:
            if self._isolate:
                return Batch()
            items, self._items = self._items, []
        return Batch(items)

    def prepared(self, batch: Batch) -> Batch:
        """``batch`` as it must be sent: each job with the claim token current now
        (a different row only after the worker's own stale re-pick of it)."""
        items = []
        for f in batch.items:
            job = self._current(f.job)
            items.append(f if job is f.job else dataclasses.replace(f, job=job))
        return Batch(items)

    def restore(self, batch: Batch, *, isolate: bool = False) -> None:
        """Put back a batch that :meth:`take` returned but could not be written;
        ``isolate``: it was refused for its content, so only the flusher (which
        finds the bad outcome) may write outcomes until it has succeeded."""
        with self._lock:
            self._items[:0] = batch.items
            self._isolate = self._isolate or isolate
        if isolate:
            self._ticker.wake()

    def written(self, batch: Batch) -> None:
        """Report a batch from :meth:`take` as written."""
        if batch:
            self._on_written(batch.jobs)

    def pending(self) -> int:
        """Outcomes not yet written, counting those being written now."""
        with self._lock:
            return len(self._items) + self._writing

    @property
    def last_error(self) -> Exception | None:
        """What the flusher's last write raised; ``None`` once one succeeds or
        nothing is left to write."""
        return self._ticker.last_error

    def flush(self) -> Idle | None:
        """Write everything queued; on failure keep what is unwritten and raise.
        Returns :data:`~pgqueue_sync.worker.threads.IDLE` when nothing was queued."""
        with self._flush_lock:
            with self._lock:
                items, self._items = self._items, []
                self._writing = len(items)
            try:
                if items:
                    self._write_isolating(items)
                with self._lock:
                    self._isolate = False
            finally:
                with self._lock:
                    self._writing = 0
        return None if items else IDLE

    def _write_isolating(self, items: list[Finished]) -> None:
        # Chunks still to write, in order; a chunk refused for its content is
        # halved until the offending outcome stands alone.
        chunks = [items]
        while chunks:
            chunk = chunks.pop(0)
            try:
                sent = self._send(chunk)
            except DatabaseError as exc:
                retry_as = self._after_refusal(chunk, exc)
                if retry_as is None:
                    self._put_back([f for c in [chunk, *chunks] for f in c])
                    raise
                chunks[:0] = retry_as
            except BaseException:
                self._put_back([f for c in [chunk, *chunks] for f in c])
                raise
            else:
                self._on_written(sent.jobs)

    def _after_refusal(
        self, chunk: list[Finished], exc: DatabaseError
    ) -> list[list[Finished]] | None:
        """How to retry a chunk the database refused, or ``None`` to keep it for later."""
        if exc.transient or (exc.sqlstate or "")[:2] not in CONTENT_REJECTED_CLASSES:
            return None
        if len(chunk) > 1:
            middle = len(chunk) // 2
            return [chunk[:middle], chunk[middle:]]
        bare = chunk[0].without_details(exc.sqlstate or "refused")
        if bare is None:
            return None
        logger.error(
            "the database refused the outcome of job %d (%s); recording it without its "
            "traceback and result", chunk[0].job.id, exc,
        )
        return [[bare]]

    def _send(self, chunk: list[Finished]) -> Batch:
        batch = self.prepared(Batch(chunk))
        self._writer.log_jobs(
            batch.outcomes, results=batch.results, retries=batch.retries,
            queue_manager_id=self._owner,
        )
        return batch

    def _put_back(self, items: list[Finished]) -> None:
        with self._lock:
            self._items[:0] = items

    def stop(self) -> bool:
        """Stop the thread and flush what is left (a few attempts). True if nothing is lost."""
        self._ticker.stop()
        for attempt in range(SHUTDOWN_FLUSH_ATTEMPTS):
            try:
                self.flush()
                return True
            except Exception as exc:
                logger.warning("final flush attempt %d failed: %s", attempt + 1, exc)
                time.sleep(SHUTDOWN_RETRY_DELAY)
        logger.error("%d job outcomes could not be written at shutdown; their jobs are "
                     "re-run once their heartbeat is stale", self.pending())
        return False


class Heartbeats:
    """Keeps this worker's jobs alive from its own thread: each job's heartbeat is
    written every ``period`` (half its stale timeout), in batches flushed every
    ``tick`` seconds (± 20 %).

    ``running()`` returns a snapshot ``{job_id: (claimed_at, period)}`` with
    ``time.monotonic()`` claim times: every job claimed and not yet recorded
    (a finished job whose outcome waits to be written keeps beating). A failed
    write is retried with backoff. Writes are guarded by ``owner``.
    """

    def __init__(
        self,
        writer: _Writer,
        running: Callable[[], dict[int, tuple[float, float]]],
        *,
        owner: QueueManagerId,
        tick: float,
        name: str = "pgqueue_sync-heartbeat",
    ) -> None:
        self._writer = writer
        self._running = running
        self._owner = owner
        self._last: dict[int, float] = {}
        self._ticker = Ticker(self.flush, tick, name=name)

    def is_alive(self) -> bool:
        """True while the heartbeat thread runs."""
        return self._ticker.is_alive()

    def start(self) -> None:
        """Start the heartbeat thread."""
        self._ticker.start()

    def flush(self) -> Idle | None:
        """Write the heartbeats that are due; :data:`~.threads.IDLE` if none is."""
        now = time.monotonic()
        running = self._running()
        self._last = {job_id: t for job_id, t in self._last.items() if job_id in running}
        due = [
            job_id
            for job_id, (claimed_at, period) in running.items()
            if self._last.get(job_id, claimed_at) + period <= now
        ]
        if not due:
            return IDLE
        self._writer.update_heartbeat(due, queue_manager_id=self._owner)
        self._last.update(dict.fromkeys(due, now))
        return None

    def stop(self) -> None:
        """Stop the thread (bounded)."""
        self._ticker.stop()
