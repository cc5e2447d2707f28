"""Where a Django Task's state lives in the queue's tables, and how it is read back.

A task job is an ordinary queue job on entrypoint ``django_tasks:<queue>``
whose payload is the JSON *task record* (task path, arguments, backend,
retry policy). At enqueue the same record is written to the results table
(status ``queued``), in the caller's transaction; the worker's outcome write
then sets the final status and, on success, the return value. So a task's
state survives restarts and can be read from any process:

* the queue row (while it exists) says READY, RUNNING or FAILED (held);
* the results row says how it ended and holds the record and return value;
* the log rows give the timestamps, the attempts and the errors.

SQL names come from :class:`~pgqueue_sync.settings.DBSettings` as identifiers;
values are bound parameters.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from ...drivers.base import Driver
from ...queries.batch import enqueue_params, normalize_batch
from ...settings import DBSettings
from ...sql.statements import Statements
from ...tracing import TracingProtocol
from ...types import JobId

#: Entrypoints of task jobs are this prefix plus the task's queue name.
TASK_ENTRYPOINT_PREFIX = "django_tasks:"
#: The results-table key holding the task record (and ``return_value`` on success).
RECORD_KEY = "task_record"
RETURN_KEY = "return_value"
#: Record format version, for readers of other releases.
RECORD_VERSION = 1


def task_entrypoint(queue_name: str) -> str:
    """The queue entrypoint that carries the Django Tasks queue ``queue_name``."""
    return TASK_ENTRYPOINT_PREFIX + queue_name


@dataclasses.dataclass(frozen=True)
class TaskRecord:
    """What a task job carries: enough to rebuild the ``Task`` and its ``TaskResult``."""

    task_path: str
    args: list[Any]
    kwargs: dict[str, Any]
    backend: str
    queue_name: str
    priority: int
    max_attempts: int
    retry_delay: float

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored as payload and in the results table.

        A shallow ``dataclasses.asdict`` (that one deep-copies the arguments,
        which cost more than the rest of a no-op task's run): it shares
        ``args`` and ``kwargs`` with the record, which nothing mutates (the
        task gets the copies ``TaskResult`` makes), and callers serialise it.
        """
        data: dict[str, Any] = {"v": RECORD_VERSION}
        for name in _RECORD_FIELDS:
            data[name] = getattr(self, name)
        return data

    def to_payload(self) -> bytes:
        """The job payload: the record as compact UTF-8 JSON."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskRecord:
        """Parse a stored record; raises ``KeyError``/``TypeError`` when it is not one."""
        return cls(
            task_path=str(data["task_path"]),
            args=list(data["args"]),
            kwargs=dict(data["kwargs"]),
            backend=str(data["backend"]),
            queue_name=str(data["queue_name"]),
            priority=int(data["priority"]),
            max_attempts=int(data.get("max_attempts", 1)),
            retry_delay=float(data.get("retry_delay", 0.0)),
        )

    @classmethod
    def from_payload(cls, payload: bytes | None) -> TaskRecord:
        """Parse a job payload; raises ``ValueError`` when it is not a task record."""
        try:
            # Decoded first: json.loads() of bytes sniffs the encoding (UTF-8 here).
            return cls.from_json(json.loads(payload.decode() if payload else ""))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a Django task record ({exc!r})") from None


_RECORD_FIELDS = tuple(field.name for field in dataclasses.fields(TaskRecord))


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One run of a task: when it started and which worker ran it."""

    started: datetime
    worker_id: str | None = None


@dataclasses.dataclass(frozen=True)
class RecordedError:
    """A failure recorded in the log: the exception's class path and traceback text."""

    exception_class_path: str
    traceback: str


@dataclasses.dataclass(frozen=True)
class TaskState:
    """Everything the tables say about one task job."""

    job_id: JobId
    record: TaskRecord
    status: str  # READY, RUNNING, SUCCESSFUL or FAILED
    enqueued_at: datetime | None
    finished_at: datetime | None
    attempts: list[Attempt]
    errors: list[RecordedError]
    return_value: Any = None


class TaskStore:
    """Writes and reads task state through a driver (one or two statements a call)."""

    def __init__(
        self, driver: Driver, settings: DBSettings, *, tracer: TracingProtocol | None = None
    ) -> None:
        self.driver = driver
        self.settings = settings
        self.tracer = tracer
        statements = Statements(settings)
        self._queue_table_text = statements.queue_table_text
        self._enqueue = statements.enqueue_then([_DESCRIBE_TASK], _ENQUEUED_JOB)
        names = {
            "queue": settings.ident("queue_table"),
            "log": settings.ident("queue_table_log"),
            "results": settings.ident("results_table"),
        }
        self._select = sql.SQL(_SELECT).format(**names)

    def enqueue(
        self,
        record: TaskRecord,
        *,
        run_after: datetime | None,
        headers: Mapping[str, Any] | None = None,
    ) -> tuple[JobId, datetime]:
        """Insert the task's job, its ``queued`` log row and its results row; one statement.

        Returns the job id and the time the rows carry (the transaction's
        ``NOW()``, which :meth:`load` reports as ``enqueued_at``). Being one
        statement it needs no transaction of its own: inside the caller's
        ``atomic()`` it joins it, outside it commits by itself.
        """
        params = {
            **_one_job(record, run_after, headers),
            "table": self._queue_table_text,
            "record": Jsonb({RECORD_KEY: record.to_json()}),
        }
        [row] = self.driver.fetch(self._enqueue, params)
        return JobId(row["id"]), _at(row)  # as load() converts it: equal results

    def load(self, job_id: int) -> TaskState | None:
        """The state of task job ``job_id``, or ``None`` when there is no such task."""
        rows = self.driver.fetch(self._select, {"id": job_id, "prefix": TASK_ENTRYPOINT_PREFIX})
        if not rows:
            return None
        return _state(JobId(job_id), rows[0])


