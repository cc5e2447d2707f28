"""DDL for PgQueuer 1.6.0's schema, as :class:`psycopg.sql.Composed` statements.

Everything here is a pure function of :class:`~pgqueue_sync.settings.DBSettings`:
no connection, no I/O. :class:`~pgqueue_sync.schema.Schema` runs the statements.

The module also *declares* the target schema (:data:`TABLES`, :data:`INDEXES`,
:func:`function_body`) in the spelling ``pg_catalog`` reports back
(``format_type``, ``pg_get_expr``, ``pg_get_indexdef``), so that an installed
database can be compared with the declaration by string equality, exactly as
``pgq upgrade`` compares it. The index tails and defaults below are therefore
written in catalog spelling on purpose: created as written, they read back
unchanged.

Configurable names reach SQL only as :class:`~psycopg.sql.Identifier`; enum
labels and the function body only as :class:`~psycopg.sql.Literal`.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterable, Mapping
from typing import Literal

from psycopg import sql

from .._version import __version__
from ..settings import DBSettings
from ..types import JOB_STATUSES, Durability

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
#: ``pg_trigger.tgtype`` of AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE FOR EACH STATEMENT.
TRIGGER_TGTYPE = 60
_TIMESTAMPTZ = "timestamp with time zone"


@dataclasses.dataclass(frozen=True)
class ColumnSpec:
    """One column as ``format_type`` / ``pg_get_expr`` spell it.

    ``default`` may contain ``{queued}``-style placeholders for status enum
    literals (see :func:`catalog_text`). ``serial`` and ``identity`` columns are
    the primary key ``id``.
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
#: :func:`install_statements` does not create them, and upgrades neither create, rebuild
#: nor drop them (an index that is not in :data:`INDEXES` is left alone whatever it is
#: called); :class:`~pgqueue_sync.schema.Schema` only names them at DEBUG as known.
#: PgQueuer 2.0 adds ``{statistics_table}_created``. Its release notes do not give the
#: definition, so the tail here (a plain btree on ``created``, like ``{log_table}_created``)
#: is an assumption; nothing compares it, since the index is never managed.
PGQUEUER2_INDEXES: tuple[IndexSpec, ...] = (
    IndexSpec("created", "statistics", "USING btree (created)"),
)
#: Suffix of the statistics index whose duplicates :func:`fold_statistics` merges.
UNIQUE_COUNT_SUFFIX = "unique_count"
#: Suffix of the queue index retired in PgQueuer 1.5.0.
RETIRED_QUEUE_INDEX_SUFFIX = "heartbeat_id_id1_idx"
#: Statistics column retired in v0.19; upgrade relaxes its NOT NULL.
RETIRED_STATISTICS_COLUMN = "time_in_queue"

# The trigger function body, exactly as PgQueuer 1.6.0 stores it in ``pg_proc.prosrc``
# (taken from the catalog of a ``pgq install`` database). ``pgq upgrade`` compares it
# token for token, comments included, so it must not be edited. ``@CHANNEL@`` stands
# for the channel, rendered as an SQL string literal.
_FUNCTION_BODY = """
DECLARE
    to_emit BOOLEAN := false;  -- Flag to decide whether to emit a notification
BEGIN
    -- Check operation type and set the emit flag accordingly
    IF TG_OP = 'UPDATE' AND OLD IS DISTINCT FROM NEW THEN
        to_emit := true;
    ELSIF TG_OP = 'DELETE' THEN
        to_emit := true;
    ELSIF TG_OP = 'INSERT' THEN
        to_emit := true;
    ELSIF TG_OP = 'TRUNCATE' THEN
        to_emit := true;
    END IF;

    -- Perform notification if the emit flag is set
    IF to_emit THEN
        PERFORM pg_notify(
            @CHANNEL@,
            json_build_object(
                'channel', @CHANNEL@,
                'operation', lower(TG_OP),
                'sent_at', NOW(),
                'table', TG_TABLE_NAME,
                'type', 'table_changed_event'
            )::text
        );
    END IF;

    -- Return appropriate value based on the operation
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        RETURN NEW;
    ELSIF TG_OP = 'DELETE' THEN
        RETURN OLD;
    ELSE
        RETURN NULL; -- For TRUNCATE and other non-row-specific contexts
    END IF;

END;
"""


