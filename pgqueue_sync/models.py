"""Plain dataclasses for rows and events, with PgQueuer's field names."""

from __future__ import annotations

import dataclasses
import json
import re
import traceback as tb_module
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from .errors import RetryRequested
from .types import (
    JOB_STATUS,
    Channel,
    CronEntrypoint,
    CronExpression,
    HealthCheckId,
    JobId,
    QueueEntrypoint,
    QueueManagerId,
    ScheduleId,
)

_FRACTION = re.compile(r"\.(\d+)")


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


def _json_object(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        value = json.loads(value)
    return dict(value) if isinstance(value, Mapping) else None


@dataclasses.dataclass(frozen=True)
class Job:
    """A row of the queue table as handed to a handler.

    ``slot`` is the concurrency seat held while picked under a ``concurrency_limit``.
    ``headers`` is the JSON object stored with the job (``None`` when absent).
    """

    id: JobId
    priority: int
    created: datetime
    updated: datetime
    heartbeat: datetime
    execute_after: datetime
    status: JOB_STATUS
    entrypoint: QueueEntrypoint
    payload: bytes | None
    attempts: int = 0
    queue_manager_id: QueueManagerId | None = None
    slot: int | None = None
    headers: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        """Build a job from a database row mapping (extra columns are ignored)."""
        payload = row["payload"]
        return cls(
            id=JobId(row["id"]),
            priority=row["priority"],
            created=row["created"],
            updated=row["updated"],
            heartbeat=row["heartbeat"],
            execute_after=row["execute_after"],
            status=row["status"],
            entrypoint=QueueEntrypoint(row["entrypoint"]),
            payload=bytes(payload) if payload is not None else None,
            attempts=row.get("attempts", 0),
            queue_manager_id=row.get("queue_manager_id"),
            slot=row.get("slot"),
            headers=_json_object(row.get("headers")),
        )

    def header_section(self, key: str) -> dict[str, Any] | None:
        """The nested header object under ``key``, or ``None`` when absent or not an object."""
        section = None if self.headers is None else self.headers.get(key)
        return section if isinstance(section, dict) else None

    def logfire_headers(self) -> dict[str, Any] | None:
        """The ``logfire`` propagation headers, if any."""
        return self.header_section("logfire")

    def sentry_headers(self) -> dict[str, Any] | None:
        """The ``sentry`` propagation headers, if any."""
        return self.header_section("sentry")

    def otel_headers(self) -> dict[str, Any] | None:
        """The ``otel`` W3C propagation carrier, if any."""
        return self.header_section("otel")


@dataclasses.dataclass(frozen=True)
class TracebackRecord:
    """The JSON object stored in ``pgqueuer_log.traceback`` for failures and retries."""

    job_id: JobId
    timestamp: datetime
    exception_type: str
    exception_message: str
    traceback: str
    additional_context: dict[str, Any] | None = None

    @classmethod
    def from_exception(
        cls,
        exc: BaseException,
        *,
        job_id: JobId,
        additional_context: dict[str, Any] | None = None,
    ) -> TracebackRecord:
        """Describe ``exc`` (type, message and formatted traceback) for the log.

        Never raises, whatever ``exc`` is: a ``__str__`` that fails gives a
        placeholder message, and text ``jsonb`` cannot hold (NUL characters,
        lone surrogates) is replaced, so the record is always storable.
        """
        context = None if additional_context is None else {
            key: storable_text(value) if isinstance(value, str) else value
            for key, value in additional_context.items()
        }
        return cls(
            job_id=job_id,
            timestamp=utc_now(),
            exception_type=storable_text(type(exc).__name__),
            exception_message=storable_text(_describe(exc)),
            traceback=storable_text(_format_traceback(exc)),
            additional_context=context,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready mapping, timestamps as ISO 8601 with a ``Z`` suffix."""
        return {
            "job_id": int(self.job_id),
            "timestamp": _iso_z(self.timestamp),
            "exception_type": self.exception_type,
            "exception_message": self.exception_message,
            "traceback": self.traceback,
            "additional_context": self.additional_context,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> TracebackRecord:
        """Parse the stored JSON object (as written by us or by PgQueuer)."""
        return cls(
            job_id=JobId(value["job_id"]),
            timestamp=_parse_datetime(value["timestamp"]),
            exception_type=value["exception_type"],
            exception_message=value["exception_message"],
            traceback=value["traceback"],
            additional_context=value.get("additional_context"),
        )


def storable_text(text: str) -> str:
    """``text`` as PostgreSQL's ``jsonb`` accepts it: NUL characters become U+FFFD and
    lone surrogates become ``?`` (jsonb rejects both, and one rejected record must
    not block a batch of outcomes)."""
    text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _describe(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not lose the job's outcome
        return f"<unprintable {type(exc).__name__}>"


def _format_traceback(exc: BaseException) -> str:
    try:
        return "".join(tb_module.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        return f"<traceback unavailable for {type(exc).__name__}>"


def failure_record(
    job: Job, error: BaseException, queue_manager_id: uuid.UUID | str, **extra: Any
) -> TracebackRecord:
    """The log record of a job's failure or retry, as every worker of ours writes it.

    ``additional_context`` names the entrypoint, the worker and the dotted
    class path of the exception (of its cause, for a ``RetryRequested`` raised
    from one), which readers such as the Django Tasks backend use; PgQueuer
    ignores the keys. ``extra`` is added to it.
    """
    cause = error.__cause__ if isinstance(error, RetryRequested) else None
    kind = type(cause or error)
    context = {
        "entrypoint": job.entrypoint,
        "queue_manager_id": str(queue_manager_id),
        "exception_class_path": f"{kind.__module__}.{kind.__qualname__}",
    }
    return TracebackRecord.from_exception(
        error, job_id=job.id, additional_context={**context, **extra}
    )


@dataclasses.dataclass(frozen=True)
class Log:
    """One status transition from the log table."""

    created: datetime
    job_id: JobId
    status: JOB_STATUS
    priority: int
    entrypoint: QueueEntrypoint
    traceback: TracebackRecord | None
    aggregated: bool | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Log:
        """Build a log entry from a database row mapping."""
        raw = _json_object(row["traceback"])
        return cls(
            created=row["created"],
            job_id=JobId(row["job_id"]),
            status=row["status"],
            priority=row["priority"],
            entrypoint=QueueEntrypoint(row["entrypoint"]),
            traceback=TracebackRecord.from_json(raw) if raw else None,
            aggregated=row["aggregated"],
        )


@dataclasses.dataclass(frozen=True)
class QueueStatistics:
    """How many rows of one entrypoint, priority and status sit in the queue table."""

    count: int
    entrypoint: QueueEntrypoint
    priority: int
    status: JOB_STATUS


@dataclasses.dataclass(frozen=True)
class LogStatistics:
    """Per-second count of transitions for one entrypoint, priority and status."""

    count: int
    created: datetime
    entrypoint: QueueEntrypoint
    priority: int
    status: JOB_STATUS


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A row of the schedules table."""

    id: ScheduleId
    expression: CronExpression
    heartbeat: datetime
    created: datetime
    updated: datetime
    next_run: datetime
    last_run: datetime | None
    status: JOB_STATUS
    entrypoint: CronEntrypoint

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Schedule:
        """Build a schedule from a database row mapping."""
        return cls(
            id=ScheduleId(row["id"]),
            expression=CronExpression(row["expression"]),
            heartbeat=row["heartbeat"],
            created=row["created"],
            updated=row["updated"],
            next_run=row["next_run"],
            last_run=row["last_run"],
            status=row["status"],
            entrypoint=CronEntrypoint(row["entrypoint"]),
        )


@dataclasses.dataclass(frozen=True)
class TableChangedEvent:
    """Sent by the trigger on INSERT, DELETE and TRUNCATE of the queue table."""

    channel: Channel
    sent_at: datetime
    operation: str
    table: str
    received_at: datetime = dataclasses.field(default_factory=utc_now)
    type: str = "table_changed_event"


@dataclasses.dataclass(frozen=True)
class CancellationEvent:
    """Asks every worker running one of ``ids`` to cancel it."""

    channel: Channel
    sent_at: datetime
    ids: list[JobId]
    received_at: datetime = dataclasses.field(default_factory=utc_now)
    type: str = "cancellation_event"


@dataclasses.dataclass(frozen=True)
class HealthCheckEvent:
    """A worker's self-addressed probe of its own LISTEN connection."""

    channel: Channel
    sent_at: datetime
    id: HealthCheckId
    received_at: datetime = dataclasses.field(default_factory=utc_now)
    type: str = "health_check_event"


AnyEvent = TableChangedEvent | CancellationEvent | HealthCheckEvent


def parse_event(payload: str | bytes) -> AnyEvent | None:
    """Parse a NOTIFY payload; ``None`` for malformed JSON or an unknown ``type``.

    Never raises: a channel is shared with other processes, and one bad payload
    must not take a listener down.
    """
    try:
        data = json.loads(payload)
        kind = data["type"]
        channel = Channel(str(data["channel"]))
        sent_at = _parse_datetime(data["sent_at"])
        if kind == "table_changed_event":
            return TableChangedEvent(
                channel=channel, sent_at=sent_at, operation=data["operation"], table=data["table"]
            )
        if kind == "cancellation_event":
            ids = [JobId(int(i)) for i in data["ids"]]
            return CancellationEvent(channel=channel, sent_at=sent_at, ids=ids)
        if kind == "health_check_event":
            return HealthCheckEvent(
                channel=channel, sent_at=sent_at, id=HealthCheckId(uuid.UUID(str(data["id"])))
            )
    except Exception:  # OverflowError, RecursionError, ...: anything from a hostile payload
        return None
    return None


def dump_event(event: CancellationEvent | HealthCheckEvent) -> str:
    """The compact JSON payload for a client-sent event, shaped as PgQueuer sends it."""
    data: dict[str, Any] = {
        "channel": event.channel,
        "sent_at": _iso_z(event.sent_at),
        "type": event.type,
        "received_at": _iso_z(event.received_at),
    }
    if isinstance(event, CancellationEvent):
        data["ids"] = [int(i) for i in event.ids]
    else:
        data["id"] = str(event.id)
    return json.dumps(data, separators=(",", ":"))


def _iso_z(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _parse_datetime(value: object) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    else:
        text = str(value).strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        # Python 3.10 accepts only 3 or 6 fraction digits; PostgreSQL trims zeros.
        text = _FRACTION.sub(lambda m: "." + m.group(1).ljust(6, "0")[:6], text)
        parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("timestamp must carry a UTC offset")
    return parsed


@dataclasses.dataclass(frozen=True)
class TableHealth:
    """The queue table's counters, as ``pg_class`` and ``pg_stat_user_tables`` have them.

    ``reltuples`` is -1 until the table is first analyzed; ``autovacuum`` is
    false when the server has it off or the table opts out; ``owner`` tells
    whether this role may ANALYZE and VACUUM it.
    """

    reltuples: float
    live: int
    dead: int
    modified: int
    analyzed: datetime | None
    vacuumed: datetime | None
    autovacuum: bool
    owner: bool
    now: datetime


@dataclasses.dataclass(frozen=True)
class RetentionStep:
    """One retention statement (:meth:`Queries.prune_expired`): its own short transaction.

    ``locked`` is false when another session held the retention lock: the step
    did nothing. ``last_id`` is the highest id it looked at (the next step
    starts after it; ``None`` where the table is not walked by id). ``done``:
    nothing older than the window is left to look at in this pass.
    """

    locked: bool
    deleted: int
    last_id: int | None
    done: bool
