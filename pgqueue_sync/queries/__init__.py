"""``Queries``: one blocking method per queue operation, PgQueuer's names in sync form.

No threads live here. Each method is one statement (one round trip) unless its
docstring says otherwise, and is safe to call from several threads at once when
the driver is (both psycopg drivers are).

:class:`Queries` is assembled from parts, one module each:

* :mod:`.producing`: ``enqueue``;
* :mod:`.claiming`: ``dequeue`` and heartbeats;
* :mod:`.outcomes`: recording outcomes, retries, releases and requeues;
* :mod:`.cancellation`: cancelling jobs, and the events workers listen for;
* :mod:`.bulk`: requeueing, cancelling or purging many jobs;
* :mod:`.inspection`: what is queued, what the log says, what failed;
* :mod:`.housekeeping`: emptying tables, and the queue table's upkeep;
* :mod:`.statistics`: folding the log into statistics, and retention;
* :mod:`.schedules`: the scheduler's rows.

They stand on :mod:`.base` (driver, settings, statements), :mod:`.models` (the
values operations take and return), :mod:`.batch` (an enqueue's arguments,
checked and rendered) and :mod:`.values` (the checks and row mappings the
in-memory adapter shares).
"""

from __future__ import annotations

from typing import Any

from ..settings import DBSettings
from .bulk import (
    BULK_ACTIONS,
    BULK_BATCH_SIZE,
    BULK_REPORTED_IDS,
    BULK_STATUSES,
    BULK_SWEEP_PAUSE,
    BULK_SWEEPS,
    BulkAction,
    BulkPlan,
    BulkQueries,
    BulkResult,
    BulkRow,
    walk_bulk,
)
from .cancellation import NOTIFY_PAYLOAD_LIMIT, cancellation_payloads
from .claiming import ClaimingQueries
from .housekeeping import HousekeepingQueries
from .inspection import InspectionQueries
from .models import (
    EntrypointExecutionParameter,
    ErrorRecord,
    ExecuteAfter,
    Headers,
    JobOutcome,
    JobRetry,
    PollState,
)
from .producing import ProducingQueries
from .schedules import ScheduleQueries
from .statistics import AGGREGATE_CHUNK, AGGREGATE_MAX_CHUNKS, StatisticsQueries


class Queries(
    ProducingQueries,
    ClaimingQueries,
    BulkQueries,
    InspectionQueries,
    HousekeepingQueries,
    StatisticsQueries,
    ScheduleQueries,
):
    """The queue's operations over a :class:`~pgqueue_sync.drivers.Driver`.

    Example::

        conn = psycopg.connect(dsn, autocommit=True)
        queries = Queries(SyncPsycopgDriver(conn))
        [job_id] = queries.enqueue("send_email", b'{"to": "a@example.com"}')

    ``settings`` defaults to the process-wide names read from ``PGQUEUER_*``;
    ``tracer`` to the process-wide tracer (:mod:`pgqueue_sync.tracing`).
    """

    @classmethod
    def from_connection(cls, connection: Any, *, settings: DBSettings | None = None) -> Queries:
        """Queries over one psycopg connection (see :class:`SyncPsycopgDriver`)."""
        from ..drivers.psycopg import SyncPsycopgDriver

        return cls(SyncPsycopgDriver(connection), settings=settings)

    @classmethod
    def from_pool(cls, pool: Any, *, settings: DBSettings | None = None) -> Queries:
        """Queries over a ``psycopg_pool.ConnectionPool``."""
        from ..drivers.psycopg import SyncPsycopgPoolDriver

        return cls(SyncPsycopgPoolDriver(pool), settings=settings)


__all__ = [
    "AGGREGATE_CHUNK",
    "AGGREGATE_MAX_CHUNKS",
    "BULK_ACTIONS",
    "BULK_BATCH_SIZE",
    "BULK_REPORTED_IDS",
    "BULK_STATUSES",
    "BULK_SWEEPS",
    "BULK_SWEEP_PAUSE",
    "NOTIFY_PAYLOAD_LIMIT",
    "BulkAction",
    "BulkPlan",
    "BulkResult",
    "BulkRow",
    "EntrypointExecutionParameter",
    "ErrorRecord",
    "ExecuteAfter",
    "Headers",
    "JobOutcome",
    "JobRetry",
    "PollState",
    "Queries",
    "cancellation_payloads",
    "walk_bulk",
]