# After the shared enqueue (the queue row and its 'queued' log row, as every
# enqueue writes them; the trigger notifies the workers): the results row
# describing the task. The job's ``created`` is its default, this NOW().
_DESCRIBE_TASK = """described AS (
    INSERT INTO {results} (job_id, entrypoint, status, result, created, finished, attempts)
    SELECT id, entrypoint, 'queued', %(record)s, NOW(), NOW(), 0 FROM written
)"""

_ENQUEUED_JOB = "SELECT id, extract(epoch FROM NOW()) AS at FROM written\n"


def _one_job(
    record: TaskRecord, run_after: datetime | None, headers: Mapping[str, Any] | None
) -> dict[str, str]:
    """The shared enqueue's array parameters for the task's one job (no dedupe key),
    checked and rendered as every enqueue's are."""
    columns = normalize_batch(task_entrypoint(record.queue_name), record.to_payload(),
                              record.priority, run_after, None, headers)
    return enqueue_params(columns)


_SELECT = """
SELECT r.status AS result_status, r.result, r.finished,
       r.queue_manager_id::text AS result_worker,
       q.status::text AS queue_status, q.queue_manager_id::text AS queue_worker,
       (SELECT COALESCE(json_agg(json_build_object(
                   'status', l.status::text,
                   'at', extract(epoch FROM l.created),
                   'traceback', l.traceback) ORDER BY l.id), '[]'::json)
        FROM {log} l WHERE l.job_id = r.job_id) AS log
FROM {results} r
LEFT JOIN {queue} q ON q.id = r.job_id
WHERE r.job_id = %(id)s AND starts_with(r.entrypoint, %(prefix)s)
"""

_QUEUE_STATUS = {"queued": "READY", "picked": "RUNNING", "failed": "FAILED"}
_TERMINAL = frozenset({"successful", "exception", "canceled", "deleted", "failed"})


def _state(job_id: JobId, row: Mapping[str, Any]) -> TaskState | None:
    stored = row["result"] if isinstance(row["result"], Mapping) else {}
    try:
        record = TaskRecord.from_json(stored[RECORD_KEY])
    except (KeyError, TypeError, ValueError):
        return None
    log = _decode(row["log"])
    ended = row["result_status"] in _TERMINAL
    return TaskState(
        job_id=job_id,
        record=record,
        status=_status(row["queue_status"], row["result_status"]),
        enqueued_at=next((_at(e) for e in log if e["status"] == "queued"), None),
        finished_at=row["finished"] if ended and row["queue_status"] is None else None,
        attempts=_attempts(log, row["queue_worker"] or row["result_worker"]),
        errors=_errors(log),
        return_value=stored.get(RETURN_KEY) if row["result_status"] == "successful" else None,
    )


def _status(queue_status: str | None, result_status: str) -> str:
    if queue_status is not None:
        return _QUEUE_STATUS.get(queue_status, "READY")
    # The job row is gone: it ended. A row still 'queued' means it was removed
    # without running (cancelled, deleted, cleared).
    return "SUCCESSFUL" if result_status == "successful" else "FAILED"


def _attempts(log: Sequence[Mapping[str, Any]], last_worker: str | None) -> list[Attempt]:
    attempts: list[Attempt] = []
    for entry in log:
        if entry["status"] == "picked":
            attempts.append(Attempt(_at(entry)))
            continue
        worker = _context(entry).get("queue_manager_id")
        if attempts and worker and attempts[-1].worker_id is None:
            attempts[-1] = dataclasses.replace(attempts[-1], worker_id=str(worker))
    if attempts and attempts[-1].worker_id is None and last_worker:
        attempts[-1] = dataclasses.replace(attempts[-1], worker_id=last_worker)
    return attempts


def _errors(log: Sequence[Mapping[str, Any]]) -> list[RecordedError]:
    errors = []
    for entry in log:
        record = entry.get("traceback")
        if not isinstance(record, Mapping):
            continue
        context = _context(entry)
        # Failures and retries are the task's errors; a 'queued' row written
        # by a worker handing jobs back at shutdown is not.
        if entry["status"] == "queued" and "retry_delay" not in context:
            continue
        if entry["status"] not in ("exception", "failed", "queued"):
            continue
        path = context.get("exception_class_path") or _builtin(record.get("exception_type"))
        errors.append(RecordedError(str(path), str(record.get("traceback") or "")))
    return errors


def _context(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    record = entry.get("traceback")
    context = record.get("additional_context") if isinstance(record, Mapping) else None
    return context if isinstance(context, Mapping) else {}


def _builtin(name: object) -> str:
    # PgQueuer's workers record the bare class name only.
    text = str(name or "Exception")
    return text if "." in text else f"builtins.{text}"


def _decode(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, (str, bytes)):
        value = json.loads(value)
    return [dict(e) for e in value or []]


def _at(entry: Mapping[str, Any]) -> datetime:
    return datetime.fromtimestamp(float(entry["at"]), tz=timezone.utc)
