"""The in-memory adapter: the queue's tables and NOTIFY channel inside one process.

For unit tests and demos without PostgreSQL, like PgQueuer's ``InMemoryDriver`` +
``InMemoryQueries``. Users import it from :mod:`pgqueue_sync.testing`.

What it cannot reproduce:

* **No durability.** Everything lives in the :class:`InMemoryDriver` object and is
  gone with it.
* **One process.** Threads of one process share a driver; other processes (and
  PgQueuer workers) cannot see it.
* **No caller transactions.** Each method is atomic on its own, as one statement
  under autocommit is; there is no ``transaction()`` to join, so "enqueue inside
  my transaction" cannot be tested here.
* **No lock contention.** One lock serialises every operation, so the seat races
  and deadlocks a real fleet can hit (answered there with an empty batch) never
  happen.
* **One set of tables per driver.** ``settings`` only name the channel, the table
  in ``table_changed_event`` and the index in errors; two ``InMemoryQueries`` with
  different prefixes over one driver share the same rows.
"""

# DROP-IN CONTRACT. The worker (QueueManager, buffers, heartbeats, scheduler) talks
# to ``Queries`` only, so InMemoryQueries must stay a duck-typed twin of it:
#   * attributes ``driver`` and ``settings`` (``settings.channel`` names the channel);
#   * every public method of Queries except the psycopg constructors
#     (``from_connection``, ``from_pool``), with the same signature, the same
#     validation and errors (ConfigurationError, DuplicateJobError, UniqueViolation)
#     and the same return types: enqueue, dequeue, log_jobs, retry_job, release_jobs,
#     requeue_jobs, list_failed_jobs, last_errors, plan_bulk, run_bulk,
#     mark_job_as_cancelled, notify_job_cancellation,
#     notify_health_check, update_heartbeat, queue_size, queue_log, job_status,
#     queued_work, eligible_queued_work, poll_state, next_deferred_eta, clear_queue,
#     clear_queue_log, clear_statistics_log, aggregate_logs, prune_expired, log_statistics,
#     insert_schedule, fetch_schedule, set_schedule_queued, update_schedule_heartbeat,
#     peek_schedule, delete_schedule, clear_schedule;
#   * ``driver.add_listener(callback) -> unsubscribe``: the LISTEN replacement,
#     fed the exact payloads the database would send on the channel.
# tests/test_inmemory.py checks the method set and signatures against Queries.

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal, cast, overload

