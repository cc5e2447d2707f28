"""Install, verify, upgrade and uninstall the queue schema through a :class:`Driver`.

The schema is PgQueuer 1.6.0's, object for object (see :mod:`pgqueue_sync.sql.ddl`).
Upgrades are catalog-driven like ``pgq upgrade``: the live catalog is read,
diffed against the declaration, and only the difference is applied, so a
database that PgQueuer 1.3+ (or pgqueue_sync) installed converges on exactly
what ``pgq install`` 1.6.0 creates. Nothing here drops a table or a column,
and durability is only changed by :meth:`Schema.set_durability`.

Indexes on the queue tables that the declaration does not know (PgQueuer
2.x's ``{statistics_table}_created``, an operator's own) are tolerated, as
``pgq upgrade`` tolerates unknown objects: verify does not report them, and
upgrade neither rebuilds nor drops them. Both name them at DEBUG. Uninstall
removes them with their tables.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal

from psycopg import sql

from .drivers.base import Driver
from .errors import AlreadyInstalledError, SchemaError, SchemaNotInstalledError
from .settings import DBSettings, db_settings
from .sql import ddl, names
from .sql.ddl import TABLE_FIELDS, TABLES, ColumnSpec, IndexSpec, TableRole, TableSpec
from .types import Durability

logger = logging.getLogger(__name__)

_ROLES: tuple[TableRole, ...] = tuple(TABLE_FIELDS)


# -- what the catalog holds ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Column:
    name: str
    type: str
    type_schema: str
    type_name: str
    not_null: bool
    identity: str
    default: str | None

    @property
    def kind(self) -> str:
        if self.identity:
            return "identity"
        if self.default is not None and self.default.startswith("nextval("):
            return "serial"
        return "plain"


@dataclasses.dataclass
class _Table:
    role: TableRole
    schema: str
    unlogged: bool
    columns: dict[str, _Column] = dataclasses.field(default_factory=dict)
    unique: set[tuple[str, ...]] = dataclasses.field(default_factory=set)
    sequence: sql.Identifier | None = None
    sequence_type: str | None = None


@dataclasses.dataclass(frozen=True)
class _Index:
    name: str
    role: TableRole
    unique: bool
    tail: str


@dataclasses.dataclass(frozen=True)
class _Enum:
    schema: str
    display: str
    labels: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Trigger:
    table_role: TableRole | None
    function_schema: str
    function_name: str
    tgtype: int


@dataclasses.dataclass
class _Live:
    namespace_exists: bool
    tables: dict[TableRole, _Table]
    indexes: dict[str, _Index]
    status: _Enum | None
    legacy_status: _Enum | None
    function_body: str | None
    function_schema: str | None
    trigger: _Trigger | None


@dataclasses.dataclass
class _Plan:
    """An upgrade: enum ``labels`` (committed first, since a new label is unusable in the
    transaction that adds it), then everything else in ``main``."""

    labels: list[sql.Composed]
    main: list[sql.Composed]

    def texts(self) -> list[str]:
        return [ddl.render(s) for s in (*self.labels, *self.main)]


class _Catalog:
    """Reads the objects named by one :class:`DBSettings` from ``pg_catalog``.

    Every object is located by (schema, name); a ``None`` schema means the
    connection's ``current_schema()``, as for PgQueuer's unqualified names.
    """

    def __init__(self, settings: DBSettings) -> None:
        self.settings = settings

    def locate(self, field: str) -> tuple[str | None, str]:
        parts = self.settings.qualified_parts(field)
        schema = parts[0].lower() if len(parts) > 1 else None
        return schema, parts[-1].lower()

    def _wanted_tables(self) -> dict[str, Any]:
        located = [self.locate(TABLE_FIELDS[role]) for role in _ROLES]
        return {
            "roles": list(_ROLES),
            "nsps": [nsp for nsp, _ in located],
            "names": [name for _, name in located],
        }

    def read(self, driver: Driver) -> _Live:
        """One snapshot of everything :class:`Schema` compares."""
        tables = self._tables(driver)
        status_schema, status_name = self.locate("queue_status_type")
        enums = self._enums(
            driver, status_schema, [status_name, ddl.legacy_status_name(self.settings)]
        )
        function = self._function(driver)
        return _Live(
            namespace_exists=self._namespace_exists(driver),
            tables=tables,
            indexes=self._indexes(driver),
            status=enums.get(status_name),
            legacy_status=enums.get(ddl.legacy_status_name(self.settings)),
            function_body=function[1] if function else None,
            function_schema=function[0] if function else None,
            trigger=self._trigger(driver, tables),
        )

    def _namespace_exists(self, driver: Driver) -> bool:
        if not self.settings.db_schema:
            return True
        query, params = ddl.namespace_exists(self.settings)
        return bool(driver.fetch(query, params)[0]["present"])

    _WANT = sql.SQL(
        "unnest(%(roles)s::text[], %(nsps)s::text[], %(names)s::text[]) AS want(role, nsp, name) "
        "JOIN pg_namespace ns ON ns.nspname = coalesce(want.nsp, current_schema()) "
        "JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = want.name "
        "AND c.relkind IN ('r', 'p')"
    )

    def _tables(self, driver: Driver) -> dict[TableRole, _Table]:
        params = self._wanted_tables()
        rows = driver.fetch(
            sql.SQL(
                "SELECT want.role, ns.nspname::text AS schema, c.relpersistence = 'u' AS unlogged, "
                "a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type, "
                "tn.nspname::text AS type_schema, t.typname::text AS type_name, "
                "a.attnotnull AS not_null, a.attidentity::text AS identity, "
                "pg_get_expr(d.adbin, d.adrelid) AS default "
                "FROM {want} "
                "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
                "AND NOT a.attisdropped "
                "LEFT JOIN pg_type t ON t.oid = a.atttypid "
                "LEFT JOIN pg_namespace tn ON tn.oid = t.typnamespace "
                "LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum "
                "ORDER BY want.role, a.attnum"
            ).format(want=self._WANT),
            params,
        )
        tables: dict[TableRole, _Table] = {}
        for row in rows:
            table = tables.setdefault(
                row["role"], _Table(row["role"], row["schema"], bool(row["unlogged"]))
            )
            if row["name"] is not None:
                table.columns[row["name"]] = _Column(
                    name=row["name"],
                    type=row["type"],
                    type_schema=row["type_schema"],
                    type_name=row["type_name"],
                    not_null=bool(row["not_null"]),
                    identity=row["identity"] or "",
                    default=row["default"],
                )
        if tables:
            self._constraints(driver, params, tables)
            self._sequences(driver, params, tables)
        return tables

    def _constraints(
        self, driver: Driver, params: dict[str, Any], tables: dict[TableRole, _Table]
    ) -> None:
        """UNIQUE constraints (column tuples); primary keys are not compared."""
        rows = driver.fetch(
            sql.SQL(
                "SELECT want.role, array_agg(att.attname::text ORDER BY k.ord) AS columns "
                "FROM {want} "
                "JOIN pg_constraint con ON con.conrelid = c.oid AND con.contype = 'u' "
                "JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord) ON true "
                "JOIN pg_attribute att ON att.attrelid = c.oid AND att.attnum = k.attnum "
                "GROUP BY want.role, con.oid"
            ).format(want=self._WANT),
            params,
        )
        for row in rows:
            tables[row["role"]].unique.add(tuple(row["columns"]))

    def _sequences(
        self, driver: Driver, params: dict[str, Any], tables: dict[TableRole, _Table]
    ) -> None:
        rows = driver.fetch(
            sql.SQL(
                "SELECT want.role, sn.nspname::text AS seq_schema, sc.relname::text AS seq_name, "
                "format_type(s.seqtypid, NULL) AS seq_type "
                "FROM {want} "
                "JOIN pg_depend dep ON dep.refobjid = c.oid "
                "AND dep.refclassid = 'pg_class'::regclass AND dep.classid = 'pg_class'::regclass "
                "JOIN pg_class sc ON sc.oid = dep.objid AND sc.relkind = 'S' "
                "JOIN pg_namespace sn ON sn.oid = sc.relnamespace "
                "JOIN pg_sequence s ON s.seqrelid = sc.oid "
                "ORDER BY want.role, sc.relname"
            ).format(want=self._WANT),
            params,
        )
        for row in rows:
            table = tables[row["role"]]
            table.sequence = sql.Identifier(row["seq_schema"], row["seq_name"])
            table.sequence_type = row["seq_type"]

    def _indexes(self, driver: Driver) -> dict[str, _Index]:
        rows = driver.fetch(
            sql.SQL(
                "SELECT want.role, ic.relname::text AS name, i.indisunique AS unique, "
                "pg_get_indexdef(i.indexrelid) AS definition "
                "FROM {want} "
                "JOIN pg_index i ON i.indrelid = c.oid "
                "JOIN pg_class ic ON ic.oid = i.indexrelid "
                "WHERE NOT EXISTS (SELECT 1 FROM pg_constraint con "
                "WHERE con.conindid = i.indexrelid AND con.conrelid = c.oid)"
            ).format(want=self._WANT),
            self._wanted_tables(),
        )
        return {
            row["name"]: _Index(
                row["name"],
                row["role"],
                bool(row["unique"]),
                row["definition"][row["definition"].index(" USING ") + 1 :],
            )
            for row in rows
        }

    def _enums(self, driver: Driver, schema: str | None, names: list[str]) -> dict[str, _Enum]:
        rows = driver.fetch(
            sql.SQL(
                "SELECT t.typname::text AS name, ns.nspname::text AS schema, "
                "format_type(t.oid, NULL) AS display, "
                "array_remove(array_agg(e.enumlabel::text ORDER BY e.enumsortorder), NULL) "
                "AS labels "
                "FROM pg_type t "
                "JOIN pg_namespace ns ON ns.oid = t.typnamespace "
                "LEFT JOIN pg_enum e ON e.enumtypid = t.oid "
                "WHERE ns.nspname = coalesce(%(nsp)s, current_schema()) "
                "AND t.typname = ANY (%(names)s::text[]) AND t.typtype = 'e' "
                "GROUP BY t.oid, t.typname, ns.nspname"
            ),
            {"nsp": schema, "names": names},
        )
        return {
            row["name"]: _Enum(row["schema"], row["display"], tuple(row["labels"])) for row in rows
        }

    def _function(self, driver: Driver) -> tuple[str, str] | None:
        nsp, name = self.locate("function")
        rows = driver.fetch(
            sql.SQL(
                "SELECT ns.nspname::text AS schema, p.prosrc FROM pg_proc p "
                "JOIN pg_namespace ns ON ns.oid = p.pronamespace "
                "WHERE ns.nspname = coalesce(%(nsp)s, current_schema()) "
                "AND p.proname = %(name)s AND p.pronargs = 0 LIMIT 1"
            ),
            {"nsp": nsp, "name": name},
        )
        return (rows[0]["schema"], rows[0]["prosrc"]) if rows else None

    def _trigger(self, driver: Driver, tables: dict[TableRole, _Table]) -> _Trigger | None:
        nsp, _ = self.locate("queue_table")
        rows = driver.fetch(
            sql.SQL(
                "SELECT cn.nspname::text AS table_schema, "
                "c.relname::text AS table_name, pn.nspname::text AS function_schema, "
                "p.proname::text AS function_name, tg.tgtype::int AS tgtype "
                "FROM pg_trigger tg "
                "JOIN pg_class c ON c.oid = tg.tgrelid "
                "JOIN pg_namespace cn ON cn.oid = c.relnamespace "
                "JOIN pg_proc p ON p.oid = tg.tgfoid "
                "JOIN pg_namespace pn ON pn.oid = p.pronamespace "
                "WHERE NOT tg.tgisinternal AND tg.tgname = %(name)s "
                "AND cn.nspname = coalesce(%(nsp)s, current_schema()) "
                "ORDER BY (c.relname = %(table)s) DESC LIMIT 1"
            ),
            {
                "name": self.settings.bare_name("trigger"),
                "nsp": nsp,
                "table": self.locate("queue_table")[1],
            },
        )
        if not rows:
            return None
        row = rows[0]
        role: TableRole | None = None
        for candidate, table in tables.items():
            located = self.locate(TABLE_FIELDS[candidate])[1]
            if table.schema == row["table_schema"] and located == row["table_name"]:
                role = candidate
        return _Trigger(role, row["function_schema"], row["function_name"], int(row["tgtype"]))


# -- indexes we do not manage --------------------------------------------------------------


def _unmanaged_indexes(settings: DBSettings, live: _Live) -> list[tuple[_Index, str]]:
    """Indexes on the four tables that the declaration does not cover, with a description.

    Covered are :data:`ddl.INDEXES`, the index retired in 1.5.0 (which upgrade
    drops, as ``pgq upgrade`` does) and the temporary names of interrupted
    rebuilds of declared indexes (finished or dropped by upgrade). Everything
    else (PgQueuer 2.x's ``{statistics_table}_created``, an operator's own
    index) is tolerated: verify does not report it and upgrade neither changes
    nor drops it. It is only listed here, for a DEBUG log line.
    """
    declared = {index.name(settings) for index in ddl.INDEXES}
    covered = declared | {ddl.rebuild_name(name) for name in declared}
    covered.add(settings.index_name(ddl.RETIRED_QUEUE_INDEX_SUFFIX))
    later = {index.name(settings): index for index in ddl.PGQUEUER2_INDEXES}
    found: list[tuple[_Index, str]] = []
    for name in sorted(set(live.indexes) - covered):
        index = live.indexes[name]
        spec = later.get(name)
        if spec is not None and spec.role == index.role:
            found.append((index, "PgQueuer 2.x index"))
        else:
            found.append((index, "index unknown to PgQueuer 1.6.0"))
    return found


def _log_unmanaged(settings: DBSettings, live: _Live, what: str) -> None:
    if not logger.isEnabledFor(logging.DEBUG):
        return
    for index, description in _unmanaged_indexes(settings, live):
        logger.debug(
            "%s: %s %r on %s (%s) tolerated and left alone",
            what,
            description,
            index.name,
            settings.bare_name(TABLE_FIELDS[index.role]),
            index.tail,
        )


# -- the planner ---------------------------------------------------------------------------


class _Planner:
    """Diffs a :class:`_Live` snapshot against the declaration in :mod:`ddl`."""

    def __init__(self, settings: DBSettings, catalog: _Catalog, live: _Live) -> None:
        self.settings = settings
        self.catalog = catalog
        self.live = live

    def plan(self) -> _Plan:
        _log_unmanaged(self.settings, self.live, "upgrade")
        main: list[sql.Composed] = []
        main += self._namespace()
        main += self._enum()
        for spec in TABLES:
            main += self._table(spec)
        main += self._retired()
        for index in ddl.INDEXES:
            main += self._index(index)
        main += self._routines()
        if self.live.legacy_status is not None:
            main.append(ddl.drop_legacy_status(self.settings))
        return _Plan(labels=self._labels(), main=main)

    # text normalisation: the catalog qualifies the enum when its schema is off search_path
    def _unqualify(self, text: str) -> str:
        status = self.live.status
        bare = self.settings.bare_name("queue_status_type")
        if status is None or status.display == bare:
            return text
        return text.replace(status.display, bare)

    def _namespace(self) -> list[sql.Composed]:
        statement = ddl.create_namespace(self.settings)
        if statement is None or self.live.namespace_exists:
            return []
        return [statement]

    def _enum(self) -> list[sql.Composed]:
        return [] if self.live.status is not None else [ddl.create_enum(self.settings)]

    def _labels(self) -> list[sql.Composed]:
        """Missing labels, each placed after its declared predecessor so the order holds."""
        if self.live.status is None:
            return []
        present = self.live.status.labels
        statements = []
        for position, label in enumerate(ddl.STATUS_LABELS):
            if label in present:
                continue
            if position:
                where = {"after": ddl.STATUS_LABELS[position - 1]}
            else:
                where = {"before": present[0]} if present else {}
            statements.append(ddl.add_enum_label(self.settings, label, **where))
        return statements

    def _table(self, spec: TableSpec) -> list[sql.Composed]:
        live = self.live.tables.get(spec.role)
        if live is None:
            unlogged = spec.role in self.settings.durability.unlogged_tables()
            return [ddl.create_table(self.settings, spec.role, unlogged=unlogged)]
        statements: list[sql.Composed] = []
        for column in spec.columns:
            installed = live.columns.get(column.name)
            if installed is None:
                if column.kind == "plain":
                    statements.append(ddl.add_column(self.settings, spec.role, column))
                else:
                    logger.warning(
                        "%s.%s is missing; upgrade cannot add a primary key id",
                        spec.role,
                        column.name,
                    )
                continue
            statements += self._column(spec.role, column, installed)
        statements += self._sequence(spec, live)
        statements += [
            ddl.add_unique(self.settings, spec.role, columns)
            for columns in spec.unique
            if columns not in live.unique
        ]
        return statements

    def _is_status(self, column: _Column) -> bool:
        status = self.live.status
        name = self.settings.bare_name("queue_status_type")
        schema = (
            status.schema if status is not None else self.catalog.locate("queue_status_type")[0]
        )
        return column.type_name == name and (schema is None or column.type_schema == schema)

    def _column(
        self, role: TableRole, column: ColumnSpec, installed: _Column
    ) -> list[sql.Composed]:
        statements: list[sql.Composed] = []
        default = installed.default
        if column.type == ddl.STATUS_TYPE:
            if not self._is_status(installed):
                if default is not None:
                    statements.append(ddl.drop_default(self.settings, role, column.name))
                    default = None
                statements.append(ddl.column_into_status(self.settings, role, column.name))
        elif installed.type != column.type:
            if installed.type == "integer" and column.type == "bigint":
                if self.settings.widen_id:
                    statements.append(ddl.widen_column(self.settings, role, column.name))
                else:
                    logger.warning(
                        "%s.%s is still integer and widening is disabled", role, column.name
                    )
            else:
                raise SchemaError(
                    f"column {self.settings.bare_name(TABLE_FIELDS[role])}.{column.name} is "
                    f"{installed.type}, but PgQueuer 1.6.0 declares {column.type}; "
                    "convert it by hand, then run the upgrade again"
                )
        if column.kind != "plain" or installed.kind != "plain":
            # Serial/identity ids keep their own default; a kind change is not converted.
            return statements
        if installed.not_null != column.not_null:
            statements.append(
                ddl.set_not_null(self.settings, role, column.name, on=column.not_null)
            )
        expected = (
            None if column.default is None else ddl.catalog_text(column.default, self.settings)
        )
        if (None if default is None else self._unqualify(default)) != expected:
            statements.append(ddl.set_default(self.settings, role, column))
        return statements

    def _sequence(self, spec: TableSpec, live: _Table) -> list[sql.Composed]:
        if live.sequence is None or live.sequence_type in (None, "bigint"):
            return []
        if not self.settings.widen_id:
            logger.warning(
                "the id sequence of %s is still %s and widening is disabled",
                spec.role,
                live.sequence_type,
            )
            return []
        return [ddl.widen_sequence(live.sequence)]

    def _retired(self) -> list[sql.Composed]:
        statements: list[sql.Composed] = []
        retired = self.settings.index_name(ddl.RETIRED_QUEUE_INDEX_SUFFIX)
        if retired in self.live.indexes:
            statements.append(ddl.drop_index(self.settings, "queue", retired))
        stats = self.live.tables.get("statistics")
        column = stats.columns.get(ddl.RETIRED_STATISTICS_COLUMN) if stats else None
        if column is not None and column.not_null:
            statements.append(ddl.drop_retired_column_not_null(self.settings))
        return statements

    def _expected(self, index: IndexSpec) -> _Index:
        name = index.name(self.settings)
        return _Index(name, index.role, index.unique, ddl.catalog_text(index.tail, self.settings))

    def _normalised(self, index: _Index, name: str) -> _Index:
        return dataclasses.replace(index, name=name, tail=self._unqualify(index.tail))

    def _index(self, index: IndexSpec) -> list[sql.Composed]:
        expected = self._expected(index)
        installed = self.live.indexes.get(expected.name)
        if installed is not None and self._normalised(installed, expected.name) == expected:
            return []
        statements: list[sql.Composed] = []
        if index.suffix == ddl.UNIQUE_COUNT_SUFFIX and index.role in self.live.tables:
            statements.append(ddl.fold_statistics(self.settings))
        if installed is not None:
            return statements + ddl.rebuild_index(self.settings, index)
        leftover = self.live.indexes.get(ddl.rebuild_name(expected.name))
        if leftover is not None:
            if self._normalised(leftover, expected.name) == expected:
                # A rebuild interrupted between its drop and its rename: finish it.
                return [ddl.rename_index(self.settings, index.role, leftover.name, expected.name)]
            statements.append(ddl.drop_index(self.settings, index.role, leftover.name))
        return [*statements, ddl.create_index(self.settings, index)]

    def _routines(self) -> list[sql.Composed]:
        statements: list[sql.Composed] = []
        body = ddl.function_body(self.settings.channel)
        installed = self.live.function_body
        if installed is None or ddl.collapse_whitespace(installed) != ddl.collapse_whitespace(body):
            statements.append(ddl.create_function(self.settings, replace=installed is not None))
        trigger = self.live.trigger
        fn_schema, fn_name = self.catalog.locate("function")
        expected_fn_schema = self.live.function_schema if fn_schema is None else fn_schema
        if (
            trigger is None
            or trigger.table_role != "queue"
            or trigger.function_name != fn_name
            or (expected_fn_schema is not None and trigger.function_schema != expected_fn_schema)
            or trigger.tgtype != ddl.TRIGGER_TGTYPE
        ):
            if trigger is not None:
                statements.append(ddl.drop_trigger(self.settings))
            statements.append(ddl.create_trigger(self.settings))
        return statements


# -- the public API ------------------------------------------------------------------------


class Schema:
    """The queue schema of one set of :class:`DBSettings`, managed through ``driver``.

    ``settings`` defaults to :func:`pgqueue_sync.settings.db_settings` (the
    ``PGQUEUER_*`` environment). Methods that change the schema run in
    ``driver.transaction()``; a driver bound to a caller's transaction joins it.
    """

    def __init__(self, driver: Driver, settings: DBSettings | None = None) -> None:
        self.driver = driver
        self.settings = settings if settings is not None else db_settings()
        names.check_lengths(self.settings)  # before any DDL: PostgreSQL would truncate
        self._catalog = _Catalog(self.settings)

    # -- install / uninstall ---------------------------------------------------------------

    def install(self, *, durability: Durability | None = None, create_schema: bool = True) -> None:
        """Create every object in one transaction.

        ``durability`` defaults to ``settings.durability``. Raises
        :class:`AlreadyInstalledError`, naming what was found, if any of the
        four tables, the enum, the function or the trigger already exists.
        """
        with self.driver.transaction() as tx:
            live = self._catalog.read(tx)
            found = self._found(live)
            if found:
                raise AlreadyInstalledError(
                    f"queue objects already exist: {', '.join(found)}; run 'pgq-sync upgrade' "
                    "(or 'pgq upgrade') to bring them up to date, or uninstall first"
                )
            # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the
            # schema exists: skip it then, so an admin role with rights on the schema
            # alone can install (see docs/permissions.md).
            statements = ddl.install_statements(
                self.settings, durability=durability,
                create_schema=create_schema and not live.namespace_exists,
            )
            for statement in statements:
                tx.execute(statement)

    def install_sql(
        self, *, durability: Durability | None = None, create_schema: bool = True
    ) -> str:
        """The install as an offline SQL script (no existence check)."""
        return install_script(self.settings, durability=durability, create_schema=create_schema)

    def uninstall(self) -> None:
        """Drop the trigger, function, four tables, enum and legacy enum, in one transaction.

        Every drop is ``IF EXISTS``, so a partial or absent install is fine. Destroys all jobs.
        """
        with self.driver.transaction() as tx:
            for statement in ddl.uninstall_statements(self.settings):
                tx.execute(statement)

    def uninstall_sql(self) -> str:
        """The uninstall as an offline SQL script."""
        return uninstall_script(self.settings)

    def install_results(self) -> None:
        """Create pgqueue_sync's opt-in results table (idempotent).

        Not one of PgQueuer's objects: :meth:`install`, :meth:`verify`,
        :meth:`upgrade` and :meth:`uninstall` leave it alone, as ``pgq`` does.
        See :class:`~pgqueue_sync.results.Results`.
        """
        from .results import Results

        Results(self.driver, self.settings).install()

    def uninstall_results(self) -> None:
        """Drop the results table and every stored result (``IF EXISTS``)."""
        from .results import Results

        Results(self.driver, self.settings).uninstall()

    # -- inspection ------------------------------------------------------------------------

    def _names(self) -> dict[str, str]:
        s = self.settings
        return {
            "enum": s.bare_name("queue_status_type"),
            "function": s.bare_name("function"),
            "trigger": s.bare_name("trigger"),
            **{role: s.bare_name(field) for role, field in TABLE_FIELDS.items()},
        }

    def _objects(self, live: _Live) -> dict[str, bool]:
        """``"table 'pgqueuer'"``-style description -> whether it exists, in install order."""
        names = self._names()
        objects = {f"table {names[role]!r}": role in live.tables for role in _ROLES}
        objects[f"enum {names['enum']!r}"] = live.status is not None
        objects[f"function {names['function']!r}"] = live.function_body is not None
        objects[f"trigger {names['trigger']!r}"] = live.trigger is not None
        return objects

    def _found(self, live: _Live) -> list[str]:
        return [item for item, exists in self._objects(live).items() if exists]

    def verify(self, expect: Literal["present", "absent"]) -> list[str]:
        """Problems found, ``[]`` when the database is as expected.

        ``absent``: none of the four tables, the enum, the function or the
        trigger may exist (``"unexpected table 'pgqueuer'"``). ``present``: all
        of them must, plus what a PgQueuer 1.6 worker checks at boot: columns,
        the ``canceled``/``failed`` labels and two indexes
        (``"missing column 'pgqueuer.slot'"``). Extra indexes, such as the one
        PgQueuer 2.x adds to the statistics table, are never a problem; they
        are named at DEBUG.
        """
        if expect not in ("present", "absent"):
            raise ValueError(f"expect must be 'present' or 'absent', not {expect!r}")
        live = self._catalog.read(self.driver)
        if expect == "absent":
            return [f"unexpected {item}" for item in self._found(live)]
        return self._missing(live)

    def _missing(self, live: _Live) -> list[str]:
        _log_unmanaged(self.settings, live, "verify")
        names = self._names()
        problems = [f"missing {item}" for item, ok in self._objects(live).items() if not ok]
        required: dict[TableRole, tuple[str, ...]] = {
            "queue": (
                "updated",
                "heartbeat",
                "queue_manager_id",
                "execute_after",
                "headers",
                "attempts",
                "slot",
            ),
            "log": ("traceback",),
        }
        for role, columns in required.items():
            table = live.tables.get(role)
            if table is None:
                continue
            problems += [
                f"missing column '{names[role]}.{column}'"
                for column in columns
                if column not in table.columns
            ]
        if live.status is not None:
            problems += [
                f"missing enum label '{names['enum']}.{label}'"
                for label in ("canceled", "failed")
                if label not in live.status.labels
            ]
        for suffix, field in (
            ("job_id_status", "queue_table_log"),
            ("picked_slot_idx", "queue_table"),
        ):
            index = self.settings.index_name(suffix, field)
            if index not in live.indexes:
                problems.append(f"missing index {index!r}")
        return problems

    def is_installed(self) -> bool:
        """True when the four tables, the enum, the function and the trigger all exist.

        A partial install is not installed, yet :meth:`install` still refuses it.
        """
        return all(self._objects(self._catalog.read(self.driver)).values())

    # -- upgrade ---------------------------------------------------------------------------

    def _plan(self, driver: Driver) -> _Plan:
        return _Planner(self.settings, self._catalog, self._catalog.read(driver)).plan()

    def plan_upgrade(self) -> list[str]:
        """The SQL :meth:`upgrade` would run now, ``[]`` when already 1.6.0-shaped.

        Raises :class:`SchemaError` for a column whose type upgrade cannot convert.
        """
        return self._plan(self.driver).texts()

    def upgrade(self) -> list[str]:
        """Bring the schema to PgQueuer 1.6.0's shape and return the SQL that ran.

        Idempotent; never drops tables or columns and never changes durability.
        Indexes it does not declare (PgQueuer 2.x's ``{statistics_table}_created``,
        or your own) are left alone; only the index PgQueuer 1.5.0 retired is dropped.
        Missing enum labels are added and committed first (a new label cannot
        be used in the transaction that adds it); everything else runs in a
        second transaction. Both take ``pg_advisory_xact_lock`` on the key
        ``pgq upgrade`` uses, so concurrent upgrades (ours or PgQueuer's)
        serialise, and each plans inside its lock.
        """
        key = ddl.advisory_lock_key(self.settings)
        lock = sql.SQL("SELECT pg_advisory_xact_lock(%s)")
        ran: list[str] = []
        with self.driver.transaction() as tx:
            tx.execute(lock, [key])
            labels = self._plan(tx).labels
            for statement in labels:
                tx.execute(statement)
            ran += [ddl.render(s) for s in labels]
        with self.driver.transaction() as tx:
            tx.execute(lock, [key])
            main = self._plan(tx).main
            for statement in main:
                tx.execute(statement)
            ran += [ddl.render(s) for s in main]
        return ran

    # -- durability ------------------------------------------------------------------------

    def current_durability(self) -> dict[str, bool]:
        """Table role (``queue``, ``log``, ``statistics``, ``schedules``) -> is LOGGED.

        Only tables that exist are listed.
        """
        tables = self._catalog.read(self.driver).tables
        return {role: not tables[role].unlogged for role in _ROLES if role in tables}

    def durability_sql(self, level: Durability) -> str:
        """``SET LOGGED``/``SET UNLOGGED`` for all four tables, as an offline script."""
        return durability_script(self.settings, level)

    def set_durability(self, level: Durability) -> list[str]:
        """Switch the tables to ``level`` in one transaction; returns the statements run.

        Only tables whose persistence differs are altered (each one is rewritten).
        Raises :class:`SchemaNotInstalledError` if a table is missing.
        """
        level = Durability(level)
        unlogged = level.unlogged_tables()
        ran: list[str] = []
        with self.driver.transaction() as tx:
            tables = self._catalog.read(tx).tables
            missing = [self.settings.bare_name(TABLE_FIELDS[r]) for r in _ROLES if r not in tables]
            if missing:
                raise SchemaNotInstalledError(
                    f"missing table(s) {', '.join(missing)}; run 'pgq-sync install' first"
                )
            for role in _ROLES:
                if tables[role].unlogged != (role in unlogged):
                    statement = ddl.set_persistence(
                        self.settings, role, logged=role not in unlogged
                    )
                    tx.execute(statement)
                    ran.append(ddl.render(statement))
        return ran


__all__ = ["Schema"]


# -- offline scripts (no connection needed) -------------------------------------------------


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
