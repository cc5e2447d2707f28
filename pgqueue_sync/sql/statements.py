"""Every runtime statement of the queue, composed once per :class:`DBSettings`.

:class:`Statements` gathers the statement families, each in its own module:

* :mod:`~pgqueue_sync.sql.enqueue`: insert jobs and log them ``queued``;
* :mod:`~pgqueue_sync.sql.claim`: the claim (dequeue) pipeline;
* :mod:`~pgqueue_sync.sql.outcomes`: outcomes, hand-backs and heartbeats;
* :mod:`~pgqueue_sync.sql.job_actions`: requeue, bulk actions and clearing;
* :mod:`~pgqueue_sync.sql.inspection`: read-only questions about the queue;
* :mod:`~pgqueue_sync.sql.statistics` and :mod:`~pgqueue_sync.sql.schedules`.

Names reach the SQL only as :class:`psycopg.sql.Identifier`; values are always
``%(name)s`` parameters. Each statement is one round trip and atomic on its
own, so it behaves the same under autocommit and inside a caller's transaction.
"""

from __future__ import annotations

import functools

from psycopg import sql

from .claim import ClaimStatements
from .enqueue import EnqueueStatements
from .inspection import InspectionStatements
from .job_actions import JobActionStatements
from .outcomes import OutcomeStatements, finish_steps
from .schedules import ScheduleStatements
from .statement_set import StatementSet
from .statistics import StatisticsStatements

__all__ = ["StatementSet", "Statements", "finish_steps"]


class Statements(
    EnqueueStatements,
    ClaimStatements,
    OutcomeStatements,
    JobActionStatements,
    InspectionStatements,
    StatisticsStatements,
    ScheduleStatements,
):
    """The queue's own statements (claim, enqueue, outcomes, schedules, ...)."""

    @functools.cached_property
    def notify(self) -> sql.SQL:
        """Send one payload on a channel (delivered at commit)."""
        return self._sql("SELECT pg_notify(%(channel)s, %(payload)s)")
