"""The building blocks of an upgrade: ALTER statements that bring a table to the declaration.

:class:`~pgqueue_sync.schema.planner.Planner` picks among them after diffing
the live catalog against :mod:`~pgqueue_sync.sql.ddl.spec`. None drops a
table or a column.
"""

from __future__ import annotations

from collections.abc import Iterable

from psycopg import sql

from ...settings import DBSettings
from .create import column_definition, create_index, unique_clause
from .naming import (
    index_ident,
    legacy_status_ident,
    rebuild_name,
    table_ident,
    with_status_literals,
)
from .spec import RETIRED_STATISTICS_COLUMN, ColumnSpec, IndexSpec, TableRole


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
    action = sql.SQL("SET DEFAULT {}").format(with_status_literals(column.default, settings))
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
        table_ident(settings, role), unique_clause(columns)
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
