"""Operator queries: what an operator asks of a running queue, and log/statistics pruning.

:mod:`.queries` holds :class:`OpsQueries` and the defaults of its windows and
thresholds, :mod:`.records` the dataclasses it returns, and :mod:`.sessions`
:func:`label_worker_session`, the worker's side of :meth:`OpsQueries.live_workers`.
Everything public is importable from here.
"""

from __future__ import annotations

from .queries import (
    DEFAULT_PRUNE_BATCH_SIZE,
    DEFAULT_STALE_THRESHOLD,
    FAILURE_STATUSES,
    LATENCY_WINDOW,
    THROUGHPUT_WINDOWS,
    UNSERVED_GRACE,
    OpsQueries,
)
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
    WorkerSeen,
    WorkerSession,
)
from .sessions import label_worker_session

__all__ = [
    "DEFAULT_PRUNE_BATCH_SIZE",
    "DEFAULT_STALE_THRESHOLD",
    "FAILURE_STATUSES",
    "LATENCY_WINDOW",
    "THROUGHPUT_WINDOWS",
    "UNSERVED_GRACE",
    "ActiveWorker",
    "Backlog",
    "DashboardSnapshot",
    "Latency",
    "LiveWorker",
    "LogEntry",
    "OpsQueries",
    "PrunableTable",
    "PruneBatch",
    "PrunePlan",
    "PruneResult",
    "StaleJob",
    "Throughput",
    "Unserved",
    "WorkerSeen",
    "WorkerSession",
    "label_worker_session",
]
