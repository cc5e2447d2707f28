"""What every family of runtime statements shares.

:class:`StatementSet` renders templates that name the queue's tables in braces
(``{queue}``, ``{log}``, ...) for one :class:`DBSettings`. Names reach the SQL
only as :class:`psycopg.sql.Identifier`; values are always ``%(name)s``
parameters. Also here: the job columns a claim returns, and the wake-up
notification sent by the statements that put jobs back to ``queued`` or hold
them as ``failed``.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from ..settings import DBSettings
from .names import check_lengths

#: Columns returned for a job row, in :class:`~pgqueue_sync.models.Job` order.
JOB_COLUMNS = (
    "id, priority, created, updated, heartbeat, execute_after, status, entrypoint, "
    "payload, attempts, queue_manager_id, slot, headers"
)

#: :data:`JOB_COLUMNS` as a tuple of names.
JOB_COLUMN_NAMES = tuple(name.strip() for name in JOB_COLUMNS.split(","))

#: A ``table_changed_event`` shaped as the trigger builds it, operation ``update``.
WAKE_LISTENERS = (
    "pg_notify(%(channel)s::text, json_build_object('channel', %(channel)s::text, "
    "'operation', 'update', 'sent_at', NOW(), 'table', %(table)s::text, "
    "'type', 'table_changed_event')::text)"
)


class StatementSet:
    """Statements rendered for one set of object names; immutable and thread-safe."""

    def __init__(self, settings: DBSettings) -> None:
        check_lengths(settings)  # before any statement is rendered, let alone sent
        self.settings = settings
        self._names: dict[str, Any] = {
            "queue": settings.ident("queue_table"),
            "log": settings.ident("queue_table_log"),
            "stats": settings.ident("statistics_table"),
            "schedules": settings.ident("schedules_table"),
            "status": settings.ident("queue_status_type"),
            "results": settings.ident("results_table"),
        }

    def _sql(self, template: str, **extra: sql.Composable) -> sql.SQL:
        # Rendered once: psycopg would otherwise re-render a Composed on every execute.
        composed = sql.SQL(template).format(**self._names, **extra)
        return sql.SQL(composed.as_string())
