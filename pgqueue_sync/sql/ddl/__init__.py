"""DDL for PgQueuer 1.6.0's schema, as :class:`psycopg.sql.Composed` statements.

Everything here is a pure function of :class:`~pgqueue_sync.settings.DBSettings`:
no connection, no I/O. :class:`~pgqueue_sync.schema.Schema` runs the statements.
The package's modules, each importable on its own, and all gathered here:

* :mod:`.spec`: the declared target schema (:data:`TABLES`, :data:`INDEXES`,
  the status labels), in the spelling ``pg_catalog`` reports back, so that an
  installed database can be compared with it by string equality, exactly as
  ``pgq upgrade`` compares it;
* :mod:`.naming`: where each object lives, and names and labels as DDL and
  the catalog spell them;
* :mod:`.trigger`: the NOTIFY trigger function (:func:`function_body`) and trigger;
* :mod:`.create`: CREATE statements for the namespace, enum, tables and indexes;
* :mod:`.upgrade`: the ALTER building blocks of an upgrade;
* :mod:`.scripts`: whole install, uninstall and durability lists, and rendering.

Configurable names reach SQL only as :class:`~psycopg.sql.Identifier`; enum
labels and the function body only as :class:`~psycopg.sql.Literal`.
"""

from __future__ import annotations

from .create import (
    column_definition,
    column_type,
    create_enum,
    create_index,
    create_namespace,
    create_table,
    namespace_exists,
    unique_clause,
)
from .naming import (
    advisory_lock_key,
    catalog_text,
    index_ident,
    legacy_status_ident,
    legacy_status_name,
    rebuild_name,
    sibling_ident,
    status_literal,
    table_ident,
    with_status_literals,
)
from .scripts import (
    durability_statements,
    install_header,
    install_statements,
    render,
    render_script,
    set_persistence,
    uninstall_statements,
)
from .spec import (
    INDEXES,
    PGQUEUER2_INDEXES,
    RETIRED_QUEUE_INDEX_SUFFIX,
    RETIRED_STATISTICS_COLUMN,
    STATUS_LABELS,
    STATUS_TYPE,
    TABLE_FIELDS,
    TABLES,
    UNIQUE_COUNT_SUFFIX,
    ColumnKind,
    ColumnSpec,
    IndexSpec,
    TableRole,
    TableSpec,
    table_spec,
)
from .trigger import (
    TRIGGER_TGTYPE,
    collapse_whitespace,
    create_function,
    create_trigger,
    drop_trigger,
    function_body,
)
from .upgrade import (
    add_column,
    add_enum_label,
    add_unique,
    column_into_status,
    drop_default,
    drop_index,
    drop_legacy_status,
    drop_retired_column_not_null,
    fold_statistics,
    rebuild_index,
    rename_index,
    set_default,
    set_not_null,
    widen_column,
    widen_sequence,
)

__all__ = [
    "INDEXES",
    "PGQUEUER2_INDEXES",
    "RETIRED_QUEUE_INDEX_SUFFIX",
    "RETIRED_STATISTICS_COLUMN",
    "STATUS_LABELS",
    "STATUS_TYPE",
    "TABLES",
    "TABLE_FIELDS",
    "TRIGGER_TGTYPE",
    "UNIQUE_COUNT_SUFFIX",
    "ColumnKind",
    "ColumnSpec",
    "IndexSpec",
    "TableRole",
    "TableSpec",
    "add_column",
    "add_enum_label",
    "add_unique",
    "advisory_lock_key",
    "catalog_text",
    "collapse_whitespace",
    "column_definition",
    "column_into_status",
    "column_type",
    "create_enum",
    "create_function",
    "create_index",
    "create_namespace",
    "create_table",
    "create_trigger",
    "drop_default",
    "drop_index",
    "drop_legacy_status",
    "drop_retired_column_not_null",
    "drop_trigger",
    "durability_statements",
    "fold_statistics",
    "function_body",
    "index_ident",
    "install_header",
    "install_statements",
    "legacy_status_ident",
    "legacy_status_name",
    "namespace_exists",
    "rebuild_index",
    "rebuild_name",
    "render",
    "render_script",
    "rename_index",
    "set_default",
    "set_not_null",
    "set_persistence",
    "sibling_ident",
    "status_literal",
    "table_ident",
    "table_spec",
    "uninstall_statements",
    "unique_clause",
    "widen_column",
    "widen_sequence",
    "with_status_literals",
]
