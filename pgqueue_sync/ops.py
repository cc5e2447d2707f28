"""``OpsQueries``: what an operator asks of a running queue, and log/statistics pruning.

Every method is one statement (one round trip) unless its docstring says
otherwise, and only :meth:`OpsQueries.prune`, the ``prune_*`` batches and
:meth:`OpsQueries.delete_schedules` write anything. No method ever touches a
row of the queue table. No threads live here; an instance is as thread-safe as
its driver.

:func:`label_worker_session` is the worker's side of :meth:`OpsQueries.live_workers`:
it names the worker's own LISTEN connection so that the session can be found in
``pg_stat_activity`` while the worker runs, idle or not.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg

from . import options
from .drivers.base import Driver
from .models import Schedule, utc_now
from .settings import DBSettings, db_settings
from .sql.ops import (
    BEFORE_ANY_ID,
    LABEL_WORKER_SESSION,
    WORKER_SESSION_ID_PATTERN,
    WORKER_SESSION_OID_PATTERN,
    WORKER_SESSION_PATTERN,
    WORKER_SESSION_PREFIX,
    OpsStatements,
)
from .types import JOB_STATUS, JobId, QueueEntrypoint, QueueManagerId

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
#: How a worker's connection is seen (see :class:`LiveWorker`).
WorkerSeen = Literal["connected", "holding", "stale"]

PrunableTable = Literal["log", "stats"]


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
    #: The heartbeat is older than the workers' heartbeat timeout as well: any
    #: worker that handles the entrypoint re-claims the job (keeping its attempts).
    repickable: bool = False


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
class WorkerSession:
    """A worker's open database session, from ``pg_stat_activity`` (its LISTEN connection).

    ``client_addr``, ``client_hostname``, ``client_port``, ``backend_start`` and
    ``state`` are ``None`` when the reading role may not see them (another
    role's session without ``pg_read_all_stats``). ``client_port`` is -1 for a
    Unix socket. ``state`` is that connection's (``idle`` while it waits for
    notifications), not whether the worker runs jobs.
    """

    pid: int
    application_name: str
    client_addr: str | None
    client_hostname: str | None
    client_port: int | None
    backend_start: datetime | None
    seconds_connected: float | None
    state: str | None

    @property
    def host(self) -> str | None:
        """Host name, else address, else ``local`` for a Unix socket (``None``: hidden)."""
        if self.client_hostname or self.client_addr:
            return self.client_hostname or self.client_addr
        return "local" if self.client_port == -1 else None


@dataclasses.dataclass(frozen=True)
class LiveWorker:
    """A worker, seen by its session or by the jobs it holds (or both).

    ``seen``: ``connected`` when a session named ``pgq-sync worker <id> <oid>``
    is open (a pgqueue_sync worker, busy or idle); ``holding`` when it has no
    such session but holds picked jobs with a heartbeat younger than the
    heartbeat timeout (a PgQueuer worker, which does not name its sessions);
    ``stale`` when its newest heartbeat is older than that (the worker is most
    likely gone, and its jobs are re-claimed by any worker). ``entrypoints`` and
    ``job_ids`` are those of the jobs it holds: an idle worker holds none, and
    which entrypoints it handles is not stored anywhere in the database.
    """

    queue_manager_id: QueueManagerId
    seen: WorkerSeen
    sessions: list[WorkerSession]
    active_jobs: int
    job_ids: list[JobId]
    entrypoints: list[QueueEntrypoint]
    oldest_heartbeat: datetime | None
    newest_heartbeat: datetime | None
    seconds_since_oldest_heartbeat: float | None
    seconds_since_newest_heartbeat: float | None


@dataclasses.dataclass(frozen=True)
class Latency:
    """One entrypoint's queue wait and run time over the last ``window_seconds``, from the log.

    ``picked`` counts the picks logged in the window (re-picks of stale jobs
    included). Wait is measured per pick whose previous log row of the job is
    ``queued`` (``waited`` of them): it includes any delay the job was enqueued
    with and any retry backoff, since the log does not record ``execute_after``.
    Run time is measured per outcome (``successful``, ``exception``, ``failed``)
    that follows a ``picked`` row (``finished`` of them); attempts that end in a
    retry are not counted. Percentiles are ``percentile_cont`` (interpolated), in
    seconds, ``None`` when nothing was measured.
    """

    entrypoint: QueueEntrypoint
    window_seconds: float
    picked: int
    waited: int
    wait_p50: float | None
    wait_p95: float | None
    finished: int
    run_p50: float | None
    run_p95: float | None


@dataclasses.dataclass(frozen=True)
class Unserved:
    """An entrypoint whose work waits while no worker takes it.

    It has ``ready`` jobs, the oldest ready for ``seconds_ready`` (more than the
    grace, 30 s by default), no job of it was picked within the last
    ``window_seconds`` and none is running (no picked row with a fresh
    heartbeat). Either no running worker handles it, or every worker that does
    is busy with other work or stuck.
    """

    entrypoint: QueueEntrypoint
    ready: int
    ready_since: datetime
    seconds_ready: float
    window_seconds: float


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
    workers: list[LiveWorker]
    failures: list[LogEntry]
    latency: list[Latency]
    unserved: list[Unserved]


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

        Only sessions of the current database named by :func:`label_worker_session`
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
        return [_live_worker(row) for row in self.driver.fetch(self.statements.live_workers,
                                                                params)]

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
        return [_latency(row, seconds) for row in rows]

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


def label_worker_session(
    connection: psycopg.Connection[Any],
    queue_manager_id: uuid.UUID,
    settings: DBSettings | None = None,
) -> str | None:
    """Name ``connection``'s session after a worker, for :meth:`OpsQueries.live_workers`.

    Sets ``application_name`` to ``pgq-sync worker <queue_manager_id> <oid>`` for
    the rest of the session (``<oid>``: the queue table's, resolved by the
    server; 52 + up to 11 bytes, within PostgreSQL's 63). Meant for a connection
    the worker owns: the name stays until the session ends. Best effort: a
    failure is logged and returns ``None``; the session just goes unnamed.
    """
    names = OpsStatements(settings or db_settings())
    params = {"label": f"{WORKER_SESSION_PREFIX}{queue_manager_id}",
              "queue_regclass": names.queue_regclass}
    try:
        row = connection.execute(LABEL_WORKER_SESSION, params).fetchone()
    except psycopg.Error as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        logger.warning("could not set application_name on the worker's connection: %s",
                       first_line)
        return None
    return str(row[0]) if row else None


def _live_worker(row: Mapping[str, Any]) -> LiveWorker:
    pids = row["pids"] or []
    columns = ("application_names", "client_addrs", "client_hostnames", "client_ports",
               "backend_starts", "seconds_connected", "states")
    values = [row[c] or [None] * len(pids) for c in columns]
    sessions = [
        WorkerSession(pid, name, addr, hostname, port, started, connected, state)
        for pid, name, addr, hostname, port, started, connected, state in zip(
            pids, *values, strict=True)
    ]
    return LiveWorker(
        queue_manager_id=row["queue_manager_id"],
        seen=row["seen"],
        sessions=sessions,
        active_jobs=row["active_jobs"],
        job_ids=[JobId(i) for i in row["job_ids"]],
        entrypoints=[QueueEntrypoint(e) for e in row["entrypoints"]],
        oldest_heartbeat=row["oldest_heartbeat"],
        newest_heartbeat=row["newest_heartbeat"],
        seconds_since_oldest_heartbeat=row["seconds_since_oldest_heartbeat"],
        seconds_since_newest_heartbeat=row["seconds_since_newest_heartbeat"],
    )


def _latency(row: Mapping[str, Any], window_seconds: float) -> Latency:
    wait = row["wait"] or [None, None]
    run = row["run"] or [None, None]
    return Latency(
        entrypoint=QueueEntrypoint(row["entrypoint"]),
        window_seconds=window_seconds,
        picked=row["picked"],
        waited=row["waited"],
        wait_p50=wait[0],
        wait_p95=wait[1],
        finished=row["finished"],
        run_p50=run[0],
        run_p95=run[1],
    )


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

