"""Reading the queue objects one :class:`DBSettings` names from ``pg_catalog``."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from ..drivers.base import Driver
from ..settings import DBSettings
from ..sql import ddl
from ..sql.ddl import TABLE_FIELDS, TableRole
from .live import (
    TABLE_ROLES,
    LiveColumn,
    LiveEnum,
    LiveIndex,
    LiveSchema,
    LiveTable,
    LiveTrigger,
)


class Catalog:
    """Reads the objects named by one :class:`DBSettings` from ``pg_catalog``.

    Every object is located by (schema, name); a ``None`` schema means the
    connection's ``current_schema()``, as for PgQueuer's unqualified names.
    """

    def __init__(self, settings: DBSettings) -> None:
        self.settings = settings

    def locate(self, field: str) -> tuple[str | None, str]:
        """The schema (``None``: the current one) and bare name of the object in ``field``."""
        parts = self.settings.qualified_parts(field)
        schema = parts[0].lower() if len(parts) > 1 else None
        return schema, parts[-1].lower()

    def _wanted_tables(self) -> dict[str, Any]:
        located = [self.locate(TABLE_FIELDS[role]) for role in TABLE_ROLES]
        return {
            "roles": list(TABLE_ROLES),
            "nsps": [nsp for nsp, _ in located],
            "names": [name for _, name in located],
        }

    def read(self, driver: Driver) -> LiveSchema:
        """One snapshot of everything :class:`Schema` compares."""
        tables = self._tables(driver)
        status_schema, status_name = self.locate("queue_status_type")
        enums = self._enums(
            driver, status_schema, [status_name, ddl.legacy_status_name(self.settings)]
        )
        function = self._function(driver)
        return LiveSchema(
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

    def _tables(self, driver: Driver) -> dict[TableRole, LiveTable]:
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
        tables: dict[TableRole, LiveTable] = {}
        for row in rows:
            table = tables.setdefault(
                row["role"], LiveTable(row["role"], row["schema"], bool(row["unlogged"]))
            )
            if row["name"] is not None:
                table.columns[row["name"]] = LiveColumn(
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
        self, driver: Driver, params: dict[str, Any], tables: dict[TableRole, LiveTable]
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
        self, driver: Driver, params: dict[str, Any], tables: dict[TableRole, LiveTable]
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

    def _indexes(self, driver: Driver) -> dict[str, LiveIndex]:
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
            row["name"]: LiveIndex(
                row["name"],
                row["role"],
                bool(row["unique"]),
                row["definition"][row["definition"].index(" USING ") + 1 :],
            )
            for row in rows
        }

    def _enums(self, driver: Driver, schema: str | None, names: list[str]) -> dict[str, LiveEnum]:
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
            row["name"]: LiveEnum(row["schema"], row["display"], tuple(row["labels"]))
            for row in rows
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

    def _trigger(self, driver: Driver, tables: dict[TableRole, LiveTable]) -> LiveTrigger | None:
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
        return LiveTrigger(role, row["function_schema"], row["function_name"], int(row["tgtype"]))
