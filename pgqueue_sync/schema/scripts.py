"""The schema as offline SQL scripts, for review or for a migration tool (no connection)."""

from __future__ import annotations

from ..settings import DBSettings
from ..sql import ddl
from ..types import Durability


def install_script(
    settings: DBSettings, *, durability: Durability | None = None, create_schema: bool = True
) -> str:
    """The install as an SQL script, for review or for a migration tool."""
    statements = ddl.install_statements(
        settings, durability=durability, create_schema=create_schema
    )
    return ddl.render_script(statements, ddl.install_header(settings, durability))


def uninstall_script(settings: DBSettings) -> str:
    """The uninstall as an SQL script (every drop ``IF EXISTS``)."""
    return ddl.render_script(ddl.uninstall_statements(settings))


def durability_script(settings: DBSettings, level: Durability) -> str:
    """``SET LOGGED``/``SET UNLOGGED`` for all four tables, as an SQL script."""
    return ddl.render_script(ddl.durability_statements(settings, Durability(level)))