# -- names ---------------------------------------------------------------------------------


def table_spec(role: TableRole) -> TableSpec:
    """The declared table for ``role``."""
    return next(t for t in TABLES if t.role == role)


def table_ident(settings: DBSettings, role: TableRole) -> sql.Identifier:
    """The qualified identifier of the table playing ``role``."""
    return settings.ident(TABLE_FIELDS[role])


def sibling_ident(settings: DBSettings, field: str, name: str) -> sql.Identifier:
    """``name`` qualified with the schema of the object in ``field`` (indexes, legacy enum)."""
    parts = settings.qualified_parts(field)[:-1]
    return sql.Identifier(*(p.lower() for p in parts), name)


def index_ident(settings: DBSettings, role: TableRole, name: str) -> sql.Identifier:
    """An index of the ``role`` table, qualified with that table's schema."""
    return sibling_ident(settings, TABLE_FIELDS[role], name)


def legacy_status_name(settings: DBSettings) -> str:
    """The bare name of the pre-0.27 statistics enum."""
    return settings.legacy_statistics_status_type.lower()


def legacy_status_ident(settings: DBSettings) -> sql.Identifier:
    """The pre-0.27 statistics enum, in the status enum's schema."""
    return sibling_ident(settings, "queue_status_type", legacy_status_name(settings))


def rebuild_name(index_name: str) -> str:
    """The temporary name a differing index is rebuilt under, as ``pgq upgrade`` names it."""
    return f"pgq_rebuild_{zlib.crc32(index_name.encode()):08x}"


def advisory_lock_key(settings: DBSettings) -> int:
    """The advisory lock number ``pgq upgrade`` serialises on (CRC32 of the queue table)."""
    return zlib.crc32(settings.qualified_text("queue_table").encode())


# -- catalog spelling ----------------------------------------------------------------------


def catalog_text(template: str, settings: DBSettings) -> str:
    """A default or index tail as the catalog prints it, with the enum type unqualified.

    Used only to compare with catalog output, never executed.
    """
    bare = settings.bare_name("queue_status_type")
    return template.format(**{label: f"'{label}'::{bare}" for label in STATUS_LABELS})


def status_literal(settings: DBSettings, label: str) -> sql.Composed:
    """``'label'::<status enum>``, schema-qualified when a schema is configured."""
    return sql.SQL("{}::{}").format(sql.Literal(label), settings.ident("queue_status_type"))


def _expression(template: str, settings: DBSettings) -> sql.Composed:
    literals = {label: status_literal(settings, label) for label in STATUS_LABELS}
    return sql.SQL(template).format(**literals)


def function_body(channel: str) -> str:
    """The trigger function's ``prosrc`` for ``channel`` (validated by DBSettings)."""
    return _FUNCTION_BODY.replace("@CHANNEL@", sql.Literal(channel).as_string())


def collapse_whitespace(text: str) -> str:
    """Text with whitespace runs collapsed, as ``pgq upgrade`` compares function bodies."""
    return " ".join(text.split())


# -- install -------------------------------------------------------------------------------


def namespace_exists(settings: DBSettings) -> tuple[sql.SQL, list[str | None]]:
    """A query answering ``present``: does the configured schema exist?"""
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s) AS present")
    return query, [settings.db_schema]


def create_namespace(settings: DBSettings) -> sql.Composed | None:
    """``CREATE SCHEMA IF NOT EXISTS`` for the configured schema, or ``None`` without one."""
    if not settings.db_schema:
        return None
    return sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(settings.db_schema))


def create_enum(settings: DBSettings) -> sql.Composed:
    """``CREATE TYPE`` for the status enum with all seven labels in order."""
    labels = sql.SQL(", ").join(sql.Literal(label) for label in STATUS_LABELS)
    return sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
        settings.ident("queue_status_type"), labels
    )


