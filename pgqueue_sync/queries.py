"""``Queries``: one blocking method per queue operation, PgQueuer's names in sync form.

No threads live here. Each method is one statement (one round trip) unless its
docstring says otherwise, and is safe to call from several threads at once when
the driver is (both psycopg drivers are).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from psycopg import sql
from psycopg.types.json import Jsonb

from .drivers.base import Driver, check_reply
from .errors import (
    ConfigurationError,
    DatabaseError,
    DeadlockDetected,
    DuplicateJobError,
    UniqueViolation,
)
from .models import (
    CancellationEvent,
    HealthCheckEvent,
    Job,
    Log,
    LogStatistics,
    QueueStatistics,
    RetentionStep,
    Schedule,
    TableHealth,
    TracebackRecord,
    dump_event,
    utc_now,
)
from .options import HEARTBEAT_TIMEOUT, duration, key_text
from .settings import DBSettings, db_settings
from .sql import results as results_sql
from .sql import upkeep as upkeep_sql
from .sql.arrays import bytea_array, int_array, text_array
from .sql.ops import BEFORE_ANY_ID, RETENTION_GATE, OpsStatements, retention_lock_key
from .sql.statements import Statements, finish_steps
from .tracing import TracingProtocol, get_tracer, is_active, merge_publish_headers
from .types import (
    JOB_STATUS,
    JOB_STATUSES,
    ON_CONFLICT_MODES,
    Channel,
    CronEntrypoint,
    CronExpression,
    HealthCheckId,
    JobId,
    OnConflict,
    QueueManagerId,
    RetentionTable,
    ScheduleId,
)

if TYPE_CHECKING:
    from .results import StoredResult

_T = TypeVar("_T")
#: Log rows folded into statistics per transaction, and transactions per call.
AGGREGATE_CHUNK = 20_000
AGGREGATE_MAX_CHUNKS = 100
logger = logging.getLogger(__name__)

_INT32 = (-(2**31), 2**31 - 1)
JobOutcome = tuple[Job | JobId | int, JOB_STATUS, TracebackRecord | None]
#: A retry to record: the job, its delay and the record of why.
JobRetry = tuple[Job | JobId | int, timedelta, TracebackRecord | None]
ExecuteAfter = timedelta | datetime | None
Headers = Mapping[str, Any] | None

#: What :meth:`Queries.run_bulk` can do to many jobs at once.
BulkAction = Literal["requeue", "cancel", "purge"]
BULK_ACTIONS: tuple[BulkAction, ...] = ("requeue", "cancel", "purge")
#: The statuses each bulk action selects: held jobs are requeued, queued and
#: picked ones cancelled, queued ones purged.
BULK_STATUSES: Mapping[BulkAction, tuple[JOB_STATUS, ...]] = {
    "requeue": ("failed",),
    "cancel": ("queued", "picked"),
    "purge": ("queued",),
}
#: Rows per statement of a bulk action; each batch is its own short transaction.
BULK_BATCH_SIZE = 1_000
#: Passes over the selection a cancel or purge makes while rows another session
#: held locked (a claim, a heartbeat) are left; requeue makes one (see run_bulk).
BULK_SWEEPS = 3
#: Seconds between two such passes, for the other session to finish.
BULK_SWEEP_PAUSE = 0.1
#: Ids a :class:`BulkResult` keeps (the lowest ones); the counts are always complete.
BULK_REPORTED_IDS = 100
#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
NOTIFY_PAYLOAD_LIMIT = 7_999


@dataclasses.dataclass(frozen=True)
class EntrypointExecutionParameter:
    """What the claim needs to know about one entrypoint.

    ``concurrency_limit``: fleet-wide limit (0 = none). ``stale_after``: this
    entrypoint's own stale-job timeout (``None``: the worker's heartbeat timeout).
    """

    concurrency_limit: int = 0
    stale_after: timedelta | None = None


@dataclasses.dataclass(frozen=True)
class PollState:
    """What the idle dispatcher needs to choose its wait."""

    eligible: bool
    eta: timedelta | None
    queued: bool
    #: Time until the next picked job of these entrypoints goes stale (may be
    #: negative: already stale), or ``None`` when none is picked.
    stale_eta: timedelta | None = None


@dataclasses.dataclass(frozen=True)
class BulkPlan:
    """What a bulk action would change, counted when it was planned.

    ``entrypoints`` is ``None`` for every entrypoint. ``last_id`` is the highest
    matching id then (``None``: nothing matched); :meth:`Queries.run_bulk`
    stops there, so jobs enqueued later are never touched.
    """

    action: BulkAction
    entrypoints: tuple[str, ...] | None
    count: int
    last_id: JobId | None

    @property
    def statuses(self) -> tuple[JOB_STATUS, ...]:
        """The statuses the action selects."""
        return BULK_STATUSES[self.action]


@dataclasses.dataclass(frozen=True)
class BulkResult:
    """What a bulk action did.

    ``done`` jobs were changed in ``batches`` statements; ``by_entrypoint``
    splits ``done``; ``ids`` holds the lowest of their ids (at most
    :data:`BULK_REPORTED_IDS`), ascending. ``kept``: held jobs a requeue left
    held because an active job holds their ``dedupe_key``. ``busy``: matching
    jobs left because another session kept them locked through every pass.
    """

    action: BulkAction
    done: int
    batches: int
    by_entrypoint: Mapping[str, int]
    ids: tuple[JobId, ...]
    kept: int = 0
    busy: int = 0


@dataclasses.dataclass(frozen=True)
class BulkRow:
    """One row a bulk batch locked: ``done`` when the batch acted on it."""

    id: int
    entrypoint: str | None
    done: bool


@dataclasses.dataclass(frozen=True)
class ErrorRecord:
    """The newest failure record logged for a job: the log row's status and time, and
    the exception type and message it stored."""

    job_id: JobId
    logged: datetime
    status: JOB_STATUS
    record: TracebackRecord

    @property
    def summary(self) -> str:
        """``"Type: message"`` on one line (``"Type"`` when the message is empty)."""
        message = " ".join(self.record.exception_message.split())
        kind = self.record.exception_type or "error"
        return f"{kind}: {message}" if message else kind


class Queries:
    """The queue's operations over a :class:`~pgqueue_sync.drivers.Driver`.

    Example::

        conn = psycopg.connect(dsn, autocommit=True)
        queries = Queries(SyncPsycopgDriver(conn))
        [job_id] = queries.enqueue("send_email", b'{"to": "a@example.com"}')

    ``settings`` defaults to the process-wide names read from ``PGQUEUER_*``;
    ``tracer`` to the process-wide tracer (:mod:`pgqueue_sync.tracing`).
    """

    def __init__(
        self,
        driver: Driver,
        *,
        settings: DBSettings | None = None,
        tracer: TracingProtocol | None = None,
    ) -> None:
        self.driver = driver
        self.settings = settings or db_settings()
        self.statements = Statements(self.settings)
        self.tracer = tracer

    @classmethod
    def from_connection(cls, connection: Any, *, settings: DBSettings | None = None) -> Queries:
        """Queries over one psycopg connection (see :class:`SyncPsycopgDriver`)."""
        from .drivers.psycopg import SyncPsycopgDriver

        return cls(SyncPsycopgDriver(connection), settings=settings)

    @classmethod
    def from_pool(cls, pool: Any, *, settings: DBSettings | None = None) -> Queries:
        """Queries over a ``psycopg_pool.ConnectionPool``."""
        from .drivers.psycopg import SyncPsycopgPoolDriver

        return cls(SyncPsycopgPoolDriver(pool), settings=settings)

    # -- enqueue ---------------------------------------------------------------------------

    @overload
    def enqueue(
        self,
        entrypoint: str | Sequence[str],
        payload: bytes | None | Sequence[bytes | None] = ...,
        priority: int | Sequence[int] = ...,
        execute_after: ExecuteAfter | Sequence[ExecuteAfter] = ...,
        dedupe_key: str | None | Sequence[str | None] = ...,
        headers: Headers | Sequence[Headers] = ...,
        *,
        on_conflict: Literal["raise", "update_priority"] = ...,
    ) -> list[JobId]: ...

    @overload
    def enqueue(
        self,
        entrypoint: str | Sequence[str],
        payload: bytes | None | Sequence[bytes | None] = ...,
        priority: int | Sequence[int] = ...,
        execute_after: ExecuteAfter | Sequence[ExecuteAfter] = ...,
        dedupe_key: str | None | Sequence[str | None] = ...,
        headers: Headers | Sequence[Headers] = ...,
        *,
        on_conflict: Literal["skip"],
    ) -> list[JobId | None]: ...

    def enqueue(
        self,
        entrypoint: str | Sequence[str],
        payload: bytes | None | Sequence[bytes | None] = None,
        priority: int | Sequence[int] = 0,
        execute_after: ExecuteAfter | Sequence[ExecuteAfter] = None,
        dedupe_key: str | None | Sequence[str | None] = None,
        headers: Headers | Sequence[Headers] = None,
        *,
        on_conflict: OnConflict = "raise",
    ) -> list[JobId] | list[JobId | None]:
        """Insert one job (scalar arguments) or a batch (lists of equal length) atomically.

        ``execute_after`` is a delay (``timedelta``, from the database's ``NOW()``)
        or an aware ``datetime``. ``dedupe_key`` is unique among queued and picked
        jobs; ``on_conflict`` decides what a duplicate does:

        * ``"raise"``: :class:`DuplicateJobError`, and nothing of the batch is inserted;
        * ``"skip"``: the duplicate is left out and its position in the result is ``None``;
        * ``"update_priority"``: the existing job keeps its id and gets the higher priority.

        Returns the job ids in input order. On a connection inside the caller's
        transaction the jobs (and the workers' wake-up) appear at commit; a
        duplicate in ``"raise"`` mode then aborts that transaction, as any
        integrity error does.
        """
        rows = _normalize_batch(entrypoint, payload, priority, execute_after, dedupe_key, headers)
        _check_conflict_mode(on_conflict, rows["dedupe_key"])
        _trace_publish(self.tracer, rows)
        params = {**_enqueue_params(rows), "table": self.statements.queue_table_text}
        try:
            result = self.driver.fetch(self.statements.enqueue(on_conflict), params)
        except UniqueViolation as exc:
            if exc.constraint_name == self.settings.index_name("unique_dedupe_key"):
                raise DuplicateJobError(rows["dedupe_key"]) from exc
            raise
        ids = [None if r["id"] is None else JobId(r["id"]) for r in result]
        if on_conflict == "skip":
            return ids
        return [JobId(i) for i in ids if i is not None]

    # -- dequeue ---------------------------------------------------------------------------

    def dequeue(
        self,
        batch_size: int,
        entrypoints: Mapping[str, EntrypointExecutionParameter | int],
        queue_manager_id: QueueManagerId | uuid.UUID,
        global_concurrency_limit: int | None,
        heartbeat_timeout: timedelta,
        *,
        completed: Sequence[JobOutcome] = (),
        results: Sequence[StoredResult] = (),
        retries: Sequence[JobRetry] = (),
        include_stale: bool = True,
    ) -> list[Job]:
        """Claim up to ``batch_size`` jobs for ``queue_manager_id`` and log them ``picked``.

        Jobs come in ``priority DESC, id ASC`` order, each entrypoint scanned
        separately. Honours each entrypoint's fleet-wide ``concurrency_limit``
        (seats in ``slot``), the worker's own budget ``global_concurrency_limit``
        (``None``/0: none), and re-picks ``picked`` jobs whose heartbeat is older
        than ``heartbeat_timeout``. Losing a seat race to another worker returns
        an empty list, never an error.

        ``completed`` and ``retries`` (the :meth:`log_jobs` arguments) record
        this worker's finished jobs in the same statement, saving a round trip
        per cycle, guarded as ``log_jobs(..., queue_manager_id=...)`` is; if
        the claim loses a seat race they are still recorded, by a separate
        statement. ``results`` (see :meth:`log_jobs`) are stored with them.
        ``include_stale=False`` leaves stale re-picks to a later claim (the
        worker looks for them every few seconds, see :meth:`Statements.dequeue`).
        """
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")

        def finish_alone() -> None:
            self.log_jobs(completed, results=results, retries=retries,
                          queue_manager_id=queue_manager_id)

        if not entrypoints:
            finish_alone()
            return []
        registered = _registered_params(entrypoints)
        budget = global_concurrency_limit or None
        finish = self._finish_params(completed, retries, queue_manager_id)
        stored = _result_literals(results) if finish else {}
        query = self.statements.dequeue(
            capacity=registered["capacity"], budget=budget is not None,
            finish=_steps(finish), results=bool(stored), stale=include_stale,
        )
        params = {
            **finish,
            **stored,
            **registered,
            "batch": batch_size,
            "queue_manager_id": queue_manager_id,
            "budget": budget,
            "heartbeat_timeout": heartbeat_timeout,
        }
        try:
            rows = self.driver.fetch(query, params)
            check_reply(rows, query)  # psycopg drivers check (and drop) themselves
        except UniqueViolation as exc:
            if exc.constraint_name != self.settings.index_name("picked_slot_idx"):
                raise
            logger.debug("dequeue lost a concurrency seat race; treating as an empty batch")
            finish_alone()
            return []
        except DeadlockDetected:
            logger.debug("dequeue deadlocked with another claim; treating as an empty batch")
            finish_alone()
            return []
        except DatabaseError as exc:
            if not _results_failed(exc, stored):
                raise
            # Outcomes matter more than results: claim and record them without.
            _log_lost_results(exc, results)
            return self.dequeue(
                batch_size, entrypoints, queue_manager_id, global_concurrency_limit,
                heartbeat_timeout, completed=completed, retries=retries,
                include_stale=include_stale,
            )
        return [Job.from_row(row) for row in rows]

    # -- completion ------------------------------------------------------------------------

    def log_jobs(
        self,
        job_status: Iterable[JobOutcome],
        *,
        results: Sequence[StoredResult] = (),
        retries: Sequence[JobRetry] = (),
        queue_manager_id: QueueManagerId | uuid.UUID | None = None,
    ) -> list[JobId]:
        """Record outcomes in one statement: delete (or hold as ``failed``) and log.

        Jobs whose row is already gone (e.g. cancelled meanwhile) are skipped
        without a log row. Returns the ids that were logged.

        ``retries`` put jobs back to ``queued`` after their delay with
        ``attempts + 1`` and a ``queued`` log row carrying the record, in the
        same statement. With ``queue_manager_id`` (a worker recording its own
        jobs) only rows still ``picked`` by that worker are touched, so sending
        the same outcomes twice (after a lost reply) changes nothing. Held and
        retried jobs wake idle workers with a ``table_changed_event``.

        ``results`` (:class:`~pgqueue_sync.results.StoredResult`, from a worker
        storing results) go into the opt-in results table in the same
        statement, for the jobs that were logged. Should storing them fail
        (e.g. the table was dropped), the outcomes are recorded without them
        and the loss is logged as an error.
        """
        params = self._finish_params(job_status, retries, queue_manager_id)
        if not params:
            return []
        guarded = queue_manager_id is not None
        steps = _steps(params)
        stored = _result_literals(results)
        if not stored:
            rows = self.driver.fetch(self.statements.log_jobs(steps, guarded=guarded), params)
            return [JobId(r["job_id"]) for r in rows]
        try:
            query = self.statements.log_jobs(steps, guarded=guarded, results=True)
            rows = self.driver.fetch(query, {**params, **stored})
        except DatabaseError as exc:
            if not _results_failed(exc, stored):
                raise
            _log_lost_results(exc, results)
            rows = self.driver.fetch(self.statements.log_jobs(steps, guarded=guarded), params)
        return [JobId(r["job_id"]) for r in rows]

    def _finish_params(
        self,
        job_status: Iterable[JobOutcome],
        retries: Iterable[JobRetry],
        queue_manager_id: QueueManagerId | uuid.UUID | None,
    ) -> dict[str, Any]:
        literals = _outcome_literals(job_status, retries)
        if not literals:
            return {}
        return {
            **literals,
            "steps": literals.pop("steps"),
            "queue_manager_id": queue_manager_id,
            "channel": self.settings.channel,
            "table": self.settings.bare_name("queue_table"),
        }

    def retry_job(
        self,
        job: Job | JobId | int,
        delay: timedelta,
        traceback_record: TracebackRecord | None = None,
        *,
        queue_manager_id: QueueManagerId | uuid.UUID | None = None,
    ) -> bool:
        """Re-queue one job after ``delay`` with ``attempts + 1``; False if the row is gone
        (or, with ``queue_manager_id``, no longer picked by that worker)."""
        logged = self.log_jobs((), retries=[(job, delay, traceback_record)],
                               queue_manager_id=queue_manager_id)
        return bool(logged)

    def release_jobs(
        self,
        records: Mapping[JobId, TracebackRecord] | Mapping[int, TracebackRecord],
        queue_manager_id: QueueManagerId | uuid.UUID,
    ) -> list[JobId]:
        """Put this worker's picked jobs back to ``queued`` now (e.g. at a bounded shutdown).

        ``attempts`` is unchanged; each job gets a ``queued`` log row carrying its
        record, which says why. Jobs no longer picked by this worker are skipped.
        """
        if not records:
            return []
        params = {
            "ids": [int(i) for i in records],
            "tracebacks": [Jsonb(r.to_json()) for r in records.values()],
            "queue_manager_id": queue_manager_id,
        }
        params["channel"] = self.settings.channel
        params["table"] = self.settings.bare_name("queue_table")
        rows = self.driver.fetch(self.statements.release_jobs, params)
        return [JobId(r["job_id"]) for r in rows]

    def requeue_jobs(self, ids: Iterable[int]) -> list[JobId]:
        """Re-queue held (``failed``) jobs with ``attempts`` reset; returns those changed.

        Ids that are not held jobs are ignored.
        """
        params = {
            "ids": _ids(ids),
            "channel": self.settings.channel,
            "table": self.settings.bare_name("queue_table"),
        }
        rows = self.driver.fetch(self.statements.requeue_jobs, params)
        return [JobId(r["id"]) for r in rows]

    def list_failed_jobs(
        self, limit: int = 100, order: Literal["ASC", "DESC"] = "DESC"
    ) -> list[Job]:
        """Held jobs, newest first by default."""
        if order not in ("ASC", "DESC"):
            raise ConfigurationError(f"order must be 'ASC' or 'DESC', got {order!r}")
        rows = self.driver.fetch(self.statements.list_failed_jobs(order), {"limit": limit})
        return [Job.from_row(row) for row in rows]

    def last_errors(self, ids: Iterable[int]) -> dict[JobId, ErrorRecord]:
        """The newest logged failure of each job: from its latest log row that carries
        a traceback record (a hold, an exception, a retry), in one query.

        Jobs without such a row are left out. Only rows logged since the job's
        row was created count, so an id reused after a reinstall does not
        inherit an older job's error; a job no longer in the queue has none.
        """
        id_list = sorted(set(_ids(ids)))
        if not id_list:
            return {}
        rows = self.driver.fetch(self.statements.last_errors, {"ids": id_list})
        found = (_error_record(r) for r in rows)
        return {e.job_id: e for e in found if e is not None}

    # -- bulk actions ------------------------------------------------------------------------

    def plan_bulk(
        self, action: BulkAction, *, entrypoints: str | Sequence[str] | None = None
    ) -> BulkPlan:
        """Count the jobs a bulk action would change now, and note the highest id.

        ``requeue``: held (``failed``) jobs; ``cancel``: queued and picked jobs;
        ``purge``: queued jobs (deferred ones included). ``entrypoints=None``
        means every entrypoint, which only ``requeue`` accepts.
        """
        names = _bulk_scope(action, entrypoints)
        row = self.driver.fetch(
            self.statements.bulk_plan(every=names is None),
            {"statuses": list(BULK_STATUSES[action]), "entrypoints": list(names or ()),
             "last_id": None},
        )[0]
        last = row["last_id"]
        return BulkPlan(action, names, int(row["count"]), None if last is None else JobId(last))

    def run_bulk(
        self,
        plan: BulkPlan,
        *,
        batch_size: int = BULK_BATCH_SIZE,
        on_batch: Callable[[int], None] | None = None,
    ) -> BulkResult:
        """Carry out a planned bulk action, ``batch_size`` jobs per statement.

        Walks the ids up to ``plan.last_id`` once, lowest first; jobs enqueued
        since the plan are not touched. On an autocommit driver each batch
        commits on its own, so no lock outlives a batch, and rows another
        session holds locked (a claim in progress, a heartbeat) are skipped
        rather than waited for: workers are never blocked.

        * ``requeue``: as :meth:`requeue_jobs` (``attempts`` reset, a ``queued``
          log row, workers woken once per batch). A held job whose
          ``dedupe_key`` an active job holds stays held (``kept``).
        * ``cancel``: as :meth:`mark_job_as_cancelled`, batch by batch: queued
          jobs are deleted and running ones see their cancellation token; all
          are logged ``canceled``.
        * ``purge``: queued jobs are deleted and logged ``deleted``; picked and
          held jobs are never touched.

        A cancel or purge walks again (up to :data:`BULK_SWEEPS` times) while
        jobs it skipped as locked still match; what is left then is ``busy``.
        A requeue walks once, so a requeued job that is held again meanwhile
        is not requeued a second time. ``on_batch`` gets each batch's count.
        """
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        every = plan.entrypoints is None
        params: dict[str, Any] = {
            "entrypoints": list(plan.entrypoints or ()),
            "last_id": plan.last_id,
            "batch": batch_size,
            "channel": self.settings.channel,
            "table": self.settings.bare_name("queue_table"),
        }

        def run_batch(after: int) -> list[BulkRow]:
            batch = {**params, "after": after}
            if plan.action == "cancel":
                return self._cancel_batch(every, batch)
            statement = (self.statements.bulk_requeue if plan.action == "requeue"
                         else self.statements.bulk_purge)
            rows = self.driver.fetch(statement(every=every), batch)
            return [BulkRow(r["id"], r["entrypoint"], r["done"]) for r in rows]

        def remaining() -> int:
            query = self.statements.bulk_plan(every=every)
            counted = {**params, "statuses": list(plan.statuses)}
            return int(self.driver.fetch(query, counted)[0]["count"])

        return walk_bulk(plan, run_batch=run_batch, remaining=remaining, on_batch=on_batch)

    def _cancel_batch(self, every: bool, params: Mapping[str, Any]) -> list[BulkRow]:
        # Lock the batch, then cancel it by id in the same transaction: the
        # rows cannot finish or be claimed in between.
        with self.driver.transaction() as tx:
            locked = tx.fetch(self.statements.bulk_lock_active(every=every), params)
            ids = [int(r["id"]) for r in locked]
            done = set(Queries(tx, settings=self.settings).mark_job_as_cancelled(ids))
        return [BulkRow(r["id"], r["entrypoint"], r["id"] in done) for r in locked]

    def mark_job_as_cancelled(self, ids: Iterable[int]) -> list[JobId]:
        """Cancel jobs: delete queued or picked rows, log ``canceled``, notify workers.

        Workers running one of the ids see its cancellation token set. Both
        effects happen atomically: inside a caller's transaction, at its commit.
        Returns the ids that still existed.
        """
        id_list = _ids(ids)
        if not id_list:
            return []
        with self.driver.transaction() as tx:
            done = Queries(tx, settings=self.settings)
            logged = done.log_jobs((i, "canceled", None) for i in id_list)
            done.notify_job_cancellation(id_list)
        return logged

    def notify_job_cancellation(self, ids: Iterable[int]) -> None:
        """Send a ``cancellation_event`` for ``ids`` without touching any row.

        Many ids go out as several events, each under PostgreSQL's payload limit.
        """
        for payload in cancellation_payloads(self.settings.channel, ids, utc_now()):
            self._notify(payload)

    def notify_health_check(self, health_check_id: HealthCheckId | uuid.UUID) -> None:
        """Send a ``health_check_event`` (a worker's probe of its own listener)."""
        event = HealthCheckEvent(
            channel=self.settings.channel, sent_at=utc_now(), id=HealthCheckId(health_check_id)
        )
        self._notify(dump_event(event))

    def _notify(self, payload: str) -> None:
        params = {"channel": self.settings.channel, "payload": payload}
        self.driver.execute(self.statements.notify, params)

    def update_heartbeat(
        self,
        job_ids: Iterable[int],
        *,
        queue_manager_id: QueueManagerId | uuid.UUID | None = None,
    ) -> None:
        """Set ``heartbeat = NOW()`` for the (deduplicated) running job ids; with
        ``queue_manager_id`` only for rows still picked by that worker."""
        ids = sorted(set(_ids(job_ids)))
        if ids:
            query = self.statements.update_heartbeat(guarded=queue_manager_id is not None)
            params = {"ids": int_array(ids), "queue_manager_id": queue_manager_id}
            self.driver.execute(query, params)

    # -- inspection ------------------------------------------------------------------------

    def queue_size(self) -> list[QueueStatistics]:
        """Counts of rows in the queue table by entrypoint, priority and status."""
        rows = self.driver.fetch(self.statements.queue_size)
        return [QueueStatistics(**row) for row in rows]

    def queue_log(self) -> list[Log]:
        """Every log row, oldest first (use with care on a large log)."""
        return [Log.from_row(row) for row in self.driver.fetch(self.statements.queue_log)]

    def job_status(self, ids: Iterable[int]) -> list[tuple[JobId, JOB_STATUS]]:
        """The latest logged status of each job that has one, in one query.

        A one-shot look; to block until jobs are final, use
        :class:`~pgqueue_sync.completion.CompletionWatcher`.
        """
        rows = self.driver.fetch(self.statements.job_status, {"ids": _ids(ids)})
        return [(JobId(r["job_id"]), r["status"]) for r in rows]

    def queued_work(self, entrypoints: Iterable[str]) -> int:
        """Queued jobs of these entrypoints, deferred ones included."""
        rows = self.driver.fetch(self.statements.queued_work, {"entrypoints": list(entrypoints)})
        return int(rows[0]["count"])

    def eligible_queued_work(self, entrypoints: Iterable[str]) -> int:
        """Queued jobs of these entrypoints that could run now."""
        params = {"entrypoints": list(entrypoints)}
        return int(self.driver.fetch(self.statements.eligible_queued_work, params)[0]["count"])

    def poll_state(
        self,
        entrypoints: Iterable[str] | Mapping[str, EntrypointExecutionParameter | int],
        heartbeat_timeout: timedelta = HEARTBEAT_TIMEOUT,
    ) -> PollState:
        """Eligible work now? Delay to the next deferred job? Anything queued at all?
        When does the next picked job go stale? (Per-entrypoint stale timeouts
        come from :class:`EntrypointExecutionParameter` values, else
        ``heartbeat_timeout``.)"""
        names, stale = _stale_timeouts(entrypoints)
        params = {
            "entrypoints": names,
            "stale_after": stale,
            "heartbeat_timeout": heartbeat_timeout,
        }
        row = self.driver.fetch(self.statements.poll_state, params)[0]
        return PollState(eligible=row["eligible"], eta=row["eta"], queued=row["queued"],
                         stale_eta=row["stale_eta"])

    def next_deferred_eta(self, entrypoints: Iterable[str]) -> timedelta | None:
        """Time until the soonest deferred job becomes eligible, or ``None``."""
        params = {"entrypoints": list(entrypoints)}
        eta: timedelta | None = self.driver.fetch(self.statements.next_deferred_eta, params)[0][
            "eta"
        ]
        return eta

    # -- cleanup ---------------------------------------------------------------------------

    def clear_queue(self, entrypoint: str | Sequence[str] | None = None) -> None:
        """Delete queued, picked and held jobs: of some entrypoints (logged ``deleted``),
        or all of them with ``TRUNCATE`` (not logged)."""
        if entrypoint is None:
            self.driver.execute(self.statements.truncate("queue"))
            return
        params = {"entrypoints": _names(entrypoint)}
        self.driver.execute(self.statements.clear_queue_for, params)

    def clear_queue_log(self, entrypoint: str | Sequence[str] | None = None) -> None:
        """Delete log rows of some entrypoints, or all of them."""
        self._clear("log", entrypoint)

    def clear_statistics_log(self, entrypoint: str | Sequence[str] | None = None) -> None:
        """Delete statistics rows of some entrypoints, or all of them."""
        self._clear("stats", entrypoint)

    def _clear(self, table: str, entrypoint: str | Sequence[str] | None) -> None:
        if entrypoint is None:
            self.driver.execute(self.statements.truncate(table))
        else:
            query = self.statements.delete_for_entrypoints(table)
            self.driver.execute(query, {"entrypoints": _names(entrypoint)})

    # -- upkeep ----------------------------------------------------------------------------

    def queue_table_health(self) -> TableHealth:
        """The queue table's row counters, last ANALYZE/VACUUM and autovacuum state."""
        query, params = upkeep_sql.health(self.settings)
        [row] = self.driver.fetch(query, params)
        return TableHealth(**row)

    def analyze_queue_table(self) -> None:
        """``ANALYZE`` the queue table (owner only; skipped while another session does)."""
        self.driver.execute(upkeep_sql.analyze(self.settings))

    def vacuum_queue_table(self) -> None:
        """``VACUUM`` the queue table (owner only; needs an autocommit connection)."""
        self.driver.execute(upkeep_sql.vacuum(self.settings))

    # -- statistics ------------------------------------------------------------------------

    def aggregate_logs(self) -> None:
        """Fold new log rows into statistics, skipping if another process holds the lock.

        Uses PgQueuer's advisory-lock key, so sync and async workers never count
        a log row twice. Folds at most :data:`AGGREGATE_CHUNK` rows per
        transaction and :data:`AGGREGATE_MAX_CHUNKS` transactions per call (the
        rest waits for the next call): a deep drain leaves millions of log rows,
        and folding them in one transaction took over 20 s, during which
        VACUUM could not remove the queue table's dead rows.
        """
        params = {"lock_key": self.settings.qualified_text("statistics_table"),
                  "chunk": AGGREGATE_CHUNK}
        query = self.statements.aggregate_logs(locked=True)
        for _ in range(AGGREGATE_MAX_CHUNKS):
            rows = self.driver.fetch(query, params)
            if not rows or rows[0]["flipped"] < AGGREGATE_CHUNK:
                return  # all folded, or another process holds the lock

    def prune_expired(
        self, table: RetentionTable, keep: timedelta, *, after: int | None, batch_size: int
    ) -> RetentionStep:
        """One step of the workers' pruner: delete up to ``batch_size`` rows of
        ``table`` older than ``keep``, in one statement (one short transaction).

        Only with the retention lock, tried and never waited for (``locked``
        false: another worker prunes; nothing was done). ``log`` rows go only
        once aggregated and once their job has left the queue table; ``results``
        only of jobs no longer queued, and nothing when the results table is
        not installed. ``log`` and ``statistics`` are walked by id: pass the
        previous step's ``last_id`` as ``after`` (``None`` to start).
        See :mod:`pgqueue_sync.worker.retention`.
        """
        params = {"lock_key": self._retention_key, "keep": keep, "batch": batch_size}
        if table == "results":
            return self._prune_results_step(params)
        walked = {"log": "log", "statistics": "stats"}[table]
        params["after"] = BEFORE_ANY_ID if after is None else after
        row = self.driver.fetch(self._ops_statements.retention_batch(walked), params)[0]
        return RetentionStep(locked=row["locked"], deleted=row["deleted"],
                             last_id=row["last_id"], done=row["done"])

    def _prune_results_step(self, params: dict[str, Any]) -> RetentionStep:
        query, check = results_sql.exists(self.settings)
        if not self.driver.fetch(query, check)[0]["present"]:
            return RetentionStep(locked=True, deleted=0, last_id=None, done=True)
        params["age"] = params.pop("keep")
        row = self.driver.fetch(self._prune_results_query, params)[0]
        deleted = int(row["count"])
        return RetentionStep(locked=bool(row["locked"]), deleted=deleted, last_id=None,
                             done=deleted < params["batch"])

    @functools.cached_property
    def _ops_statements(self) -> OpsStatements:
        return OpsStatements(self.settings)

    @functools.cached_property
    def _retention_key(self) -> str:
        return retention_lock_key(self.settings.qualified_text("queue_table_log"))

    @functools.cached_property
    def _prune_results_query(self) -> sql.SQL:
        composed = results_sql.prune_batch(self.settings, gate=RETENTION_GATE)
        return sql.SQL(composed.as_string())

    def log_statistics(
        self, tail: int | None = None, last: timedelta | None = None, *, limit: int | None = None
    ) -> list[LogStatistics]:
        """Aggregate (without the lock), then return the newest buckets.

        ``tail`` (PgQueuer's name) or ``limit`` caps the rows; ``last`` keeps only
        buckets newer than that age.
        """
        self.driver.execute(self.statements.aggregate_logs(locked=False))
        cap = limit if limit is not None else tail
        params = {"limit": cap, "last": last}
        rows = self.driver.fetch(self.statements.log_statistics, params)
        return [LogStatistics(**row) for row in rows]

    # -- schedules -------------------------------------------------------------------------

    def insert_schedule(
        self, schedules: Mapping[tuple[CronEntrypoint | str, CronExpression | str], timedelta]
    ) -> None:
        """Register ``(entrypoint, expression) -> delay until next run``; existing rows stay."""
        if schedules:
            self.driver.execute(self.statements.insert_schedule, _schedule_params(schedules))

    def fetch_schedule(
        self, entries: Mapping[tuple[CronEntrypoint | str, CronExpression | str], timedelta]
    ) -> list[Schedule]:
        """Claim the due (or crashed, 30 s stale) schedules among ``entries``.

        Each value is the delay from now to that schedule's following run, which
        becomes its new ``next_run``.
        """
        if not entries:
            return []
        rows = self.driver.fetch(self.statements.fetch_schedule, _schedule_params(entries))
        return [Schedule.from_row(row) for row in rows]

    def set_schedule_queued(self, ids: Iterable[ScheduleId | int]) -> None:
        """Release schedules after their run, stamping ``last_run``."""
        self.driver.execute(self.statements.set_schedule_queued, {"ids": _ids(ids)})

    def update_schedule_heartbeat(self, ids: Iterable[ScheduleId | int]) -> None:
        """Refresh the heartbeat of running schedules."""
        id_list = sorted(set(_ids(ids)))
        if id_list:
            self.driver.execute(self.statements.update_schedule_heartbeat, {"ids": id_list})

    def peek_schedule(self) -> list[Schedule]:
        """Every schedule row."""
        return [Schedule.from_row(r) for r in self.driver.fetch(self.statements.peek_schedule)]

    def delete_schedule(
        self, ids: Iterable[ScheduleId | int] = (), entrypoints: Iterable[str] = ()
    ) -> None:
        """Delete schedules matching any of ``ids`` or ``entrypoints``."""
        params = {"ids": _ids(ids), "entrypoints": list(entrypoints)}
        self.driver.execute(self.statements.delete_schedule, params)

    def clear_schedule(self) -> None:
        """Delete every schedule."""
        self.driver.execute(self.statements.truncate("schedules"))


def cancellation_payloads(
    channel: str, ids: Iterable[int], now: datetime, *, received_at: datetime | None = None
) -> list[str]:
    """The ``cancellation_event`` payloads announcing ``ids``: as few as fit under
    :data:`NOTIFY_PAYLOAD_LIMIT` bytes each (one, with no ids, for none)."""

    def payload(chunk: list[int]) -> str:
        event = CancellationEvent(channel=Channel(channel), sent_at=now,
                                  ids=[JobId(i) for i in chunk],
                                  received_at=now if received_at is None else received_at)
        return dump_event(event)

    room = NOTIFY_PAYLOAD_LIMIT - len(payload([]).encode())
    return [payload(chunk) for chunk in _id_chunks(_ids(ids), room=room)]


def _id_chunks(ids: list[int], *, room: int) -> Iterator[list[int]]:
    chunk: list[int] = []
    used = 0
    for job_id in ids:
        width = len(str(job_id)) + 1  # the digits and a comma
        if chunk and used + width > room:
            yield chunk
            chunk, used = [], 0
        chunk.append(job_id)
        used += width
    if chunk or not ids:
        yield chunk


def walk_bulk(
    plan: BulkPlan,
    *,
    run_batch: Callable[[int], Sequence[BulkRow]],
    remaining: Callable[[], int],
    on_batch: Callable[[int], None] | None = None,
) -> BulkResult:
    """The batch loop behind ``run_bulk``, shared by the database and the in-memory
    queries: ``run_batch(after)`` handles the next batch of ids above ``after``;
    ``remaining()`` counts the jobs that still match, up to ``plan.last_id``."""
    by_entrypoint: collections.Counter[str] = collections.Counter()
    ids: list[int] = []
    batches = kept = busy = 0
    if plan.last_id is None:
        return BulkResult(plan.action, 0, 0, {}, ())
    sweeps = 1 if plan.action == "requeue" else BULK_SWEEPS
    for sweep in range(sweeps):
        if sweep:
            time.sleep(BULK_SWEEP_PAUSE)
        after, kept = BEFORE_ANY_ID, 0
        while True:
            rows = run_batch(after)
            if not rows:
                break
            after = max(r.id for r in rows)
            done = [r for r in rows if r.done]
            kept += len(rows) - len(done)
            batches += 1
            by_entrypoint.update(r.entrypoint or "" for r in done)
            ids = sorted(ids + [r.id for r in done])[:BULK_REPORTED_IDS]
            if on_batch is not None:
                on_batch(len(done))
            logger.debug("%s: %d job(s) in batch %d (up to id %d)",
                         plan.action, len(done), batches, after)
        if sweeps == 1:
            break
        busy = remaining()
        if not busy:
            break
    total = sum(by_entrypoint.values())
    logger.info("%s: %d job(s) in %d batch(es)", plan.action, total, batches)
    return BulkResult(plan.action, total, batches, dict(sorted(by_entrypoint.items())),
                      tuple(JobId(i) for i in ids), kept=kept if plan.action == "requeue" else 0,
                      busy=busy)


def _bulk_scope(action: str, entrypoints: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """The validated entrypoints of a bulk action (``None``: every one)."""
    if action not in BULK_ACTIONS:
        raise ConfigurationError(
            f"bulk action must be one of {', '.join(BULK_ACTIONS)}, got {action!r}"
        )
    if entrypoints is None:
        if action != "requeue":
            raise ConfigurationError(f"{action} needs the entrypoints it applies to")
        return None
    names = tuple(dict.fromkeys(_check_entrypoint(e) for e in _names(entrypoints)))
    if not names:
        raise ConfigurationError(f"{action} needs at least one entrypoint")
    return names


def _error_record(row: Mapping[str, Any]) -> ErrorRecord | None:
    """An :class:`ErrorRecord` from a ``last_errors`` row; ``None`` if the stored value
    is not an object. Records missing fields (written by other tools) are
    completed with empty text and the log row's time rather than dropped."""
    value = row["traceback"]
    if isinstance(value, str | bytes):
        value = json.loads(value)
    if not isinstance(value, Mapping):
        return None
    job_id = JobId(row["job_id"])
    try:
        record = TracebackRecord.from_json(value)
    except (KeyError, TypeError, ValueError):
        record = TracebackRecord(
            job_id=job_id,
            timestamp=row["created"],
            exception_type=str(value.get("exception_type") or ""),
            exception_message=str(value.get("exception_message") or ""),
            traceback=str(value.get("traceback") or ""),
        )
    return ErrorRecord(job_id, row["created"], row["status"], record)


def _outcome_params(
    job_status: Iterable[JobOutcome], retries: Iterable[JobRetry] = ()
) -> dict[str, list[Any]]:
    # A retry travels as status 'queued' with its delay; outcomes have no delay. A
    # Job also carries its claim's ``updated`` (the guard's claim token).
    ids: list[int] = []
    statuses: list[str] = []
    tracebacks: list[Jsonb | None] = []
    delays: list[timedelta | None] = []
    claimed: list[datetime | None] = []

    def add(job: Job | JobId | int, status: str, record: TracebackRecord | None) -> None:
        ids.append(int(job.id if isinstance(job, Job) else job))
        statuses.append(status)
        tracebacks.append(Jsonb(record.to_json()) if record is not None else None)
        claimed.append(job.updated if isinstance(job, Job) else None)

    for job, status, record in job_status:
        _check_status(status)
        if status == "queued":
            raise ConfigurationError("'queued' is not an outcome; pass retries=[...] instead")
        add(job, status, record)
        delays.append(None)
    for job, delay, record in retries:
        add(job, "queued", record)
        delays.append(delay)
    if not ids:
        return {}
    return {"ids": ids, "statuses": statuses, "tracebacks": tracebacks, "delays": delays,
            "claimed": claimed}


def _outcome_literals(
    job_status: Iterable[JobOutcome], retries: Iterable[JobRetry] = ()
) -> dict[str, Any]:
    params = _outcome_params(job_status, retries)
    if not params:
        return {}
    statuses = set(params["statuses"])
    return {
        "steps": finish_steps(holds="failed" in statuses, retries="queued" in statuses),
        "ids": int_array(params["ids"]),
        "statuses": text_array(params["statuses"]),
        "tracebacks": text_array(
            None if t is None else json.dumps(t.obj) for t in params["tracebacks"]
        ),
        "delays": text_array(
            None if d is None else f"{d.total_seconds()} seconds" for d in params["delays"]
        ),
        "claimed": text_array(None if c is None else c.isoformat() for c in params["claimed"]),
    }


def _steps(finish_params: Mapping[str, Any]) -> tuple[str, ...]:
    """The outcome steps of prepared finish parameters (``()`` when there are none)."""
    steps: tuple[str, ...] = finish_params.get("steps", ())
    return steps


def _stale_timeouts(
    entrypoints: Iterable[str] | Mapping[str, EntrypointExecutionParameter | int],
) -> tuple[list[str], list[timedelta | None]]:
    if not isinstance(entrypoints, Mapping):
        names = list(entrypoints)
        return names, [None] * len(names)
    return list(entrypoints), [_stale_after_of(v) for v in entrypoints.values()]


def _result_literals(results: Sequence[StoredResult]) -> dict[str, str]:
    if not results:
        return {}
    return {
        "result_ids": int_array(r.job.id for r in results),
        "result_values": text_array(r.value for r in results),
        "result_notes": text_array(r.note for r in results),
        "result_created": text_array(r.job.created.isoformat() for r in results),
        "result_attempts": int_array(r.job.attempts for r in results),
        "result_workers": text_array(
            None if r.job.queue_manager_id is None else str(r.job.queue_manager_id)
            for r in results
        ),
    }


def _results_failed(exc: DatabaseError, stored: Mapping[str, str]) -> bool:
    """Whether a failed outcome write is worth repeating without its results: a
    missing object (SQLSTATE class 42) or a value the server refused (class 22)."""
    state = exc.sqlstate or ""
    return bool(stored) and state[:2] in ("22", "42")


def _log_lost_results(exc: DatabaseError, results: Sequence[StoredResult]) -> None:
    logger.error(
        "could not store the results of %d job(s) (%s); recording their outcomes without "
        "them (is the results table installed? 'pgq-sync results install')",
        len(results), exc,
    )


@functools.lru_cache(maxsize=64)
def _registered_literals(
    items: tuple[tuple[str, int, float | None], ...],
) -> dict[str, Any]:
    return {
        "entrypoints": text_array(name for name, _, _ in items),
        "limits": int_array(limit for _, limit, _ in items),
        "stale_after": text_array(
            None if seconds is None else f"{seconds} seconds" for _, _, seconds in items
        ),
        "capacity": any(limit for _, limit, _ in items),
    }


def _registered_params(
    entrypoints: Mapping[str, EntrypointExecutionParameter | int],
) -> dict[str, Any]:
    # A worker passes the same registry on every claim: build its literals once.
    items = []
    for name, value in entrypoints.items():
        stale = _stale_after_of(value)
        items.append((name, _limit_of(value), None if stale is None else stale.total_seconds()))
    return dict(_registered_literals(tuple(items)))


def _enqueue_params(rows: dict[str, list[Any]]) -> dict[str, str]:
    return {name: _array(rows[name], render) for name, (_, _, render) in _COLUMNS.items()}


def _array(values: list[Any], render: Callable[[list[Any]], str]) -> str:
    """``render(values)``; when every value is equal (a batch sharing one entrypoint,
    priority or delay, or no headers), render one element and repeat its text."""
    if len(values) > 1 and values.count(values[0]) == len(values):
        element = render(values[:1])[1:-1]  # the literal without its braces
        return "{" + ",".join([element] * len(values)) + "}"
    return render(values)


def _at_array(moments: list[datetime | None]) -> str:
    return text_array(None if a is None else a.isoformat() for a in moments)


def _delay_array(delays: list[timedelta]) -> str:
    # Batches mostly share one delay (usually zero): format each distinct one once.
    texts: dict[timedelta, str] = {}
    for delay in delays:
        if delay not in texts:
            texts[delay] = f"{delay.total_seconds()} seconds"
    return text_array(texts[d] for d in delays)


def _headers_array(headers: list[Jsonb]) -> str:
    # JSON null (no headers) is by far the common case; skip json.dumps for it.
    return text_array("null" if h.obj is None else json.dumps(h.obj) for h in headers)


def _normalize_batch(
    entrypoint: object,
    payload: object,
    priority: object,
    execute_after: object,
    dedupe_key: object,
    headers: object,
) -> dict[str, list[Any]]:
    columns = {
        "entrypoint": entrypoint,
        "payload": payload,
        "priority": priority,
        "execute_after": execute_after,
        "dedupe_key": dedupe_key,
        "headers": headers,
    }
    lengths = {k: len(v) for k, v in columns.items() if isinstance(v, list | tuple)}
    if len(set(lengths.values())) > 1:
        raise ConfigurationError(
            f"batch enqueue needs lists of equal length, got {lengths}; "
            "pass one value per job for every list argument"
        )
    size = next(iter(lengths.values()), 1)
    full = {
        k: list(v) if isinstance(v, list | tuple) else [v] * size for k, v in columns.items()
    }
    return {name: _checked(full[source], check) for name, (source, check, _) in _COLUMNS.items()}


def _checked(values: list[Any], check: Callable[[Any], _T]) -> list[_T]:
    """``[check(v) for v in values]``, checking each distinct object once: a batch
    mostly repeats one entrypoint, priority, delay and ``None``. (The list holds
    every value for the whole call, so an ``id()`` cannot be reused meanwhile.)"""
    done: dict[int, _T] = {}
    out = []
    for value in values:
        key = id(value)
        if key not in done:
            done[key] = check(value)
        out.append(done[key])
    return out


def _check_entrypoint(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"entrypoint must be a non-empty string, got {value!r}")
    return key_text("entrypoint", value)


def _check_payload(value: object) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    hint = "; encode it first, e.g. text.encode()" if isinstance(value, str) else ""
    raise ConfigurationError(f"payload must be bytes or None, got {type(value).__name__}{hint}")


def _check_priority(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"priority must be an int, got {value!r}")
    if not _INT32[0] <= value <= _INT32[1]:
        raise ConfigurationError(f"priority {value} does not fit a PostgreSQL integer")
    return value


def _check_dedupe(value: object) -> str | None:
    if value is None:
        return value
    if isinstance(value, str):
        return key_text("dedupe_key", value)
    raise ConfigurationError(f"dedupe_key must be a string or None, got {value!r}")


def _delay(value: object) -> timedelta:
    if value is None or isinstance(value, datetime):
        return timedelta(0)
    if isinstance(value, timedelta | int | float) and not isinstance(value, bool):
        # A negative delay (due in the past) is allowed; its size is checked as any other.
        past = value < timedelta(0) if isinstance(value, timedelta) else value < 0
        return -duration("execute_after", -value) if past else duration("execute_after", value)
    raise ConfigurationError(
        f"execute_after must be a timedelta, seconds or an aware datetime, got {value!r}"
    )


def _at(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ConfigurationError(
            f"execute_after datetime {value.isoformat()} has no timezone; "
            "pass an aware datetime, e.g. datetime.now(timezone.utc) + delay"
        )
    return value


def _headers(value: object) -> Jsonb:
    # Without headers PgQueuer stores JSON null (not SQL NULL); keep it that way.
    if value is None:
        return Jsonb(None)
    if isinstance(value, Mapping):
        headers = dict(value)
        _check_storable_json("headers", headers)
        return Jsonb(headers)
    raise ConfigurationError(f"headers must be a mapping or None, got {type(value).__name__}")


#: What an enqueue writes, per column of the statement: the argument it comes
#: from, the check that validates (and normalises) each value, and how a column
#: becomes its array parameter.
_COLUMNS: dict[str, tuple[str, Callable[[Any], Any], Callable[[list[Any]], str]]] = {
    "entrypoint": ("entrypoint", _check_entrypoint, text_array),
    "payload": ("payload", _check_payload, bytea_array),
    "priority": ("priority", _check_priority, int_array),
    "delay": ("execute_after", _delay, _delay_array),
    "at": ("execute_after", _at, _at_array),
    "dedupe_key": ("dedupe_key", _check_dedupe, text_array),
    "headers": ("headers", _headers, _headers_array),
}


def _check_storable_json(name: str, value: object) -> None:
    """Refuse what ``jsonb`` cannot hold, before any SQL runs: NaN/infinity, values
    JSON has no form for, NUL characters and lone surrogates."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"{name} must be plain JSON (str, int, finite float, bool, None, lists and "
            f"dicts with str keys): {exc}"
        ) from None
    if _has_nul(value):
        raise ConfigurationError(f"{name} must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(
            f"{name} contains a lone surrogate, which is not valid text"
        ) from None


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def _trace_publish(tracer: TracingProtocol | None, rows: dict[str, list[Any]]) -> None:
    """Merge the tracer's headers into a normalised batch, in place."""
    active = get_tracer(tracer)
    if is_active(active):
        own = [h.obj for h in rows["headers"]]
        merged = merge_publish_headers(active, rows["entrypoint"], own)
        rows["headers"] = [_headers(h) for h in merged]


def _check_conflict_mode(mode: str, keys: list[str | None]) -> None:
    if mode not in ON_CONFLICT_MODES:
        raise ConfigurationError(
            f"on_conflict must be one of {', '.join(ON_CONFLICT_MODES)}, got {mode!r}"
        )
    if mode == "update_priority":
        present = [k for k in keys if k is not None]
        if len(present) != len(set(present)):
            raise ConfigurationError(
                "on_conflict='update_priority' cannot take the same dedupe_key twice in one call"
            )


def _check_status(status: str) -> None:
    if status not in JOB_STATUSES:
        raise ConfigurationError(f"unknown job status {status!r}; use one of {JOB_STATUSES}")


def _limit_of(value: EntrypointExecutionParameter | int) -> int:
    limit = value.concurrency_limit if isinstance(value, EntrypointExecutionParameter) else value
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigurationError(f"concurrency_limit must be an int >= 0, got {limit!r}")
    return limit


def _stale_after_of(value: EntrypointExecutionParameter | int) -> timedelta | None:
    return value.stale_after if isinstance(value, EntrypointExecutionParameter) else None


def _ids(ids: Iterable[int]) -> list[int]:
    return [int(i) for i in ids]


def _names(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _schedule_params(
    entries: Mapping[tuple[CronEntrypoint | str, CronExpression | str], timedelta],
) -> dict[str, list[Any]]:
    keys = list(entries)
    return {
        "entrypoints": [k[0] for k in keys],
        "expressions": [k[1] for k in keys],
        "delays": [entries[k] for k in keys],
    }
