"""PgQueuer 1.6.0's schema, declared: its tables, columns, indexes and status labels.

The declaration is written in the spelling ``pg_catalog`` reports back
(``format_type``, ``pg_get_expr``, ``pg_get_indexdef``), so that an installed
database can be compared with it by string equality, exactly as
``pgq upgrade`` compares it. The index tails and defaults below are therefore
written in catalog spelling on purpose: created as written, they read back
unchanged. ``{queued}``-style placeholders stand for status enum literals (see
:func:`~pgqueue_sync.sql.ddl.naming.catalog_text`).

Pure data and pure functions of :class:`~pgqueue_sync.settings.DBSettings`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

from ...settings import DBSettings
from ...types import JOB_STATUSES

TableRole = Literal["queue", "log", "statistics", "schedules"]
ColumnKind = Literal["plain", "serial", "identity"]

#: Table role -> the :class:`DBSettings` field holding its name, in install order.
TABLE_FIELDS: Mapping[TableRole, str] = {
    "queue": "queue_table",
    "log": "queue_table_log",
    "statistics": "statistics_table",
    "schedules": "schedules_table",
}
#: Labels of the status enum, in ``enumsortorder`` order.
STATUS_LABELS: tuple[str, ...] = JOB_STATUSES
#: Marker used as :attr:`ColumnSpec.type` for the status enum column type.
STATUS_TYPE = "<status enum>"
_TIMESTAMPTZ = "timestamp with time zone"


@dataclasses.dataclass(frozen=True)
class ColumnSpec:
    """One column as ``format_type`` / ``pg_get_expr`` spell it.

    ``default`` may contain ``{queued}``-style placeholders for status enum
    literals (see :func:`~pgqueue_sync.sql.ddl.naming.catalog_text`). ``serial``
    and ``identity`` columns are the primary key ``id``.
    """

    name: str
    type: str
    not_null: bool = False
    default: str | None = None
    kind: ColumnKind = "plain"


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """A table: its role, its columns in PgQueuer's order, and its UNIQUE constraints."""

    role: TableRole
    columns: tuple[ColumnSpec, ...]
    unique: tuple[tuple[str, ...], ...] = ()

    def column(self, name: str) -> ColumnSpec | None:
        """The declared column called ``name``, or ``None``."""
        return next((c for c in self.columns if c.name == name), None)


@dataclasses.dataclass(frozen=True)
class IndexSpec:
    """An index that does not back a constraint.

    ``tail`` is what ``pg_get_indexdef`` prints after ``ON <table>``, with
    ``{queued}``/``{picked}`` placeholders for status enum literals.
    """

    suffix: str
    role: TableRole
    tail: str
    unique: bool = False

    def name(self, settings: DBSettings) -> str:
        """The index name, derived from the (bare) table name."""
        return settings.index_name(self.suffix, TABLE_FIELDS[self.role])


def _ts(name: str) -> ColumnSpec:
    return ColumnSpec(name, _TIMESTAMPTZ, not_null=True, default="now()")


TABLES: tuple[TableSpec, ...] = (
    TableSpec(
        "queue",
        (
            ColumnSpec("id", "bigint", not_null=True, kind="serial"),
            ColumnSpec("priority", "integer", not_null=True),
            ColumnSpec("queue_manager_id", "uuid"),
            _ts("created"),
            _ts("updated"),
            _ts("heartbeat"),
            _ts("execute_after"),
            ColumnSpec("status", STATUS_TYPE, not_null=True),
            ColumnSpec("entrypoint", "text", not_null=True),
            ColumnSpec("dedupe_key", "text"),
            ColumnSpec("payload", "bytea"),
            ColumnSpec("headers", "jsonb"),
            ColumnSpec("attempts", "integer", not_null=True, default="0"),
            ColumnSpec("slot", "bigint"),
        ),
    ),
    TableSpec(
        "log",
        (
            ColumnSpec("id", "bigint", not_null=True, kind="identity"),
            _ts("created"),
            ColumnSpec("job_id", "bigint", not_null=True),
            ColumnSpec("status", STATUS_TYPE, not_null=True),
            ColumnSpec("priority", "integer", not_null=True),
            ColumnSpec("entrypoint", "text", not_null=True),
            ColumnSpec("traceback", "jsonb"),
            ColumnSpec("aggregated", "boolean", default="false"),
        ),
    ),
    TableSpec(
        "statistics",
        (
            ColumnSpec("id", "bigint", not_null=True, kind="serial"),
            ColumnSpec(
                "created", _TIMESTAMPTZ, not_null=True, default="date_trunc('sec'::text, now())"
            ),
            ColumnSpec("count", "bigint", not_null=True),
            ColumnSpec("priority", "integer", not_null=True),
            ColumnSpec("status", STATUS_TYPE, not_null=True),
            ColumnSpec("entrypoint", "text", not_null=True),
        ),
    ),
    TableSpec(
        "schedules",
        (
            ColumnSpec("id", "bigint", not_null=True, kind="serial"),
            ColumnSpec("expression", "text", not_null=True),
            ColumnSpec("entrypoint", "text", not_null=True),
            _ts("heartbeat"),
            _ts("created"),
            _ts("updated"),
            _ts("next_run"),
            ColumnSpec("last_run", _TIMESTAMPTZ),
            ColumnSpec("status", STATUS_TYPE, default="{queued}"),
        ),
        unique=(("expression", "entrypoint"),),
    ),
)

