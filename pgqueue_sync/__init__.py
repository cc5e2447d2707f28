"""pgqueue_sync: a synchronous, threaded PostgreSQL job queue sharing PgQueuer 1.6's schema."""

from __future__ import annotations

import logging

from ._version import __version__
from .app import PgQueuer
from .completion import CompletionWatcher
from .drivers import SyncPsycopgDriver, SyncPsycopgPoolDriver
from .errors import (
    AlreadyInstalledError,
    CompletionTimeout,
    ConfigurationError,
    ConnectionFailed,
    DatabaseError,
    DuplicateJobError,
    FactoryError,
    FailingListenerError,
    PermissionDenied,
    PgqException,
    PoolerError,
    RetryException,
    RetryRequested,
    SchemaError,
    SchemaNotInstalledError,
)
from .models import (
    CancellationEvent,
    HealthCheckEvent,
    Job,
    Log,
    LogStatistics,
    QueueStatistics,
    Schedule,
    TableChangedEvent,
    TracebackRecord,
)
from .queries import EntrypointExecutionParameter, Queries
from .results import JobResult, Results
from .scheduler.executors import (
    AbstractScheduleExecutor,
    ScheduleExecutor,
    ScheduleExecutorFactoryParameters,
    normalize_expression,
)
from .scheduler.manager import SchedulerManager
from .settings import DBSettings, db_settings
from .types import Durability, JobId, QueueExecutionMode
from .worker.cancellation import CancellationToken, Context, JobCancelled, ScheduleContext
from .worker.executors import (
    AbstractEntrypointExecutor,
    DatabaseRetryEntrypointExecutor,
    EntrypointExecutor,
    EntrypointExecutorParameters,
)
from .worker.manager import QueueManager

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AbstractEntrypointExecutor",
    "AbstractScheduleExecutor",
    "CancellationToken",
    "CompletionTimeout",
    "CompletionWatcher",
    "Context",
    "DatabaseRetryEntrypointExecutor",
    "EntrypointExecutor",
    "EntrypointExecutorParameters",
    "JobCancelled",
    "PgQueuer",
    "QueueManager",
    "ScheduleContext",
    "ScheduleExecutor",
    "ScheduleExecutorFactoryParameters",
    "SchedulerManager",
    "AlreadyInstalledError",
    "CancellationEvent",
    "ConfigurationError",
    "ConnectionFailed",
    "DBSettings",
    "DatabaseError",
    "DuplicateJobError",
    "Durability",
    "EntrypointExecutionParameter",
    "FactoryError",
    "FailingListenerError",
    "PermissionDenied",
    "HealthCheckEvent",
    "Job",
    "JobId",
    "JobResult",
    "Log",
    "LogStatistics",
    "PgqException",
    "PoolerError",
    "Queries",
    "QueueExecutionMode",
    "QueueStatistics",
    "RetryException",
    "Results",
    "RetryRequested",
    "Schedule",
    "SchemaError",
    "SchemaNotInstalledError",
    "SyncPsycopgDriver",
    "SyncPsycopgPoolDriver",
    "TableChangedEvent",
    "TracebackRecord",
    "__version__",
    "db_settings",
    "normalize_expression",
]
