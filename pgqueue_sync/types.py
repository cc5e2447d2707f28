"""Small shared types: ids, status labels and the literal option sets."""

from __future__ import annotations

import enum
import uuid
from typing import Literal, NewType

JobId = NewType("JobId", int)
ScheduleId = NewType("ScheduleId", int)
QueueEntrypoint = NewType("QueueEntrypoint", str)
CronEntrypoint = NewType("CronEntrypoint", str)
CronExpression = NewType("CronExpression", str)
QueueManagerId = NewType("QueueManagerId", uuid.UUID)
HealthCheckId = NewType("HealthCheckId", uuid.UUID)
Channel = NewType("Channel", str)
Slot = NewType("Slot", int)

JOB_STATUS = Literal[
    "queued", "picked", "successful", "exception", "canceled", "deleted", "failed"
]
#: Enum labels in ``enumsortorder``: the order is part of the database contract.
JOB_STATUSES: tuple[JOB_STATUS, ...] = (
    "queued",
    "picked",
    "successful",
    "exception",
    "canceled",
    "deleted",
    "failed",
)
#: Statuses after which the row has left the queue table for good.
TERMINAL_STATUSES: frozenset[JOB_STATUS] = frozenset(
    {"successful", "exception", "canceled", "deleted"}
)

EVENT_TYPES = Literal["table_changed_event", "cancellation_event", "health_check_event"]
OPERATIONS = Literal["insert", "update", "delete", "truncate"]
OnConflict = Literal["raise", "skip", "update_priority"]
OnFailure = Literal["delete", "hold"]
ON_CONFLICT_MODES: tuple[OnConflict, ...] = ("raise", "skip", "update_priority")
ON_FAILURE_MODES: tuple[OnFailure, ...] = ("delete", "hold")
#: Where an entrypoint's ``def`` handler runs: a worker thread, or a child process
#: that a timeout or a cancellation can kill (``entrypoint(isolation=...)``).
Isolation = Literal["thread", "process"]
#: The tables the worker's pruner keeps within their retention window (docs/retention.md).
RetentionTable = Literal["log", "statistics", "results"]
ISOLATION_MODES: tuple[Isolation, ...] = ("thread", "process")


class QueueExecutionMode(str, enum.Enum):
    """How ``run()`` ends: ``continuous`` waits for work forever, ``drain`` stops when idle."""

    continuous = "continuous"
    drain = "drain"


class Durability(str, enum.Enum):
    """Which of the four tables are WAL-logged (``durable``) or ``UNLOGGED``."""

    volatile = "volatile"
    balanced = "balanced"
    durable = "durable"

    def unlogged_tables(self) -> frozenset[str]:
        """The table roles (``queue``, ``log``, ``statistics``, ``schedules``) left UNLOGGED."""
        if self is Durability.volatile:
            return frozenset({"queue", "log", "statistics", "schedules"})
        if self is Durability.balanced:
            return frozenset({"log", "statistics"})
        return frozenset()