_QUEUED = "WHERE (status = {queued})"
_PICKED = "WHERE (status = {picked})"

INDEXES: tuple[IndexSpec, ...] = (
    IndexSpec(
        "priority_id_id1_idx", "queue", f"USING btree (priority, id DESC) INCLUDE (id) {_QUEUED}"
    ),
    IndexSpec(
        "updated_id_id1_idx", "queue", f"USING btree (updated, id DESC) INCLUDE (id) {_PICKED}"
    ),
    IndexSpec("picked_heartbeat_idx", "queue", f"USING btree (heartbeat) {_PICKED}"),
    IndexSpec(
        "queue_manager_id_idx",
        "queue",
        "USING btree (queue_manager_id) WHERE (queue_manager_id IS NOT NULL)",
    ),
    IndexSpec("ep_prio_id_idx", "queue", f"USING btree (entrypoint, priority DESC, id) {_QUEUED}"),
    IndexSpec("ep_ea_idx", "queue", f"USING btree (entrypoint, execute_after) {_QUEUED}"),
    IndexSpec(
        "unique_dedupe_key",
        "queue",
        "USING btree (dedupe_key) WHERE ((status = ANY (ARRAY[{queued}, {picked}])) "
        "AND (dedupe_key IS NOT NULL))",
        unique=True,
    ),
    IndexSpec(
        "picked_slot_idx",
        "queue",
        "USING btree (entrypoint, slot) WHERE ((status = {picked}) AND (slot IS NOT NULL))",
        unique=True,
    ),
    IndexSpec("not_aggregated", "log", "USING btree ((1)) WHERE (NOT aggregated)"),
    IndexSpec("created", "log", "USING btree (created)"),
    IndexSpec("status", "log", "USING btree (status)"),
    IndexSpec("job_id_status", "log", "USING btree (job_id, created DESC)"),
    IndexSpec(
        "unique_count",
        "statistics",
        "USING btree (priority, date_trunc('sec'::text, timezone('UTC'::text, created)), "
        "status, entrypoint)",
        unique=True,
    ),
)

#: Indexes that later PgQueuer releases add beside the 1.6.0 schema, recognised by name.
#: :func:`~pgqueue_sync.sql.ddl.scripts.install_statements` does not create them, and
#: upgrades neither create, rebuild nor drop them (an index that is not in
#: :data:`INDEXES` is left alone whatever it is called); :class:`~pgqueue_sync.schema.Schema`
#: only names them at DEBUG as known.
#: PgQueuer 2.0 adds ``{statistics_table}_created``. Its release notes do not give the
#: definition, so the tail here (a plain btree on ``created``, like ``{log_table}_created``)
#: is an assumption; nothing compares it, since the index is never managed.
PGQUEUER2_INDEXES: tuple[IndexSpec, ...] = (
    IndexSpec("created", "statistics", "USING btree (created)"),
)
#: Suffix of the statistics index whose duplicates
#: :func:`~pgqueue_sync.sql.ddl.upgrade.fold_statistics` merges.
UNIQUE_COUNT_SUFFIX = "unique_count"
#: Suffix of the queue index retired in PgQueuer 1.5.0.
RETIRED_QUEUE_INDEX_SUFFIX = "heartbeat_id_id1_idx"
#: Statistics column retired in v0.19; upgrade relaxes its NOT NULL.
RETIRED_STATISTICS_COLUMN = "time_in_queue"


def table_spec(role: TableRole) -> TableSpec:
    """The declared table for ``role``."""
    return next(t for t in TABLES if t.role == role)
