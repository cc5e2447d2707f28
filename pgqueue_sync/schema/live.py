"""What the catalog holds: a snapshot of the installed queue objects, as read.

:class:`~pgqueue_sync.schema.catalog.Catalog` fills these; verification and the
upgrade planner compare them with the declaration in :mod:`pgqueue_sync.sql.ddl`.
"""

from __future__ import annotations

import dataclasses

from psycopg import sql

from ..sql.ddl import TABLE_FIELDS, TableRole

#: The four tables' roles, in install order.
TABLE_ROLES: tuple[TableRole, ...] = tuple(TABLE_FIELDS)


@dataclasses.dataclass(frozen=True)
class LiveColumn:
    """A column as ``format_type`` and ``pg_get_expr`` print it."""

    name: str
    type: str
    type_schema: str
    type_name: str
    not_null: bool
    identity: str
    default: str | None

    @property
    def kind(self) -> str:
        """``identity``, ``serial`` (a ``nextval`` default) or ``plain``."""
        if self.identity:
            return "identity"
        if self.default is not None and self.default.startswith("nextval("):
            return "serial"
        return "plain"


@dataclasses.dataclass
class LiveTable:
    """A table: its schema, persistence, columns, UNIQUE constraints and id sequence."""

    role: TableRole
    schema: str
    unlogged: bool
    columns: dict[str, LiveColumn] = dataclasses.field(default_factory=dict)
    unique: set[tuple[str, ...]] = dataclasses.field(default_factory=set)
    sequence: sql.Identifier | None = None
    sequence_type: str | None = None


@dataclasses.dataclass(frozen=True)
class LiveIndex:
    """An index not backing a constraint; ``tail`` is its definition from ``USING`` on."""

    name: str
    role: TableRole
    unique: bool
    tail: str


@dataclasses.dataclass(frozen=True)
class LiveEnum:
    """An enum type and its labels in ``enumsortorder`` order."""

    schema: str
    display: str
    labels: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LiveTrigger:
    """The trigger found by name: its table's role (if one of ours), function and type."""

    table_role: TableRole | None
    function_schema: str
    function_name: str
    tgtype: int


@dataclasses.dataclass
class LiveSchema:
    """One snapshot of everything verification and the planner compare."""

    namespace_exists: bool
    tables: dict[TableRole, LiveTable]
    indexes: dict[str, LiveIndex]
    status: LiveEnum | None
    legacy_status: LiveEnum | None
    function_body: str | None
    function_schema: str | None
    trigger: LiveTrigger | None

