"""Verification: which queue objects exist, and what a PgQueuer 1.6 worker would miss.

Pure functions of a catalog snapshot (:class:`~pgqueue_sync.schema.live.LiveSchema`);
:meth:`Schema.verify <pgqueue_sync.schema.Schema.verify>` reads the snapshot
and reports what these find.
"""

from __future__ import annotations

from ..settings import DBSettings
from ..sql.ddl import TABLE_FIELDS, TableRole
from .live import TABLE_ROLES, LiveSchema
from .unmanaged import log_unmanaged

#: The columns a PgQueuer 1.6 worker needs beyond the oldest schemas', per table.
_REQUIRED_COLUMNS: dict[TableRole, tuple[str, ...]] = {
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
#: The enum labels a PgQueuer 1.6 worker needs beyond the oldest schemas'.
_REQUIRED_LABELS = ("canceled", "failed")
#: The indexes a PgQueuer 1.6 worker checks at boot: suffix and the table's settings field.
_REQUIRED_INDEXES = (
    ("job_id_status", "queue_table_log"),
    ("picked_slot_idx", "queue_table"),
)


def object_names(settings: DBSettings) -> dict[str, str]:
    """Bare names of the enum, function, trigger and each table role."""
    return {
        "enum": settings.bare_name("queue_status_type"),
        "function": settings.bare_name("function"),
        "trigger": settings.bare_name("trigger"),
        **{role: settings.bare_name(field) for role, field in TABLE_FIELDS.items()},
    }


def objects(settings: DBSettings, live: LiveSchema) -> dict[str, bool]:
    """``"table 'pgqueuer'"``-style description -> whether it exists, in install order."""
    names = object_names(settings)
    found = {f"table {names[role]!r}": role in live.tables for role in TABLE_ROLES}
    found[f"enum {names['enum']!r}"] = live.status is not None
    found[f"function {names['function']!r}"] = live.function_body is not None
    found[f"trigger {names['trigger']!r}"] = live.trigger is not None
    return found


def existing(settings: DBSettings, live: LiveSchema) -> list[str]:
    """The descriptions of the objects that exist."""
    return [item for item, exists in objects(settings, live).items() if exists]


def missing(settings: DBSettings, live: LiveSchema) -> list[str]:
    """Every object, column, label and index a PgQueuer 1.6 worker needs but ``live`` lacks."""
    log_unmanaged(settings, live, "verify")
    names = object_names(settings)
    problems = [f"missing {item}" for item, ok in objects(settings, live).items() if not ok]
    for role, columns in _REQUIRED_COLUMNS.items():
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
            for label in _REQUIRED_LABELS
            if label not in live.status.labels
        ]
    for suffix, field in _REQUIRED_INDEXES:
        index = settings.index_name(suffix, field)
        if index not in live.indexes:
            problems.append(f"missing index {index!r}")
    return problems