def add_enum_label(
    settings: DBSettings, label: str, *, after: str | None = None, before: str | None = None
) -> sql.Composed:
    """``ALTER TYPE ... ADD VALUE IF NOT EXISTS``, placed ``after`` or ``before`` a label.

    Without either, the label is appended. The new label cannot be used in the
    transaction that adds it.
    """
    query = sql.SQL("ALTER TYPE {} ADD VALUE IF NOT EXISTS {}").format(
        settings.ident("queue_status_type"), sql.Literal(label)
    )
    if after is not None:
        return sql.SQL("{} AFTER {}").format(query, sql.Literal(after))
    if before is not None:
        return sql.SQL("{} BEFORE {}").format(query, sql.Literal(before))
    return query


def column_type(settings: DBSettings, column: ColumnSpec) -> sql.Composable:
    """The column's type as written in DDL (``bigserial`` for serial ids)."""
    if column.type == STATUS_TYPE:
        return settings.ident("queue_status_type")
    if column.kind == "serial":
        return sql.SQL("bigserial")
    return sql.SQL(column.type)


def column_definition(settings: DBSettings, column: ColumnSpec) -> sql.Composed:
    """``name type [GENERATED ...] [NOT NULL] [DEFAULT ...] [PRIMARY KEY]``."""
    parts: list[sql.Composable] = [sql.Identifier(column.name), column_type(settings, column)]
    if column.kind == "identity":
        parts.append(sql.SQL("GENERATED BY DEFAULT AS IDENTITY"))
    if column.kind != "plain":
        parts.append(sql.SQL("PRIMARY KEY"))
        return sql.SQL(" ").join(parts)
    if column.not_null:
        parts.append(sql.SQL("NOT NULL"))
    if column.default is not None:
        parts.append(sql.SQL("DEFAULT {}").format(_expression(column.default, settings)))
    return sql.SQL(" ").join(parts)


def _unique_clause(columns: Iterable[str]) -> sql.Composed:
    return sql.SQL("UNIQUE ({})").format(sql.SQL(", ").join(map(sql.Identifier, columns)))


def create_table(settings: DBSettings, role: TableRole, *, unlogged: bool) -> sql.Composed:
    """``CREATE [UNLOGGED] TABLE`` with PgQueuer's column order and constraints.

    Constraint and sequence names are left to PostgreSQL, as PgQueuer leaves
    them, so long prefixes truncate the same way on both sides.
    """
    spec = table_spec(role)
    body: list[sql.Composable] = [column_definition(settings, c) for c in spec.columns]
    body += [_unique_clause(columns) for columns in spec.unique]
    return sql.SQL("CREATE {}TABLE {} (\n    {}\n)").format(
        sql.SQL("UNLOGGED " if unlogged else ""),
        table_ident(settings, role),
        sql.SQL(",\n    ").join(body),
    )


def create_index(
    settings: DBSettings, index: IndexSpec, *, name: str | None = None
) -> sql.Composed:
    """``CREATE [UNIQUE] INDEX`` for ``index``, optionally under another ``name``."""
    return sql.SQL("CREATE {}INDEX {} ON {} {}").format(
        sql.SQL("UNIQUE " if index.unique else ""),
        sql.Identifier(name or index.name(settings)),
        table_ident(settings, index.role),
        _expression(index.tail, settings),
    )


def create_function(settings: DBSettings, *, replace: bool = False) -> sql.Composed:
    """The PL/pgSQL trigger function that NOTIFYs ``table_changed_event`` on the channel."""
    return sql.SQL("CREATE {}FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
        sql.SQL("OR REPLACE " if replace else ""),
        settings.ident("function"),
        sql.Literal(function_body(settings.channel)),
    )


def create_trigger(settings: DBSettings) -> sql.Composed:
    """The statement-level AFTER INSERT/UPDATE/DELETE/TRUNCATE trigger on the queue table."""
    return sql.SQL(
        "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} "
        "FOR EACH STATEMENT EXECUTE FUNCTION {}()"
    ).format(
        sql.Identifier(settings.bare_name("trigger")),
        settings.ident("queue_table"),
        settings.ident("function"),
    )


def install_statements(
    settings: DBSettings, *, durability: Durability | None = None, create_schema: bool = True
) -> list[sql.Composed]:
    """Every statement of a fresh install, in dependency order.

    ``durability`` defaults to ``settings.durability``; ``create_schema`` adds
    ``CREATE SCHEMA IF NOT EXISTS`` when a schema is configured.
    """
    level = durability or settings.durability
    unlogged = level.unlogged_tables()
    statements: list[sql.Composed] = []
    schema = create_namespace(settings) if create_schema else None
    if schema is not None:
        statements.append(schema)
    statements.append(create_enum(settings))
    statements += [
        create_table(settings, spec.role, unlogged=spec.role in unlogged) for spec in TABLES
    ]
    statements += [create_index(settings, index) for index in INDEXES]
    statements += [create_function(settings), create_trigger(settings)]
    return statements


