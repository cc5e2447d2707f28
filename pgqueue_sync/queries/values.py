"""Checks and row mappings both adapters share (the enqueue batch has :mod:`.batch`).

The PostgreSQL :class:`~pgqueue_sync.queries.Queries` and the in-memory
:class:`~pgqueue_sync.testing.InMemoryQueries` validate their arguments and map
rows through these functions, so both raise the same errors and return the same
values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from ..errors import ConfigurationError
from ..models import Job, TracebackRecord
from ..types import JOB_STATUSES, CronEntrypoint, CronExpression, JobId
from .models import EntrypointExecutionParameter, ErrorRecord, JobOutcome, JobRetry


def check_status(status: str) -> None:
    """Refuse a status that is not one of PgQueuer's job statuses."""
    if status not in JOB_STATUSES:
        raise ConfigurationError(f"unknown job status {status!r}; use one of {JOB_STATUSES}")


def int_ids(ids: Iterable[int]) -> list[int]:
    """Job (or schedule) ids as plain ints, in the order given."""
    return [int(i) for i in ids]


def entrypoint_names(value: str | Sequence[str]) -> list[str]:
    """One entrypoint name or several, as a list."""
    return [value] if isinstance(value, str) else list(value)


def limit_of(value: EntrypointExecutionParameter | int) -> int:
    """The checked fleet-wide concurrency limit of a registered entrypoint (0: none)."""
    limit = value.concurrency_limit if isinstance(value, EntrypointExecutionParameter) else value
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigurationError(f"concurrency_limit must be an int >= 0, got {limit!r}")
    return limit


def stale_after_of(value: EntrypointExecutionParameter | int) -> timedelta | None:
    """An entrypoint's own stale-job timeout (``None``: the worker's heartbeat timeout)."""
    return value.stale_after if isinstance(value, EntrypointExecutionParameter) else None


def stale_timeouts(
    entrypoints: Iterable[str] | Mapping[str, EntrypointExecutionParameter | int],
) -> tuple[list[str], list[timedelta | None]]:
    """The entrypoint names and, per name, its own stale-job timeout (or ``None``)."""
    if not isinstance(entrypoints, Mapping):
        names = list(entrypoints)
        return names, [None] * len(names)
    return list(entrypoints), [stale_after_of(v) for v in entrypoints.values()]


def outcome_params(
    job_status: Iterable[JobOutcome], retries: Iterable[JobRetry] = ()
) -> dict[str, list[Any]]:
    """Checked outcomes and retries as parallel columns (``{}`` when there are none):
    ``ids``, ``statuses``, ``tracebacks`` (``Jsonb`` or ``None``), ``delays`` and
    ``claimed``."""
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
        check_status(status)
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


def schedule_params(
    entries: Mapping[tuple[CronEntrypoint | str, CronExpression | str], timedelta],
) -> dict[str, list[Any]]:
    """Schedule entries as parallel columns: ``entrypoints``, ``expressions``, ``delays``."""
    keys = list(entries)
    return {
        "entrypoints": [k[0] for k in keys],
        "expressions": [k[1] for k in keys],
        "delays": [entries[k] for k in keys],
    }


def error_record(row: Mapping[str, Any]) -> ErrorRecord | None:
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