from ..errors import ConfigurationError, DatabaseError, DuplicateJobError, UniqueViolation
from ..models import (
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
from ..options import HEARTBEAT_TIMEOUT
from ..queries.batch import check_conflict_mode, normalize_batch, trace_publish
from ..queries.bulk import (
    BULK_BATCH_SIZE,
    BulkAction,
    BulkPlan,
    BulkResult,
    BulkRow,
    bulk_scope,
    walk_bulk,
)
from ..queries.cancellation import cancellation_payloads
from ..queries.models import (
    EntrypointExecutionParameter,
    ErrorRecord,
    ExecuteAfter,
    Headers,
    JobOutcome,
    JobRetry,
    PollState,
)
from ..queries.values import (
    entrypoint_names,
    error_record,
    int_ids,
    limit_of,
    outcome_params,
    schedule_params,
    stale_after_of,
    stale_timeouts,
)
from ..settings import DBSettings, db_settings
from ..sql.names import check_lengths
from ..tracing import TracingProtocol
from ..types import (
    JOB_STATUS,
    CronEntrypoint,
    CronExpression,
    HealthCheckId,
    JobId,
    OnConflict,
    QueueEntrypoint,
    QueueManagerId,
    RetentionTable,
    ScheduleId,
)

if TYPE_CHECKING:
    from ..results import StoredResult

logger = logging.getLogger(__name__)

_Callback = Callable[[str], None]
_ACTIVE: frozenset[str] = frozenset({"queued", "picked"})  # the partial dedupe index
_SCHEDULE_STALE = timedelta(seconds=30)  # hard-coded in PgQueuer's schedule claim


@dataclasses.dataclass
class _JobRow:
    id: int
    priority: int
    created: datetime
    updated: datetime
    heartbeat: datetime
    execute_after: datetime
    status: JOB_STATUS
    entrypoint: str
    dedupe_key: str | None
    payload: bytes | None
    headers: Any
    attempts: int = 0
    queue_manager_id: uuid.UUID | None = None
    slot: int | None = None

    def to_job(self) -> Job:
        return Job.from_row({**vars(self), "headers": copy.deepcopy(self.headers)})

    def order(self) -> tuple[int, int]:
        """The claim order: ``priority DESC, id ASC``."""
        return (-self.priority, self.id)


@dataclasses.dataclass
class _LogRow:
    id: int
    created: datetime
    job_id: int
    status: JOB_STATUS
    priority: int
    entrypoint: str
    traceback: dict[str, Any] | None = None
    aggregated: bool = False

    def to_log(self) -> Log:
        return Log.from_row({**vars(self), "traceback": copy.deepcopy(self.traceback)})


@dataclasses.dataclass
class _StatRow:
    id: int
    created: datetime
    count: int
    priority: int
    status: JOB_STATUS
    entrypoint: str


@dataclasses.dataclass
class _ScheduleRow:
    id: int
    expression: str
    entrypoint: str
    heartbeat: datetime
    created: datetime
    updated: datetime
    next_run: datetime
    status: JOB_STATUS = "queued"
    last_run: datetime | None = None

    def to_schedule(self) -> Schedule:
        return Schedule.from_row(vars(self))


class _Statement:
    """One atomic operation: the tables, one ``NOW()``, and the notifications it sends."""

    def __init__(self, driver: InMemoryDriver, settings: DBSettings, now: datetime) -> None:
        self.db = driver
        self.settings = settings
        self.now = now
        self.payloads: list[str] = []

    def next_id(self, table: str) -> int:
        # Like nextval(): drawn even for rows later skipped or rejected (gaps).
        self.db._sequences[table] += 1
        return self.db._sequences[table]

    def log(self, row: _JobRow, status: JOB_STATUS, traceback: Any = None) -> None:
        log_id = self.next_id("log")
        entry = _LogRow(log_id, self.now, row.id, status, row.priority, row.entrypoint, traceback)
        self.db.log_rows.append(entry)

    def table_changed(
        self, operation: Literal["insert", "update", "delete", "truncate"]
    ) -> None:
        # The statement-level trigger: one event per INSERT/DELETE/TRUNCATE statement,
        # however many rows it touched (zero included), spelled as json_build_object does.
        data = {
            "channel": self.settings.channel,
            "operation": operation,
            "sent_at": _pg_json_time(self.now),
            "table": self.settings.bare_name("queue_table"),
            "type": "table_changed_event",
        }
        self.payloads.append(json.dumps(data, separators=(", ", " : ")))

    def active_keys(self) -> dict[str, _JobRow]:
        return {
            r.dedupe_key: r
            for r in self.db.jobs.values()
            if r.dedupe_key is not None and r.status in _ACTIVE
        }

    def reactivate(self, rows: Sequence[_JobRow]) -> None:
        """Refuse to put ``rows`` back to ``queued`` if that breaks the dedupe index."""
        taken = {k: r.id for k, r in self.active_keys().items()}
        for row in rows:
            key = row.dedupe_key
            if key is None or row.status in _ACTIVE:
                continue
            if taken.setdefault(key, row.id) != row.id:
                index = self.settings.index_name("unique_dedupe_key")
                raise UniqueViolation(
                    f'duplicate key value violates unique constraint "{index}"',
                    constraint_name=index,
                )


class InMemoryDriver:
    """The in-process storage of one queue "database", shared by threads.

    Holds the queue, log, statistics and schedule rows and their id sequences,
    all guarded by one :class:`threading.Lock`, plus a notification fan-out
    standing in for ``LISTEN`` (:meth:`add_listener`).

    ``clock`` plays PostgreSQL's ``NOW()``: it is read once per operation and
    must return aware datetimes. Inject one (e.g.
    :class:`pgqueue_sync.testing.ManualClock`) to move time in tests.
    """

    def __init__(self, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.jobs: dict[int, _JobRow] = {}
        self.log_rows: list[_LogRow] = []
        self.statistics: dict[tuple[int, datetime, str, str], _StatRow] = {}
        self.schedules: dict[int, _ScheduleRow] = {}
        self._sequences: collections.Counter[str] = collections.Counter()
        self._listeners: list[_Callback] = []
        self._outbox: collections.deque[str] = collections.deque()
        self._outbox_lock = threading.Lock()
        self._delivering = False

    def now(self) -> datetime:
        """The clock's current time; :class:`ConfigurationError` if it is naive."""
        value = self.clock()
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise ConfigurationError(f"the in-memory clock returned a naive datetime: {value!r}")
        return value

    def add_listener(self, callback: _Callback) -> Callable[[], None]:
        """Call ``callback(payload)`` for every NOTIFY payload; returns the unsubscribe.

        Payloads are delivered after the operation that sent them has released
        the storage lock (so callbacks may call queries), in commit order, on
        the thread of one of the senders. A callback that raises is logged and
        skipped. Keep callbacks quick: a sender may be delivering them.
        """
        with self._outbox_lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._outbox_lock:
                with contextlib.suppress(ValueError):
                    self._listeners.remove(callback)

        return unsubscribe

    @contextlib.contextmanager
    def statement(self, settings: DBSettings) -> Iterator[_Statement]:
        """Run one operation atomically; its notifications are sent only if it succeeds.

        Operations check everything before they change a row, so an error leaves
        the tables as they were (only the id sequences advance, as in PostgreSQL).
        """
        with self._lock:
            stmt = _Statement(self, settings, self.now())
            yield stmt
            if stmt.payloads:
                with self._outbox_lock:
                    self._outbox.extend(stmt.payloads)
        if stmt.payloads:
            self._deliver()

    def _deliver(self) -> None:
        with self._outbox_lock:
            if self._delivering:  # another thread (or an outer frame) drains the outbox
                return
            self._delivering = True
        try:
            while True:
                with self._outbox_lock:
                    if not self._outbox:
                        # Cleared under the same lock as the emptiness check, so a
                        # payload queued meanwhile is never left undelivered.
                        self._delivering = False
                        return
                    payload = self._outbox.popleft()
                    listeners = tuple(self._listeners)
                for callback in listeners:
                    try:
                        callback(payload)
                    except Exception:
                        logger.exception("in-memory listener %r failed", callback)
        except BaseException:
            with self._outbox_lock:
                self._delivering = False
            raise


@dataclasses.dataclass
class _Registered:
    limit: int
    stale_after: timedelta


@dataclasses.dataclass
class _Claim:
    row: _JobRow
    kind: Literal["open", "limited", "stale"]
    seat: int | None = None


class InMemoryQueries:
    """:class:`~pgqueue_sync.queries.Queries` over an :class:`InMemoryDriver`.

    Same methods, signatures, validation, errors and return types, and the same
    rows, log entries and notifications as the SQL statements produce. Each
    method is atomic and thread-safe. See the module docstring for what differs.
    """

    def __init__(
        self,
        driver: InMemoryDriver | None = None,
        *,
        settings: DBSettings | None = None,
        tracer: TracingProtocol | None = None,
    ) -> None:
        self.driver = driver if driver is not None else InMemoryDriver()
        self.settings = settings or db_settings()
        check_lengths(self.settings)  # the same settings must work against PostgreSQL
        self.tracer = tracer

    def _statement(self) -> contextlib.AbstractContextManager[_Statement]:
        return self.driver.statement(self.settings)

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
        """Insert one job or a batch atomically; see :meth:`Queries.enqueue`.

        Ids are drawn for every input row, so skipped, merged or rejected rows
        leave gaps exactly as the database sequence does.
        """
        rows = normalize_batch(entrypoint, payload, priority, execute_after, dedupe_key, headers)
        trace_publish(self.tracer, rows)
        check_conflict_mode(on_conflict, rows["dedupe_key"])
        with self._statement() as s:
            ids = [s.next_id("queue") for _ in rows["entrypoint"]]
            active = s.active_keys()
            fresh: list[_JobRow] = []
            raised: dict[int, int] = {}
            result: list[JobId | None] = []
            for i, job_id in enumerate(ids):
                key = rows["dedupe_key"][i]
                existing = active.get(key) if key is not None else None
                if existing is None:
                    row = _new_job(s.now, job_id, rows, i)
                    fresh.append(row)
                    if key is not None:
                        active[key] = row
                    result.append(JobId(job_id))
                elif on_conflict == "raise":
                    raise DuplicateJobError(rows["dedupe_key"])
                elif on_conflict == "skip":
                    result.append(None)
                else:
                    raised[existing.id] = max(existing.priority, rows["priority"][i])
                    result.append(JobId(existing.id))
            for row in fresh:
                s.db.jobs[row.id] = row
                s.log(row, "queued")
            for job_id, new_priority in raised.items():
                s.db.jobs[job_id].priority = new_priority
            s.table_changed("insert")
        if on_conflict == "skip":
            return result
        return [i for i in result if i is not None]

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
        """Claim up to ``batch_size`` jobs; see :meth:`Queries.dequeue`.

        Candidates are chosen from the state *before* ``completed`` is recorded,
        as the single SQL statement sees its snapshot: a finished job still holds
        its seat for this claim. Never loses a seat race (there is none here).
        """
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        _no_results(results)
        if not entrypoints:
            self.log_jobs(completed, retries=retries, queue_manager_id=queue_manager_id)
            return []
        registered = {
            name: _Registered(
                limit_of(param), _coalesce(stale_after_of(param), heartbeat_timeout)
            )
            for name, param in entrypoints.items()
        }
        finish = outcome_params(completed, retries)
        budget = global_concurrency_limit or None
        with self._statement() as s:
            plan = _plan_claim(s, registered, batch_size, queue_manager_id, budget,
                               stale=include_stale)
            if finish:
                _finish(s, finish, queue_manager_id)
            # A row also finished by this call keeps its finished state.
            finished = set(finish.get("ids", ()))
            claimed = [
                _apply_claim(s, c, queue_manager_id) for c in plan if c.row.id not in finished
            ]
        return [row.to_job() for row in sorted(claimed, key=_JobRow.order)]

    # -- completion ------------------------------------------------------------------------

    def log_jobs(
        self,
        job_status: Iterable[JobOutcome],
        *,
        results: Sequence[StoredResult] = (),
        retries: Sequence[JobRetry] = (),
        queue_manager_id: QueueManagerId | uuid.UUID | None = None,
    ) -> list[JobId]:
        """Delete (or hold ``failed``), retry and log; see :meth:`Queries.log_jobs`.

        Storing ``results`` is not supported here (ConfigurationError).
        """
        _no_results(results)
        params = outcome_params(job_status, retries)
        if not params:
            return []
        with self._statement() as s:
            return _finish(s, params, queue_manager_id)

    def retry_job(
        self,
        job: Job | JobId | int,
        delay: timedelta,
        traceback_record: TracebackRecord | None = None,
        *,
        queue_manager_id: QueueManagerId | uuid.UUID | None = None,
    ) -> bool:
        """Re-queue one job after ``delay`` with ``attempts + 1``; False if the row is gone."""
        logged = self.log_jobs((), retries=[(job, delay, traceback_record)],
                               queue_manager_id=queue_manager_id)
        return bool(logged)

    def release_jobs(
        self,
        records: Mapping[JobId, TracebackRecord] | Mapping[int, TracebackRecord],
        queue_manager_id: QueueManagerId | uuid.UUID,
    ) -> list[JobId]:
        """Put this worker's picked jobs back to ``queued`` now, ``attempts`` unchanged."""
        if not records:
            return []
        given = [(int(i), _json_copy(r.to_json())) for i, r in records.items()]
        released: list[JobId] = []
        with self._statement() as s:
            for job_id, record in given:
                row = s.db.jobs.get(job_id)
                if row is None or row.status != "picked":
                    continue
                if row.queue_manager_id != queue_manager_id:
                    continue
                row.status, row.execute_after, row.updated = "queued", s.now, s.now
                row.queue_manager_id = None
                s.log(row, "queued", record)
                released.append(JobId(job_id))
            if released:
                s.table_changed("update")
        return released

    def requeue_jobs(self, ids: Iterable[int]) -> list[JobId]:
        """Re-queue held (``failed``) jobs with ``attempts`` reset; returns those changed.

        Raises :class:`UniqueViolation` (nothing changed) if a held job's
        ``dedupe_key`` is meanwhile taken by an active job, as the index would.
        """
        wanted = set(int_ids(ids))
        with self._statement() as s:
            held = (s.db.jobs[i] for i in sorted(wanted & s.db.jobs.keys()))
            rows = [r for r in held if r.status == "failed"]
            s.reactivate(rows)
            for row in rows:
                row.status, row.execute_after, row.updated = "queued", s.now, s.now
                row.attempts, row.queue_manager_id = 0, None
                s.log(row, "queued")
            if rows:
                s.table_changed("update")
        return [JobId(r.id) for r in rows]

    def list_failed_jobs(
        self, limit: int = 100, order: Literal["ASC", "DESC"] = "DESC"
    ) -> list[Job]:
        """Held jobs, newest first by default."""
        if order not in ("ASC", "DESC"):
            raise ConfigurationError(f"order must be 'ASC' or 'DESC', got {order!r}")
        with self._statement() as s:
            held = [r for r in s.db.jobs.values() if r.status == "failed"]
            held.sort(key=lambda r: (r.updated, r.id), reverse=order == "DESC")
            return [r.to_job() for r in held[: _check_limit(limit)]]

    def last_errors(self, ids: Iterable[int]) -> dict[JobId, ErrorRecord]:
        """The newest logged failure record of each job still in the queue; see
        :meth:`Queries.last_errors`."""
        wanted = set(int_ids(ids))
        newest: dict[int, _LogRow] = {}
        with self._statement() as s:
            for entry in s.db.log_rows:
                row = s.db.jobs.get(entry.job_id)
                if entry.job_id not in wanted or row is None or entry.created < row.created:
                    continue
                if not isinstance(entry.traceback, dict):
                    continue
                seen = newest.get(entry.job_id)
                if seen is None or (entry.created, entry.id) > (seen.created, seen.id):
                    newest[entry.job_id] = entry
            rows = [
                {"job_id": e.job_id, "created": e.created, "status": e.status,
                 "traceback": copy.deepcopy(e.traceback)}
                for e in newest.values()
            ]
        found = [e for e in map(error_record, rows) if e is not None]
        return {e.job_id: e for e in sorted(found, key=lambda e: e.job_id)}

    # -- bulk actions ------------------------------------------------------------------------

    def plan_bulk(
        self, action: BulkAction, *, entrypoints: str | Sequence[str] | None = None
    ) -> BulkPlan:
        """Count the jobs a bulk action would change now; see :meth:`Queries.plan_bulk`."""
        names = bulk_scope(action, entrypoints)
        plan = BulkPlan(action, names, 0, None)
        with self._statement() as s:
            ids = [r.id for r in _bulk_rows(s, plan)]
        return BulkPlan(action, names, len(ids), JobId(max(ids)) if ids else None)

    def run_bulk(
        self,
        plan: BulkPlan,
        *,
        batch_size: int = BULK_BATCH_SIZE,
        on_batch: Callable[[int], None] | None = None,
    ) -> BulkResult:
        """Carry out a planned bulk action batch by batch; see :meth:`Queries.run_bulk`.

        Each batch is one atomic step. Nothing is ever locked by another
        session here, so ``busy`` is always 0.
        """
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")

        def run_batch(after: int) -> list[BulkRow]:
            with self._statement() as s:
                rows = [r for r in _bulk_rows(s, plan) if r.id > after][:batch_size]
                if plan.action == "requeue":
                    return _requeue_batch(s, rows)
                if plan.action == "purge":
                    return _purge_batch(s, rows)
                if not rows:
                    return []
                ids = [r.id for r in rows]
                done = set(_finish(s, outcome_params((i, "canceled", None) for i in ids)))
                s.payloads.extend(cancellation_payloads(self.settings.channel, ids, s.now))
                return [BulkRow(r.id, r.entrypoint, r.id in done) for r in rows]

        def remaining() -> int:
            with self._statement() as s:
                return sum(1 for _ in _bulk_rows(s, plan))

        return walk_bulk(plan, run_batch=run_batch, remaining=remaining, on_batch=on_batch)

    def mark_job_as_cancelled(self, ids: Iterable[int]) -> list[JobId]:
        """Delete queued or picked rows, log ``canceled`` and send a ``cancellation_event``.

        Both happen in one atomic step; listeners get the table's ``delete``
        event, then the cancellation. Returns the ids that still existed.
        """
        id_list = int_ids(ids)
        if not id_list:
            return []
        outcomes = outcome_params((i, "canceled", None) for i in id_list)
        with self._statement() as s:
            logged = _finish(s, outcomes)
            s.payloads.extend(cancellation_payloads(self.settings.channel, id_list, s.now))
        return logged

    def notify_job_cancellation(self, ids: Iterable[int]) -> None:
        """Send a ``cancellation_event`` for ``ids`` without touching any row (several
        events for many ids, as PostgreSQL's payload limit makes the database do)."""
        id_list = list(ids)
        with self._statement() as s:
            s.payloads.extend(cancellation_payloads(self.settings.channel, id_list, s.now))

    def notify_health_check(self, health_check_id: HealthCheckId | uuid.UUID) -> None:
        """Send a ``health_check_event`` (a worker's probe of its own listener)."""
        probe = HealthCheckId(health_check_id)
        with self._statement() as s:
            event = HealthCheckEvent(self.settings.channel, s.now, probe, received_at=s.now)
            s.payloads.append(dump_event(event))

    def update_heartbeat(
        self,
        job_ids: Iterable[int],
        *,
        queue_manager_id: QueueManagerId | uuid.UUID | None = None,
    ) -> None:
        """Set ``heartbeat = NOW()`` for the given job ids; with ``queue_manager_id``
        only for rows still picked by that worker."""
        ids = set(int_ids(job_ids))
        if not ids:
            return
        with self._statement() as s:
            for job_id in ids & s.db.jobs.keys():
                row = s.db.jobs[job_id]
                if _guard_passes(row, queue_manager_id):
                    row.heartbeat = s.now

    # -- inspection ------------------------------------------------------------------------

    def queue_size(self) -> list[QueueStatistics]:
        """Counts of queue rows by entrypoint, priority and status."""
        with self._statement() as s:
            counts = collections.Counter(
                (r.entrypoint, r.priority, r.status) for r in s.db.jobs.values()
            )
        stats = [QueueStatistics(n, QueueEntrypoint(e), p, st) for (e, p, st), n in counts.items()]
        return sorted(stats, key=lambda q: (q.count, q.entrypoint, q.priority, q.status))

    def queue_log(self) -> list[Log]:
        """Every log row, oldest first."""
        with self._statement() as s:
            return [r.to_log() for r in s.db.log_rows]

    def job_status(self, ids: Iterable[int]) -> list[tuple[JobId, JOB_STATUS]]:
        """The latest logged status of each job that has one, by job id."""
        wanted = set(int_ids(ids))
        latest: dict[int, _LogRow] = {}
        with self._statement() as s:
            for row in s.db.log_rows:
                if row.job_id in wanted:
                    seen = latest.get(row.job_id)
                    if seen is None or (row.created, row.id) > (seen.created, seen.id):
                        latest[row.job_id] = row
        return [(JobId(i), latest[i].status) for i in sorted(latest)]

    def queued_work(self, entrypoints: Iterable[str]) -> int:
        """Queued jobs of these entrypoints, deferred ones included."""
        return self._count_queued(entrypoints, eligible_only=False)

    def eligible_queued_work(self, entrypoints: Iterable[str]) -> int:
        """Queued jobs of these entrypoints that could run now (``execute_after <= NOW()``)."""
        return self._count_queued(entrypoints, eligible_only=True)

    def _count_queued(self, entrypoints: Iterable[str], *, eligible_only: bool) -> int:
        names = set(entrypoints)
        with self._statement() as s:
            return sum(
                1 for r in _queued(s, names) if not eligible_only or r.execute_after <= s.now
            )

    def poll_state(
        self,
        entrypoints: Iterable[str] | Mapping[str, EntrypointExecutionParameter | int],
        heartbeat_timeout: timedelta = HEARTBEAT_TIMEOUT,
    ) -> PollState:
        """Eligible work now? Delay to the next deferred job? Anything queued at all?
        When does the next picked job go stale?"""
        names, stale = stale_timeouts(entrypoints)
        timeouts = {
            n: heartbeat_timeout if t is None else t for n, t in zip(names, stale, strict=True)
        }
        with self._statement() as s:
            rows = list(_queued(s, set(names)))
            deadlines = [
                r.heartbeat + timeouts[r.entrypoint]
                for r in s.db.jobs.values()
                if r.status == "picked" and r.entrypoint in timeouts
            ]
            return PollState(
                eligible=any(r.execute_after <= s.now for r in rows),
                eta=_eta(rows, s.now),
                queued=bool(rows),
                stale_eta=min(deadlines) - s.now if deadlines else None,
            )

    def next_deferred_eta(self, entrypoints: Iterable[str]) -> timedelta | None:
        """Time until the soonest deferred job becomes eligible, or ``None``."""
        names = set(entrypoints)
        with self._statement() as s:
            return _eta(list(_queued(s, names)), s.now)

    # -- cleanup ---------------------------------------------------------------------------

    def clear_queue(self, entrypoint: str | Sequence[str] | None = None) -> None:
        """Delete jobs of some entrypoints (logged ``deleted``), or all (not logged)."""
        with self._statement() as s:
            if entrypoint is None:
                s.db.jobs.clear()
                s.table_changed("truncate")
                return
            names = set(entrypoint_names(entrypoint))
            for row in [r for r in s.db.jobs.values() if r.entrypoint in names]:
                del s.db.jobs[row.id]
                s.log(row, "deleted")
            s.table_changed("delete")

    def clear_queue_log(self, entrypoint: str | Sequence[str] | None = None) -> None:
        """Delete log rows of some entrypoints, or all of them."""
        with self._statement() as s:
            keep = _keeper(entrypoint)
            s.db.log_rows[:] = [r for r in s.db.log_rows if keep(r.entrypoint)]

    def clear_statistics_log(self, entrypoint: str | Sequence[str] | None = None) -> None:
        """Delete statistics rows of some entrypoints, or all of them."""
        with self._statement() as s:
            keep = _keeper(entrypoint)
            s.db.statistics = {k: v for k, v in s.db.statistics.items() if keep(v.entrypoint)}

    # -- statistics ------------------------------------------------------------------------

    def queue_table_health(self) -> TableHealth:
        """Always healthy: there is no planner and nothing to vacuum in memory."""
        now = self.driver.now()
        return TableHealth(reltuples=0.0, live=0, dead=0, modified=0, analyzed=now,
                           vacuumed=now, autovacuum=True, owner=True, now=now)

    def analyze_queue_table(self) -> None:
        """Nothing to do in memory."""

    def vacuum_queue_table(self) -> None:
        """Nothing to do in memory."""

    def aggregate_logs(self) -> None:
        """Fold new log rows into per-second statistics (the lock is the driver's)."""
        with self._statement() as s:
            _aggregate(s)

    def prune_expired(
        self, table: RetentionTable, keep: timedelta, *, after: int | None, batch_size: int
    ) -> RetentionStep:
        """As :meth:`Queries.prune_expired`; the lock is the driver's (always taken)
        and there is no results table (nothing to prune there)."""
        if table == "results":
            return RetentionStep(locked=True, deleted=0, last_id=None, done=True)
        with self._statement() as s:
            return _prune_step(s, table, s.now - keep, after, batch_size)

    def log_statistics(
        self, tail: int | None = None, last: timedelta | None = None, *, limit: int | None = None
    ) -> list[LogStatistics]:
        """Aggregate, then return the newest buckets (``tail``/``limit`` rows, ``last`` age)."""
        cap = limit if limit is not None else tail
        with self._statement() as s:
            _aggregate(s)
            rows = sorted(s.db.statistics.values(), key=lambda r: r.id, reverse=True)
            if last is not None:
                rows = [r for r in rows if r.created > s.now - last]
        if cap is not None:
            rows = rows[: _check_limit(cap)]
        return [
            LogStatistics(r.count, r.created, QueueEntrypoint(r.entrypoint), r.priority, r.status)
            for r in rows
        ]

    # -- schedules -------------------------------------------------------------------------

    def insert_schedule(
        self, schedules: Mapping[tuple[CronEntrypoint | str, CronExpression | str], timedelta]
    ) -> None:
        """Register ``(entrypoint, expression) -> delay until next run``; existing rows stay."""
        if not schedules:
            return
        params = schedule_params(schedules)
        with self._statement() as s:
            taken = {(r.entrypoint, r.expression) for r in s.db.schedules.values()}
            given = zip(params["entrypoints"], params["expressions"], params["delays"], strict=True)
            for ep, expr, delay in given:
                schedule_id = s.next_id("schedules")  # drawn before the conflict check
                if (ep, expr) in taken:
                    continue
                taken.add((ep, expr))
                s.db.schedules[schedule_id] = _ScheduleRow(
                    schedule_id, expr, ep, s.now, s.now, s.now, _trunc_seconds(s.now + delay)
                )

    def fetch_schedule(
        self, entries: Mapping[tuple[CronEntrypoint | str, CronExpression | str], timedelta]
    ) -> list[Schedule]:
        """Claim the due (or crashed, heartbeat older than 30 s) schedules among ``entries``."""
        if not entries:
            return []
        wanted = {(str(ep), str(expr)): delay for (ep, expr), delay in entries.items()}
        claimed: list[Schedule] = []
        with self._statement() as s:
            for row in sorted(s.db.schedules.values(), key=lambda r: r.id):
                delay = wanted.get((row.entrypoint, row.expression))
                if delay is None or not _schedule_due(row, s.now):
                    continue
                row.status, row.updated, row.heartbeat = "picked", s.now, s.now
                row.next_run = _trunc_seconds(s.now + delay)
                claimed.append(row.to_schedule())
        return claimed

    def set_schedule_queued(self, ids: Iterable[ScheduleId | int]) -> None:
        """Release schedules after their run, stamping ``last_run``."""
        with self._statement() as s:
            for row in _schedules(s, ids):
                row.status, row.last_run, row.updated = "queued", s.now, s.now

    def update_schedule_heartbeat(self, ids: Iterable[ScheduleId | int]) -> None:
        """Refresh the heartbeat of running schedules."""
        id_list = sorted(set(int_ids(ids)))
        if not id_list:
            return
        with self._statement() as s:
            for row in _schedules(s, id_list):
                row.heartbeat, row.updated = s.now, s.now

    def peek_schedule(self) -> list[Schedule]:
        """Every schedule row, by id."""
        with self._statement() as s:
            return [s.db.schedules[i].to_schedule() for i in sorted(s.db.schedules)]

    def delete_schedule(
        self, ids: Iterable[ScheduleId | int] = (), entrypoints: Iterable[str] = ()
    ) -> None:
        """Delete schedules matching any of ``ids`` or ``entrypoints``."""
        id_set, names = set(int_ids(ids)), set(entrypoints)
        with self._statement() as s:
            s.db.schedules = {
                i: r
                for i, r in s.db.schedules.items()
                if i not in id_set and r.entrypoint not in names
            }

    def clear_schedule(self) -> None:
        """Delete every schedule."""
        with self._statement() as s:
            s.db.schedules.clear()


# -- the claim ----------------------------------------------------------------------------


def _plan_claim(
    s: _Statement,
    registered: Mapping[str, _Registered],
    batch: int,
    me: QueueManagerId | uuid.UUID,
    budget: int | None,
    *,
    stale: bool = True,
) -> list[_Claim]:
    """Choose what one dequeue claims, following the SQL pipeline step by step."""
    rows = list(s.db.jobs.values())
    candidates: list[_Claim] = _fresh_open(s, rows, registered, batch)
    seats: dict[str, list[int]] = {}
    for name, reg in registered.items():
        if reg.limit > 0:
            candidates += _fresh_limited(s, rows, name, reg.limit, batch, seats)
    if stale:
        candidates += _stale(s, rows, registered, batch)
    candidates.sort(key=lambda c: c.row.order())
    if budget is not None:
        load = sum(1 for r in rows if r.queue_manager_id == me)
        cap = max(min(batch, budget - load), 0)
    else:
        cap = batch
    return _seat(candidates[:cap], seats)


def _claimable(s: _Statement, rows: Iterable[_JobRow], name: str) -> list[_JobRow]:
    found = [
        r for r in rows
        if r.entrypoint == name and r.status == "queued" and r.execute_after <= s.now
    ]
    return sorted(found, key=_JobRow.order)


def _fresh_open(
    s: _Statement, rows: list[_JobRow], registered: Mapping[str, _Registered], batch: int
) -> list[_Claim]:
    found = [
        r
        for name, reg in registered.items()
        if reg.limit == 0
        for r in _claimable(s, rows, name)[:batch]
    ]
    return [_Claim(r, "open") for r in sorted(found, key=_JobRow.order)[:batch]]


def _fresh_limited(
    s: _Statement,
    rows: list[_JobRow],
    name: str,
    limit: int,
    batch: int,
    seats: dict[str, list[int]],
) -> list[_Claim]:
    # In-flight counts every row holding a worker id, stale ones included.
    busy = sum(1 for r in rows if r.entrypoint == name and r.queue_manager_id is not None)
    if busy >= limit:
        return []
    room = min(batch, limit - busy)
    held = {r.slot for r in rows if r.entrypoint == name and r.status == "picked"}
    seats[name] = [seat for seat in range(busy + room) if seat not in held]
    return [_Claim(r, "limited") for r in _claimable(s, rows, name)[:room]]


def _stale(
    s: _Statement, rows: list[_JobRow], registered: Mapping[str, _Registered], batch: int
) -> list[_Claim]:
    # No capacity gate: a re-pick inherits the seat the stale row holds.
    found = [
        r
        for r in rows
        if r.status == "picked"
        and r.entrypoint in registered
        and r.heartbeat < s.now - registered[r.entrypoint].stale_after
        and r.execute_after <= s.now
    ]
    return [_Claim(r, "stale") for r in sorted(found, key=_JobRow.order)[:batch]]


def _seat(eligible: list[_Claim], seats: dict[str, list[int]]) -> list[_Claim]:
    """The k-th limited claim of an entrypoint takes its k-th free seat, or is dropped."""
    taken: collections.Counter[str] = collections.Counter()
    kept: list[_Claim] = []
    for claim in eligible:
        if claim.kind == "limited":
            name = claim.row.entrypoint
            free = seats.get(name, [])
            if taken[name] >= len(free):
                continue
            claim.seat = free[taken[name]]
            taken[name] += 1
        kept.append(claim)
    return kept


def _apply_claim(s: _Statement, claim: _Claim, me: QueueManagerId | uuid.UUID) -> _JobRow:
    row = claim.row
    row.status, row.updated, row.heartbeat = "picked", s.now, s.now
    row.queue_manager_id = me
    if claim.kind != "stale":
        row.slot = claim.seat
    s.log(row, "picked")
    return row


# -- helpers ------------------------------------------------------------------------------


def _no_results(results: Sequence[StoredResult]) -> None:
    if results:
        raise ConfigurationError(
            "the in-memory adapter cannot store job results; use PostgreSQL for store_results"
        )


def _finish(
    s: _Statement,
    params: Mapping[str, list[Any]],
    queue_manager_id: QueueManagerId | uuid.UUID | None = None,
) -> list[JobId]:
    """The completion write: delete, hold ``failed`` or retry (``queued``) and log rows
    that still exist (with ``queue_manager_id``: still picked by that worker)."""
    done: dict[int, tuple[JOB_STATUS, Any, timedelta | None, datetime | None]] = {}
    for job_id, status, record, delay, claimed in zip(
        params["ids"], params["statuses"], params["tracebacks"], params["delays"],
        params["claimed"], strict=True,
    ):
        stored = None if record is None else _json_copy(record.obj)
        done.setdefault(job_id, (cast("JOB_STATUS", status), stored, delay, claimed))
    removed: list[tuple[_JobRow, JOB_STATUS, Any]] = []
    updated: list[tuple[_JobRow, JOB_STATUS, Any]] = []
    for job_id, (status, record, delay, claimed) in done.items():
        row = s.db.jobs.get(job_id)
        if row is None or not _guard_passes(row, queue_manager_id):
            continue
        if queue_manager_id is not None and claimed is not None and row.updated != claimed:
            continue  # the same worker claimed it anew since
        if status == "queued":
            s.reactivate([row])
            row.status, row.execute_after = "queued", s.now + (delay or timedelta(0))
            row.attempts += 1
            row.updated, row.queue_manager_id = s.now, None
            updated.append((row, status, record))
        elif status == "failed":
            row.status, row.updated, row.queue_manager_id = "failed", s.now, None
            updated.append((row, status, record))
        else:
            del s.db.jobs[job_id]
            removed.append((row, status, record))
    for row, status, record in removed + updated:
        s.log(row, status, record)
    if updated:
        s.table_changed("update")
    s.table_changed("delete")  # the DELETE runs even when only holds (or nothing) match
    return [JobId(row.id) for row, _, _ in removed + updated]


def _bulk_rows(s: _Statement, plan: BulkPlan) -> list[_JobRow]:
    """The rows a bulk action selects, up to ``plan.last_id`` (if planned), by id."""
    names = None if plan.entrypoints is None else set(plan.entrypoints)
    found = [
        r for r in s.db.jobs.values()
        if r.status in plan.statuses
        and (names is None or r.entrypoint in names)
        and (plan.last_id is None or r.id <= plan.last_id)
    ]
    return sorted(found, key=lambda r: r.id)


def _requeue_batch(s: _Statement, rows: list[_JobRow]) -> list[BulkRow]:
    """Requeue held rows as the bulk statement does: a row whose dedupe key an active
    job holds, or an earlier row of the batch has, stays held."""
    active = s.active_keys()
    seen: set[str] = set()
    moved: list[_JobRow] = []
    for row in rows:
        key = row.dedupe_key
        if key is None or (key not in seen and key not in active):
            moved.append(row)
        if key is not None:
            seen.add(key)
    for row in moved:
        row.status, row.execute_after, row.updated = "queued", s.now, s.now
        row.attempts, row.queue_manager_id = 0, None
        s.log(row, "queued")
    if moved:
        s.table_changed("update")
    done = {r.id for r in moved}
    return [BulkRow(r.id, r.entrypoint if r.id in done else None, r.id in done) for r in rows]


def _purge_batch(s: _Statement, rows: list[_JobRow]) -> list[BulkRow]:
    """Delete queued rows, logging each ``deleted``; the DELETE's trigger fires even
    for an empty batch, as in the database."""
    for row in rows:
        del s.db.jobs[row.id]
        s.log(row, "deleted")
    s.table_changed("delete")
    return [BulkRow(r.id, r.entrypoint, True) for r in rows]


def _guard_passes(row: _JobRow, queue_manager_id: QueueManagerId | uuid.UUID | None) -> bool:
    return queue_manager_id is None or (
        row.status == "picked" and row.queue_manager_id == queue_manager_id
    )


def _aggregate(s: _Statement) -> None:
    buckets: collections.Counter[tuple[int, datetime, str, str]] = collections.Counter()
    for row in s.db.log_rows:
        if not row.aggregated:
            row.aggregated = True
            created = _trunc_seconds(row.created).astimezone(timezone.utc)
            buckets[(row.priority, created, row.status, row.entrypoint)] += 1
    for key, count in buckets.items():
        existing = s.db.statistics.get(key)
        if existing is not None:
            existing.count += count
            continue
        priority, created, status, entrypoint = key
        s.db.statistics[key] = _StatRow(
            s.next_id("statistics"),
            created,
            count,
            priority,
            cast("JOB_STATUS", status),
            entrypoint,
        )


def _prune_step(
    s: _Statement, table: str, cutoff: datetime, after: int | None, batch: int
) -> RetentionStep:
    # The same walk as the SQL (sql/ops.py retention_batch): the next ``batch``
    # rows by id, old and eligible ones deleted; a batch without old rows ends the walk.
    rows: list[Any] = s.db.log_rows if table == "log" else sorted(
        s.db.statistics.values(), key=lambda r: r.id)
    seen = [r for r in rows if after is None or r.id > after][:batch]
    doomed = {
        r.id for r in seen
        if r.created < cutoff and (table != "log" or (r.aggregated and r.job_id not in s.db.jobs))
    }
    if table == "log":
        s.db.log_rows[:] = [r for r in s.db.log_rows if r.id not in doomed]
    else:
        for key in [k for k, r in s.db.statistics.items() if r.id in doomed]:
            del s.db.statistics[key]
    old = any(r.created < cutoff for r in seen)
    return RetentionStep(locked=True, deleted=len(doomed),
                         last_id=max((r.id for r in seen), default=None),
                         done=len(seen) < batch or not old)


def _new_job(now: datetime, job_id: int, rows: Mapping[str, list[Any]], i: int) -> _JobRow:
    at: datetime | None = rows["at"][i]
    return _JobRow(
        id=job_id,
        priority=rows["priority"][i],
        created=now,
        updated=now,
        heartbeat=now,
        execute_after=at if at is not None else now + rows["delay"][i],
        status="queued",
        entrypoint=rows["entrypoint"][i],
        dedupe_key=rows["dedupe_key"][i],
        payload=rows["payload"][i],
        headers=_json_copy(rows["headers"][i].obj),
    )


def _queued(s: _Statement, names: set[str]) -> Iterator[_JobRow]:
    return (r for r in s.db.jobs.values() if r.status == "queued" and r.entrypoint in names)


def _eta(rows: Iterable[_JobRow], now: datetime) -> timedelta | None:
    deferred = [r.execute_after for r in rows if r.execute_after > now]
    return min(deferred) - now if deferred else None


def _schedules(s: _Statement, ids: Iterable[ScheduleId | int]) -> list[_ScheduleRow]:
    return [s.db.schedules[i] for i in set(int_ids(ids)) if i in s.db.schedules]


def _schedule_due(row: _ScheduleRow, now: datetime) -> bool:
    if row.status == "queued":
        return row.next_run <= now
    return row.status == "picked" and now - row.heartbeat > _SCHEDULE_STALE


def _keeper(entrypoint: str | Sequence[str] | None) -> Callable[[str], bool]:
    if entrypoint is None:
        return lambda _name: False
    names = set(entrypoint_names(entrypoint))
    return lambda name: name not in names


def _coalesce(value: timedelta | None, default: timedelta) -> timedelta:
    return default if value is None else value  # COALESCE: only NULL falls back


def _check_limit(limit: int) -> int:
    if limit < 0:
        raise DatabaseError("LIMIT must not be negative", sqlstate="2201W")
    return limit


def _json_copy(value: Any) -> Any:
    """Store a value as ``jsonb`` would: a detached copy of its JSON form."""
    return json.loads(json.dumps(value))


def _trunc_seconds(value: datetime) -> datetime:
    return value.replace(microsecond=0)


def _pg_json_time(value: datetime) -> str:
    """A timestamptz as PostgreSQL writes it into JSON (fraction without trailing zeros)."""
    utc = value.astimezone(timezone.utc)
    fraction = f"{utc.microsecond:06d}".rstrip("0")
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "+00:00"


__all__ = ["InMemoryDriver", "InMemoryQueries"]