def install_header(settings: DBSettings, durability: Durability | None = None) -> str:
    """A comment naming the generator and the settings that shaped an offline script."""
    level = (durability or settings.durability).value
    return (
        f"-- pgqueue_sync {__version__} (PgQueuer 1.6.0 schema) -- prefix={settings.prefix!r} "
        f"schema={settings.db_schema!r} durability={level}"
    )


# -- uninstall -----------------------------------------------------------------------------


def drop_trigger(settings: DBSettings) -> sql.Composed:
    """``DROP TRIGGER IF EXISTS`` on the queue table."""
    return sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
        sql.Identifier(settings.bare_name("trigger")), settings.ident("queue_table")
    )


def uninstall_statements(settings: DBSettings) -> list[sql.Composed]:
    """Drop trigger, function, the four tables, the enum and the legacy enum (all IF EXISTS)."""
    statements = [
        drop_trigger(settings),
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(settings.ident("function")),
    ]
    statements += [
        sql.SQL("DROP TABLE IF EXISTS {}").format(table_ident(settings, spec.role))
        for spec in TABLES
    ]
    statements += [
        sql.SQL("DROP TYPE IF EXISTS {}").format(settings.ident("queue_status_type")),
        sql.SQL("DROP TYPE IF EXISTS {}").format(legacy_status_ident(settings)),
    ]
    return statements


# -- durability ----------------------------------------------------------------------------


def set_persistence(settings: DBSettings, role: TableRole, *, logged: bool) -> sql.Composed:
    """``ALTER TABLE ... SET LOGGED`` or ``SET UNLOGGED`` (rewrites the table)."""
    return sql.SQL("ALTER TABLE {} SET {}").format(
        table_ident(settings, role), sql.SQL("LOGGED" if logged else "UNLOGGED")
    )


def durability_statements(settings: DBSettings, level: Durability) -> list[sql.Composed]:
    """One ``SET LOGGED``/``SET UNLOGGED`` per table, as §4.6 assigns them for ``level``."""
    unlogged = level.unlogged_tables()
    return [
        set_persistence(settings, spec.role, logged=spec.role not in unlogged) for spec in TABLES
    ]


# -- upgrade building blocks ---------------------------------------------------------------


def add_column(settings: DBSettings, role: TableRole, column: ColumnSpec) -> sql.Composed:
    """``ALTER TABLE ... ADD COLUMN`` for a plain column (with its NOT NULL and DEFAULT)."""
    return sql.SQL("ALTER TABLE {} ADD COLUMN {}").format(
        table_ident(settings, role), column_definition(settings, column)
    )


def _alter_column(
    settings: DBSettings, role: TableRole, column: str, action: sql.Composable
) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ALTER COLUMN {} {}").format(
        table_ident(settings, role), sql.Identifier(column), action
    )


def widen_column(settings: DBSettings, role: TableRole, column: str) -> sql.Composed:
    """Retype an ``integer`` column to ``bigint`` (rewrites the table)."""
    return _alter_column(settings, role, column, sql.SQL("TYPE bigint"))


def column_into_status(settings: DBSettings, role: TableRole, column: str) -> sql.Composed:
    """Retype a column to the status enum through its text value (rewrites the table)."""
    status = settings.ident("queue_status_type")
    action = sql.SQL("TYPE {} USING {}::text::{}").format(status, sql.Identifier(column), status)
    return _alter_column(settings, role, column, action)


def set_not_null(settings: DBSettings, role: TableRole, column: str, *, on: bool) -> sql.Composed:
    """``SET NOT NULL`` (fails on an existing NULL) or ``DROP NOT NULL``."""
    return _alter_column(settings, role, column, sql.SQL("SET NOT NULL" if on else "DROP NOT NULL"))


