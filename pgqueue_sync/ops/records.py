"""What the operator queries return: one frozen dataclass per kind of answer.

Each record is built from one row of an :class:`~pgqueue_sync.sql.ops.OpsStatements`
statement, directly (``Record(**row)``) or by a ``*_from_row`` function here.
No I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from ..types import JOB_STATUS, JobId, QueueEntrypoint, QueueManagerId

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



def live_worker_from_row(row: Mapping[str, Any]) -> LiveWorker:
    """A :class:`LiveWorker` from a ``live_workers`` row (its sessions as parallel arrays)."""
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


def latency_from_row(row: Mapping[str, Any], window_seconds: float) -> Latency:
    """A :class:`Latency` from a ``latency`` row (percentiles as ``[p50, p95]`` arrays)."""
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


def log_entry_from_row(row: Mapping[str, Any]) -> LogEntry:
    """A :class:`LogEntry` from a log row (a traceback that is not an object is dropped)."""
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

