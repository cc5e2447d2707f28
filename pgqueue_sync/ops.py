"""``OpsQueries``: what an operator asks of a running queue, and log/statistics pruning.

Every method is one statement (one round trip) unless its docstring says
otherwise, and only :meth:`OpsQueries.prune`, the ``prune_*`` batches and
:meth:`OpsQueries.delete_schedules` write anything. No method ever touches a
row of the queue table. No threads live here; an instance is as thread-safe as
its driver.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from .drivers.base import Driver
from .models import Schedule, utc_now
from .settings import DBSettings, db_settings
from .sql.ops import OpsStatements
from .types import JOB_STATUS, JobId, QueueEntrypoint, QueueManagerId

logger = logging.getLogger(__name__)

#: ``stale``: a picked job whose heartbeat is older than this is reported (as ``pgq stale``).
DEFAULT_STALE_THRESHOLD = timedelta(seconds=300)
#: ``prune``: rows deleted per statement (each statement is its own short transaction).
DEFAULT_PRUNE_BATCH_SIZE = 10_000
#: Log statuses that mean a job failed.
FAILURE_STATUSES: tuple[JOB_STATUS, ...] = ("exception", "failed")
#: The throughput windows of a dashboard snapshot.
THROUGHPUT_WINDOWS = (timedelta(minutes=1), timedelta(minutes=5))

PrunableTable = Literal["log", "stats"]
# Below every id the sequences hand out; the prune walk starts after it.
_BEFORE_ANY_ID = -(2**63)


@dataclasses.dataclass(frozen=True)
class StaleJob:
    """A picked job whose heartbeat is older than the threshold (its worker may be gone)."""

    id: JobId
    priority: int
    queue_manager_id: QueueManagerId | None
    created: datetime
    updated: datetime
    heartbeat: datetime
    execute_after: datetime
    status: JOB_STATUS
    entrypoint: QueueEntrypoint
    attempts: int
    seconds_since_heartbeat: float


@dataclasses.dataclass(frozen=True)
class ActiveWorker:
    """A ``queue_manager_id`` holding picked jobs, with the age of their heartbeats."""

    queue_manager_id: QueueManagerId
    active_jobs: int
    entrypoints: list[QueueEntrypoint]
    oldest_heartbeat: datetime
    newest_heartbeat: datetime
    seconds_since_oldest_heartbeat: float
    seconds_since_newest_heartbeat: float


@dataclasses.dataclass(frozen=True)
class Backlog:
    """One entrypoint's rows in the queue table, by what they are waiting for.

    ``ready``: queued and eligible now; ``deferred``: queued with ``execute_after``
    in the future; ``held``: ``failed`` rows kept by ``on_failure="hold"``.
    ``oldest_created``/``oldest_age_seconds`` describe the oldest *ready* job
    (``None`` when nothing is ready).
    """

    entrypoint: QueueEntrypoint
    queued_count: int
    ready: int
    deferred: int
    picked: int
    held: int
    oldest_created: datetime | None
    oldest_age_seconds: float | None


@dataclasses.dataclass(frozen=True)
class Throughput:
    """Log transitions of one entrypoint within the last ``window_seconds``.

    ``enqueued`` counts ``queued`` rows (new jobs, retries and requeues);
    ``errors`` counts ``exception`` and ``failed``; ``canceled`` counts
    ``canceled`` and ``deleted``.
    """

    entrypoint: QueueEntrypoint
    window_seconds: float
    enqueued: int
    successful: int
    errors: int
    canceled: int

    @property
    def finished(self) -> int:
        """Jobs that reached an outcome in the window."""
        return self.successful + self.errors + self.canceled

    @property
    def per_second(self) -> float:
        """Finished jobs per second over the window."""
        return self.finished / self.window_seconds if self.window_seconds else 0.0


@dataclasses.dataclass(frozen=True)
class LogEntry:
    """One row of the log table, with its id; ``traceback`` is the stored JSON object."""

    id: int
    created: datetime
    job_id: JobId
    status: JOB_STATUS
    priority: int
    entrypoint: QueueEntrypoint
    traceback: dict[str, Any] | None
    aggregated: bool | None

    @property
    def error(self) -> str | None:
        """``"Type: message"`` from the traceback record, if there is one."""
        if not self.traceback:
            return None
        kind = str(self.traceback.get("exception_type") or "error")
        message = " ".join(str(self.traceback.get("exception_message") or "").split())
        return f"{kind}: {message}" if message else kind


@dataclasses.dataclass(frozen=True)
class PrunePlan:
    """What a prune of one table would delete: rows created before ``cutoff``."""

    table: PrunableTable
    cutoff: datetime
    count: int
    last_id: int | None


@dataclasses.dataclass(frozen=True)
class PruneBatch:
    """One committed prune statement: rows deleted and the highest id among them."""

    deleted: int
    last_id: int | None


@dataclasses.dataclass(frozen=True)
class PruneResult:
    """A finished prune of one table."""

    table: PrunableTable
    deleted: int
    batches: int
    planned: int

    @property
    def left(self) -> int:
        """Planned rows not deleted (locked by another session, or already gone)."""
        return max(self.planned - self.deleted, 0)


@dataclasses.dataclass(frozen=True)
class DashboardSnapshot:
    """Everything one dashboard frame shows, read at ``taken_at``."""

    taken_at: datetime
    backlog: list[Backlog]
    throughput: dict[int, list[Throughput]]  # by window, in seconds
    workers: list[ActiveWorker]
    failures: list[LogEntry]


class OpsQueries:
    """Operator queries over a :class:`~pgqueue_sync.drivers.Driver`.

    Example::

        ops = OpsQueries(SyncPsycopgDriver(conn))
        for job in ops.stale_jobs(timedelta(minutes=5)):
            print(job.id, job.entrypoint, round(job.seconds_since_heartbeat))

    ``settings`` defaults to the process-wide names read from ``PGQUEUER_*``.
    Database errors raise :class:`~pgqueue_sync.errors.DatabaseError` subclasses.
    """

    def __init__(self, driver: Driver, settings: DBSettings | None = None) -> None:
        self.driver = driver
        self.settings = settings or db_settings()
        self.statements = OpsStatements(self.settings)

    def stale_jobs(
        self, threshold: timedelta = DEFAULT_STALE_THRESHOLD, limit: int | None = 25
    ) -> list[StaleJob]:
        """Picked jobs whose heartbeat is older than ``threshold``, stalest first."""
        params = {"threshold": threshold, "limit": limit}
        return [StaleJob(**row) for row in self.driver.fetch(self.statements.stale_jobs, params)]

    def active_workers(self, limit: int | None = None) -> list[ActiveWorker]:
        """Workers (``queue_manager_id``) holding picked jobs, most jobs first.

        A worker that died without releasing its jobs still shows here, with
        heartbeats that only grow older, until its jobs are re-picked.
        """
        rows = self.driver.fetch(self.statements.active_workers, {"limit": limit})
        return [ActiveWorker(**row) for row in rows]

    def backlog(self, limit: int | None = None) -> list[Backlog]:
        """Per entrypoint: ready, deferred, picked and held jobs; by entrypoint name."""
        return [Backlog(**row) for row in self.driver.fetch(self.statements.backlog,
                                                            {"limit": limit})]

    def throughput(
        self, window: timedelta = THROUGHPUT_WINDOWS[0], limit: int | None = None
    ) -> list[Throughput]:
        """Transitions per entrypoint logged within the last ``window``, busiest first."""
        rows = self.driver.fetch(self.statements.throughput, {"window": window, "limit": limit})
        seconds = window.total_seconds()
        return [Throughput(window_seconds=seconds, **row) for row in rows]

    def recent_log(
        self,
        *,
        entrypoint: str | None = None,
        statuses: Sequence[JOB_STATUS] | None = None,
        job_id: int | None = None,
        limit: int | None = 50,
    ) -> list[LogEntry]:
        """Log rows, newest first; each given filter must match."""
        params = {
            "entrypoint": entrypoint,
            "statuses": list(statuses) if statuses else None,
            "job_id": job_id,
            "limit": limit,
        }
        return [_log_entry(row) for row in self.driver.fetch(self.statements.recent_log, params)]

    def recent_failures(self, limit: int | None = 10) -> list[LogEntry]:
        """The newest ``exception`` and ``failed`` log rows."""
        return self.recent_log(statuses=FAILURE_STATUSES, limit=limit)

    def dashboard(self, limit: int | None = 10) -> DashboardSnapshot:
        """One dashboard frame (several statements); ``limit`` caps each section."""
        taken_at = utc_now()
        return DashboardSnapshot(
            taken_at=taken_at,
            backlog=self.backlog(limit),
            throughput={
                int(w.total_seconds()): self.throughput(w, limit) for w in THROUGHPUT_WINDOWS
            },
            workers=self.active_workers(limit),
            failures=self.recent_failures(limit),
        )

    def delete_schedules(
        self, ids: Iterable[int] = (), entrypoints: Iterable[str] = ()
    ) -> list[Schedule]:
        """Delete schedules matching any of ``ids`` or ``entrypoints``; returns those deleted."""
        params = {"ids": [int(i) for i in ids], "entrypoints": list(entrypoints)}
        rows = self.driver.fetch(self.statements.delete_schedules, params)
        return sorted((Schedule.from_row(r) for r in rows), key=lambda s: s.id)

    # -- pruning ---------------------------------------------------------------------------

    def cutoff(self, older_than: timedelta) -> datetime:
        """The server's ``NOW() - older_than``: rows created before it are old."""
        cutoff: datetime = self._one(self.statements.server_now, {"age": older_than})["cutoff"]
        return cutoff

    def server_now(self) -> datetime:
        """The database server's clock (ages and "in 5m" are relative to it)."""
        now: datetime = self._one(self.statements.server_now, {"age": timedelta(0)})["now"]
        return now

    def prune_plan(self, table: PrunableTable, cutoff: datetime) -> PrunePlan:
        """Count the rows of ``log`` or ``stats`` created before ``cutoff`` (one read)."""
        row = self._one(self.statements.prune_plan(table), {"cutoff": cutoff})
        return PrunePlan(table=table, cutoff=cutoff, count=row["count"], last_id=row["last_id"])

    def prune_log_batch(
        self, cutoff: datetime, *, after: int, last_id: int, batch_size: int
    ) -> PruneBatch:
        """Delete up to ``batch_size`` log rows created before ``cutoff``, ids in
        ``(after, last_id]``, in one statement (its own transaction under autocommit)."""
        return self._prune_batch("log", cutoff, after, last_id, batch_size)

    def prune_statistics_batch(
        self, cutoff: datetime, *, after: int, last_id: int, batch_size: int
    ) -> PruneBatch:
        """As :meth:`prune_log_batch`, for the statistics table."""
        return self._prune_batch("stats", cutoff, after, last_id, batch_size)

    def prune(
        self,
        plan: PrunePlan,
        *,
        batch_size: int = DEFAULT_PRUNE_BATCH_SIZE,
        on_batch: Callable[[int], None] = lambda deleted: None,
    ) -> PruneResult:
        """Delete what ``plan`` counted, ``batch_size`` rows per statement, oldest ids first.

        Each batch commits on its own (on an autocommit driver), so no lock is
        held between batches; rows locked by another session are skipped, not
        waited for. ``on_batch`` gets each batch's count (e.g. a progress bar).
        Stops when a batch finds nothing left. Never touches the queue table.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        deleted = batches = 0
        after = _BEFORE_ANY_ID
        while plan.count and plan.last_id is not None:
            batch = self._prune_batch(plan.table, plan.cutoff, after, plan.last_id, batch_size)
            if not batch.deleted or batch.last_id is None:
                break
            deleted += batch.deleted
            batches += 1
            after = batch.last_id
            on_batch(batch.deleted)
            logger.debug("pruned %d rows from %r (up to id %d)", batch.deleted, plan.table, after)
        logger.info("pruned %d rows from %r in %d batches", deleted, plan.table, batches)
        return PruneResult(table=plan.table, deleted=deleted, batches=batches, planned=plan.count)

    def _prune_batch(
        self, table: PrunableTable, cutoff: datetime, after: int, last_id: int, batch_size: int
    ) -> PruneBatch:
        params = {"cutoff": cutoff, "after": after, "last_id": last_id, "batch": batch_size}
        row = self._one(self.statements.prune_batch(table), params)
        return PruneBatch(deleted=row["deleted"], last_id=row["last"])

    def _one(self, query: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        return self.driver.fetch(query, params)[0]


def _log_entry(row: Mapping[str, Any]) -> LogEntry:
    traceback = row["traceback"]
    return LogEntry(
        id=row["id"],
        created=row["created"],
        job_id=JobId(row["job_id"]),
        status=row["status"],
        priority=row["priority"],
        entrypoint=QueueEntrypoint(row["entrypoint"]),
        traceback=dict(traceback) if isinstance(traceback, Mapping) else None,
        aggregated=row["aggregated"],
    )