def set_default(settings: DBSettings, role: TableRole, column: ColumnSpec) -> sql.Composed:
    """Reset a column's DEFAULT to the declared one (or drop it)."""
    if column.default is None:
        return _alter_column(settings, role, column.name, sql.SQL("DROP DEFAULT"))
    action = sql.SQL("SET DEFAULT {}").format(_expression(column.default, settings))
    return _alter_column(settings, role, column.name, action)


def drop_default(settings: DBSettings, role: TableRole, column: str) -> sql.Composed:
    """``ALTER COLUMN ... DROP DEFAULT``."""
    return _alter_column(settings, role, column, sql.SQL("DROP DEFAULT"))


def widen_sequence(sequence: sql.Identifier) -> sql.Composed:
    """``ALTER SEQUENCE ... AS bigint``; an int4 maximum grows to the bigint maximum."""
    return sql.SQL("ALTER SEQUENCE {} AS bigint").format(sequence)


def add_unique(settings: DBSettings, role: TableRole, columns: Iterable[str]) -> sql.Composed:
    """Add a UNIQUE constraint, named by PostgreSQL as PgQueuer's is."""
    return sql.SQL("ALTER TABLE {} ADD {}").format(
        table_ident(settings, role), _unique_clause(columns)
    )


def drop_index(settings: DBSettings, role: TableRole, name: str) -> sql.Composed:
    """``DROP INDEX IF EXISTS`` for an index of the ``role`` table."""
    return sql.SQL("DROP INDEX IF EXISTS {}").format(index_ident(settings, role, name))


def rename_index(settings: DBSettings, role: TableRole, old: str, new: str) -> sql.Composed:
    """``ALTER INDEX old RENAME TO new`` within the table's schema."""
    return sql.SQL("ALTER INDEX {} RENAME TO {}").format(
        index_ident(settings, role, old), sql.Identifier(new)
    )


def rebuild_index(settings: DBSettings, index: IndexSpec) -> list[sql.Composed]:
    """Build ``index`` beside the old one under a temporary name, then swap it in."""
    name = index.name(settings)
    temporary = rebuild_name(name)
    return [
        drop_index(settings, index.role, temporary),
        create_index(settings, index, name=temporary),
        drop_index(settings, index.role, name),
        rename_index(settings, index.role, temporary, name),
    ]


def fold_statistics(settings: DBSettings) -> sql.Composed:
    """Merge statistics rows sharing a unique-count bucket into the lowest id.

    The kept row gets the bucket's summed ``count``; the others are deleted.
    A no-op when every bucket has one row. Run before building the unique index.
    """
    stats = table_ident(settings, "statistics")
    return sql.SQL(
        "WITH bucket AS ("
        "SELECT min(id) AS keep_id, array_agg(id) AS ids, sum(count) AS total "
        "FROM {stats} "
        "GROUP BY priority, date_trunc('sec', timezone('UTC', created)), status, entrypoint "
        "HAVING count(*) > 1"
        "), kept AS ("
        "UPDATE {stats} AS s SET count = bucket.total FROM bucket WHERE s.id = bucket.keep_id"
        ") "
        "DELETE FROM {stats} AS s USING bucket "
        "WHERE s.id = ANY (bucket.ids) AND s.id <> bucket.keep_id"
    ).format(stats=stats)


def drop_retired_column_not_null(settings: DBSettings) -> sql.Composed:
    """Relax NOT NULL on the statistics column retired in v0.19 (it is never dropped)."""
    return set_not_null(settings, "statistics", RETIRED_STATISTICS_COLUMN, on=False)


def drop_legacy_status(settings: DBSettings) -> sql.Composed:
    """``DROP TYPE IF EXISTS`` for the pre-0.27 statistics enum."""
    return sql.SQL("DROP TYPE IF EXISTS {}").format(legacy_status_ident(settings))


# -- rendering -----------------------------------------------------------------------------


def render(statement: sql.Composable) -> str:
    """One statement as SQL text (without the trailing semicolon)."""
    return statement.as_string()


def render_script(statements: Iterable[sql.Composable], header: str | None = None) -> str:
    """Statements as an offline script, each ending with ``;``."""
    parts = [header] if header else []
    parts += [f"{render(s)};" for s in statements]
    return "\n\n".join(parts) + "\n"
