"""Whole-schema statement lists: install, uninstall and durability, and their rendering.

:class:`~pgqueue_sync.schema.Schema` runs these lists; the offline scripts
(:func:`~pgqueue_sync.schema.install_script` and its siblings) render them with
:func:`render_script`.
"""

from __future__ import annotations

from collections.abc import Iterable

from psycopg import sql

from ..._version import __version__
from ...settings import DBSettings
from ...types import Durability
from .create import create_enum, create_index, create_namespace, create_table
from .naming import legacy_status_ident, table_ident
from .spec import INDEXES, TABLES, TableRole
from .trigger import create_function, create_trigger, drop_trigger


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


def render(statement: sql.Composable) -> str:
    """One statement as SQL text (without the trailing semicolon)."""
    return statement.as_string()


def render_script(statements: Iterable[sql.Composable], header: str | None = None) -> str:
    """Statements as an offline script, each ending with ``;``."""
    parts = [header] if header else []
    parts += [f"{render(s)};" for s in statements]
    return "\n\n".join(parts) + "\n"
