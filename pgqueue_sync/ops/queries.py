"""``OpsQueries``: what an operator asks of a running queue, and log/statistics pruning.

Every method is one statement (one round trip) unless its docstring says
otherwise, and only :meth:`OpsQueries.prune`, the ``prune_*`` batches and
:meth:`OpsQueries.delete_schedules` write anything. No method ever touches a
row of the queue table. No threads live here; an instance is as thread-safe as
its driver.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from .. import options
from ..drivers.base import Driver
from ..models import Schedule, utc_now
from ..settings import DBSettings, db_settings
from ..sql.ops import (
    BEFORE_ANY_ID,
    WORKER_SESSION_ID_PATTERN,
    WORKER_SESSION_OID_PATTERN,
    WORKER_SESSION_PATTERN,
    OpsStatements,
)
from ..types import JOB_STATUS
from .records import (
    ActiveWorker,
    Backlog,
    DashboardSnapshot,
    Latency,
    LiveWorker,
    LogEntry,
    PrunableTable,
    PruneBatch,
    PrunePlan,
    PruneResult,
    StaleJob,
    Throughput,
    Unserved,
    latency_from_row,
    live_worker_from_row,
    log_entry_from_row,
)

logger = logging.getLogger(__name__)

#: ``stale``: a picked job whose heartbeat is older than this is reported: by default the
#: workers' own ``heartbeat_timeout``, past which any worker re-claims the job.
DEFAULT_STALE_THRESHOLD = options.HEARTBEAT_TIMEOUT
#: ``prune``: rows deleted per statement (each statement is its own short transaction).
DEFAULT_PRUNE_BATCH_SIZE = 10_000
#: Log statuses that mean a job failed.
FAILURE_STATUSES: tuple[JOB_STATUS, ...] = ("exception", "failed")
#: The throughput windows of a dashboard snapshot.
THROUGHPUT_WINDOWS = (timedelta(minutes=1), timedelta(minutes=5))
#: The log window of the dashboard's wait/run percentiles and of its "no worker" flag.
LATENCY_WINDOW = timedelta(minutes=5)
#: "No worker": a job ready at least this long. An idle worker polls at least every
#: ``dequeue_timeout`` (and PgQueuer's finds a job whose delay ran out only then).
UNSERVED_GRACE = options.DEQUEUE_TIMEOUT


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
        self,
        threshold: timedelta = DEFAULT_STALE_THRESHOLD,
        limit: int | None = 25,
        *,
        heartbeat_timeout: timedelta = options.HEARTBEAT_TIMEOUT,
    ) -> list[StaleJob]:
        """Picked jobs whose heartbeat is older than ``threshold``, stalest first.

        ``repickable`` marks those older than ``heartbeat_timeout`` (the workers'),
        which any worker handling their entrypoint re-claims. An entrypoint
        registered with its own ``retry_timer`` is re-claimed after that instead.
        """
        params = {"threshold": threshold, "limit": limit, "heartbeat_timeout": heartbeat_timeout}
        return [StaleJob(**row) for row in self.driver.fetch(self.statements.stale_jobs, params)]

    def live_workers(
        self,
        limit: int | None = None,
        *,
        heartbeat_timeout: timedelta = options.HEARTBEAT_TIMEOUT,
    ) -> list[LiveWorker]:
        """Workers of this queue: connected ones (idle included) from ``pg_stat_activity``,
        and every ``queue_manager_id`` holding picked jobs; most jobs first, then
        connected before the rest.

        Only sessions of the current database named by
        :func:`~pgqueue_sync.ops.sessions.label_worker_session`
        for this queue table count. ``heartbeat_timeout`` tells ``holding`` from
        ``stale`` for workers seen only by their jobs (see :class:`LiveWorker`).
        """
        params = {
            "limit": limit,
            "heartbeat_timeout": heartbeat_timeout,
            "queue_regclass": self.statements.queue_regclass,
            "name_pattern": WORKER_SESSION_PATTERN,
            "id_pattern": WORKER_SESSION_ID_PATTERN,
            "oid_pattern": WORKER_SESSION_OID_PATTERN,
        }
        rows = self.driver.fetch(self.statements.live_workers, params)
        return [live_worker_from_row(row) for row in rows]

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

    def latency(
        self, window: timedelta = LATENCY_WINDOW, limit: int | None = None
    ) -> list[Latency]:
        """Queue wait and run time p50/p95 per entrypoint over the last ``window``, from
        the log (see :class:`Latency`); entrypoints with the most rows first."""
        rows = self.driver.fetch(self.statements.latency, {"window": window, "limit": limit})
        seconds = window.total_seconds()
        return [latency_from_row(row, seconds) for row in rows]

    def unserved(
        self,
        window: timedelta = LATENCY_WINDOW,
        limit: int | None = None,
        *,
        grace: timedelta = UNSERVED_GRACE,
        heartbeat_timeout: timedelta = options.HEARTBEAT_TIMEOUT,
    ) -> list[Unserved]:
        """Entrypoints with work ready for longer than ``grace`` and no job of theirs
        picked within ``window`` nor running (see :class:`Unserved`); longest waiting first."""
        params = {"window": window, "limit": limit, "grace": grace,
                  "heartbeat_timeout": heartbeat_timeout}
        seconds = window.total_seconds()
        return [Unserved(window_seconds=seconds, **row)
                for row in self.driver.fetch(self.statements.unserved, params)]

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
        rows = self.driver.fetch(self.statements.recent_log, params)
        return [log_entry_from_row(row) for row in rows]

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
            workers=self.live_workers(limit),
            failures=self.recent_failures(limit),
            latency=self.latency(LATENCY_WINDOW, limit),
            unserved=self.unserved(LATENCY_WINDOW, limit),
        )

    def delete_schedules(
        self, ids: Iterable[int] = (), entrypoints: Iterable[str] = ()
    ) -> list[Schedule]:
        """Delete schedules matching any of ``ids`` or ``entrypoints``; returns those deleted."""
        params = {"ids": [int(i) for i in ids], "entrypoints": list(entrypoints)}
        rows = self.driver.fetch(self.statements.delete_schedules, params)
        return sorted((Schedule.from_row(r) for r in rows), key=lambda s: s.id)

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
        after = BEFORE_ANY_ID
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
