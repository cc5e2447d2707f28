"""The in-memory queue's rows, one dataclass per PostgreSQL table, and how values
are stored (``jsonb`` as a detached copy, timestamps truncated to the second)."""

from __future__ import annotations

import copy
import dataclasses
import json
import uuid
from datetime import datetime
from typing import Any

from ...models import Job, Log, Schedule
from ...types import JOB_STATUS

ACTIVE_STATUSES: frozenset[str] = frozenset({"queued", "picked"})  # the partial dedupe index


@dataclasses.dataclass
class JobRow:
    """A row of the queue table."""

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
class LogRow:
    """A row of the log table."""

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
class StatRow:
    """A row of the statistics table: one per-second bucket of log rows."""

    id: int
    created: datetime
    count: int
    priority: int
    status: JOB_STATUS
    entrypoint: str


@dataclasses.dataclass
class ScheduleRow:
    """A row of the schedules table."""

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


def json_copy(value: Any) -> Any:
    """Store a value as ``jsonb`` would: a detached copy of its JSON form."""
    return json.loads(json.dumps(value))


def trunc_seconds(value: datetime) -> datetime:
    """``date_trunc('seconds', value)``."""
    return value.replace(microsecond=0)
