"""The upgrade planner: diff a catalog snapshot against the declaration, list the DDL.

Catalog-driven like ``pgq upgrade``: only the difference is planned, so a
database that PgQueuer 1.3+ (or pgqueue_sync) installed converges on exactly
what ``pgq install`` 1.6.0 creates. Nothing planned drops a table or a column,
or changes durability.
"""

from __future__ import annotations

import dataclasses
import logging

from psycopg import sql

from ..errors import SchemaError
from ..settings import DBSettings
from ..sql import ddl
from ..sql.ddl import TABLE_FIELDS, TABLES, ColumnSpec, IndexSpec, TableRole, TableSpec
from .catalog import Catalog
from .live import LiveColumn, LiveIndex, LiveSchema, LiveTable
from .unmanaged import log_unmanaged

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class UpgradePlan:
    """An upgrade: enum ``labels`` (committed first, since a new label is unusable in the
    transaction that adds it), then everything else in ``main``."""

    labels: list[sql.Composed]
    main: list[sql.Composed]

    def texts(self) -> list[str]:
        """Every statement of the plan as SQL text, in order."""
        return [ddl.render(s) for s in (*self.labels, *self.main)]


class Planner:
    """Diffs a :class:`LiveSchema` snapshot against the declaration in :mod:`ddl`."""

    def __init__(self, settings: DBSettings, catalog: Catalog, live: LiveSchema) -> None:
        self.settings = settings
        self.catalog = catalog
        self.live = live

    def plan(self) -> UpgradePlan:
        """The statements that bring the snapshot to the declaration."""
        log_unmanaged(self.settings, self.live, "upgrade")
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
        return UpgradePlan(labels=self._labels(), main=main)

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

    def _is_status(self, column: LiveColumn) -> bool:
        status = self.live.status
        name = self.settings.bare_name("queue_status_type")
        schema = (
            status.schema if status is not None else self.catalog.locate("queue_status_type")[0]
        )
        return column.type_name == name and (schema is None or column.type_schema == schema)

    def _column(
        self, role: TableRole, column: ColumnSpec, installed: LiveColumn
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

    def _sequence(self, spec: TableSpec, live: LiveTable) -> list[sql.Composed]:
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

    def _expected(self, index: IndexSpec) -> LiveIndex:
        name = index.name(self.settings)
        tail = ddl.catalog_text(index.tail, self.settings)
        return LiveIndex(name, index.role, index.unique, tail)

    def _normalised(self, index: LiveIndex, name: str) -> LiveIndex:
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
