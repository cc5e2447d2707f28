"""GRANT statements for the three parts of the queue's privileges: producer, worker, admin.

Pure functions of :class:`~pgqueue_sync.settings.DBSettings`: no connection,
no I/O. ``pgq-sync grants`` (:mod:`pgqueue_sync.cli.grants`) asks the database
where the objects are (:class:`Placement`) and runs the statements.

Every privilege below is the least one some operation of its part needs, as
``tests/test_permissions.py`` shows by revoking each one in turn and watching
that operation fail; the ``reason`` says which operation. A few things need no
grant at all and are deliberately missing:

* the log table's ``id`` is an identity column: inserting into it needs no
  privilege on its sequence (unlike the ``bigserial`` ids of the queue,
  statistics and schedules tables);
* the status enum (``USAGE ON TYPE``) and the trigger function: PostgreSQL
  checks neither for the statements the queue runs (casting to an enum and
  firing a trigger need no privilege);
* LISTEN, NOTIFY (``pg_notify``) and advisory locks need no privilege;
* ``CONNECT`` (and ``TEMPORARY``) on the database and ``USAGE`` on ``public``
  are PostgreSQL's defaults for ``PUBLIC``; ``USAGE`` on the objects' schema is
  granted anyway, since a dedicated schema (``PGQUEUER_SCHEMA``) lacks it.

The admin part only gets ``CREATE`` (and ``USAGE``) on the schema: the admin
role should *own* the objects (install them while connected as that role),
since ``upgrade`` and ``uninstall`` alter and drop them, which only an owner
may do. See ``docs/permissions.md``.

Names reach SQL only as :class:`~psycopg.sql.Identifier`; privilege keywords
come from the constants below, never from input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Literal

from psycopg import sql

from ..errors import ConfigurationError
from ..settings import MAX_IDENTIFIER_BYTES, DBSettings

Part = Literal["producer", "worker", "admin"]
ObjectKind = Literal["schema", "table", "sequence"]

#: The parts, in the order of how much they may do.
PARTS: tuple[Part, ...] = ("producer", "worker", "admin")
#: Schema of names that are neither qualified nor under ``db_schema``, unless told.
DEFAULT_SCHEMA = "public"
#: Whether the opt-in results table is included unless told otherwise.
INCLUDE_RESULTS = True
#: Tables whose ``id`` is a ``bigserial`` (its sequence needs a grant to insert).
SERIAL_TABLES: tuple[str, ...] = ("queue_table", "statistics_table", "schedules_table")
#: Every schema-scoped object the admin creates, for the schemas it needs.
ADMIN_OBJECTS: tuple[str, ...] = (
    "queue_table",
    "queue_table_log",
    "statistics_table",
    "schedules_table",
    "results_table",
    "queue_status_type",
    "function",
)
_SERIAL_SUFFIX = ("id", "seq")
_KEYWORDS = {"schema": "SCHEMA", "table": "TABLE", "sequence": "SEQUENCE"}
_SCHEMA_TARGET = ""


@dataclasses.dataclass(frozen=True)
class Privilege:
    """One privilege on one object, and the operation that needs it.

    ``target`` is the :class:`DBSettings` field naming the table (for a
    ``sequence``: the table whose ``id`` sequence is meant); empty for a
    ``schema`` privilege, which applies to the schema of every object the
    same list of privileges touches.
    """

    kind: ObjectKind
    target: str
    privilege: str
    reason: str


def _schema(privilege: str, reason: str) -> Privilege:
    return Privilege("schema", _SCHEMA_TARGET, privilege, reason)


def _table(target: str, privilege: str, reason: str) -> Privilege:
    return Privilege("table", target, privilege, reason)


def _sequence(target: str, reason: str) -> Privilege:
    return Privilege("sequence", target, "USAGE", reason)


#: What a producer needs: enqueue (every ``on_conflict`` mode), job_status and
#: completion waiting, reading stored results, cancelling.
PRODUCER: tuple[Privilege, ...] = (
    # Qualified names resolve only in a schema the role may use.
    _schema("USAGE", "find the queue's objects in their schema (PGQUEUER_SCHEMA; "
                     "PUBLIC already has it on public)"),
    # enqueue: INSERT ... RETURNING, and cancel: DELETE ... USING ... WHERE q.id.
    _table("queue_table", "SELECT", "enqueue reads the new rows back (RETURNING); "
                                    "cancel finds jobs by id"),
    _table("queue_table", "INSERT", "enqueue inserts the jobs"),
    # ON CONFLICT ... DO UPDATE needs UPDATE even when no row conflicts.
    _table("queue_table", "UPDATE", "on_conflict='update_priority' raises a queued "
                                    "duplicate's priority"),
    _table("queue_table", "DELETE", "cancelling deletes queued and running jobs"),
    # enqueue calls nextval() itself, to map every input to its id.
    _sequence("queue_table", "enqueue draws job ids with nextval()"),
    # The log id is an identity column: no sequence grant needed.
    _table("queue_table_log", "SELECT", "job_status() and completion waiting read the "
                                        "latest log row of each job"),
    _table("queue_table_log", "INSERT", "enqueue logs 'queued', cancelling logs 'canceled'"),
    _table("results_table", "SELECT", "reading stored results (opt-in results table)"),
)

#: What a worker needs beyond :data:`PRODUCER` (which it has too: handlers enqueue).
#: Claims, heartbeats, holds, retries and finishing use the queue table's SELECT,
#: UPDATE and DELETE and the log's INSERT, all already in the producer's part.
WORKER_EXTRA: tuple[Privilege, ...] = (
    # Aggregation: UPDATE log SET aggregated = TRUE, then upsert per-second buckets.
    _table("queue_table_log", "UPDATE", "statistics aggregation marks log rows aggregated"),
    _table("statistics_table", "SELECT", "aggregation adds to an existing bucket's count "
                                         "(ON CONFLICT DO UPDATE reads it)"),
    _table("statistics_table", "INSERT", "aggregation writes per-second buckets"),
    _table("statistics_table", "UPDATE", "aggregation adds to an existing bucket"),
    _sequence("statistics_table", "new buckets take their bigserial id"),
    # The scheduler: register, claim (SELECT ... FOR UPDATE + UPDATE), release,
    # heartbeat, and clean_old=True deletes a pair's old expressions.
    _table("schedules_table", "SELECT", "the scheduler finds due schedules"),
    _table("schedules_table", "INSERT", "the scheduler registers its schedules"),
    _table("schedules_table", "UPDATE", "the scheduler claims, releases and heartbeats "
                                        "schedules"),
    _table("schedules_table", "DELETE", "schedule(..., clean_old=True) removes old "
                                        "expressions"),
    _sequence("schedules_table", "new schedules take their bigserial id"),
    # store_results: INSERT ... ON CONFLICT (job_id) DO UPDATE.
    _table("results_table", "INSERT", "store_result=True writes the outcome"),
    _table("results_table", "UPDATE", "store_result=True overwrites a row written "
                                      "earlier (ON CONFLICT DO UPDATE)"),
)

#: What the admin needs to install: create objects in the schema. It should own
#: them (upgrade and uninstall need ownership, which no grant gives).
ADMIN: tuple[Privilege, ...] = (
    _schema("USAGE", "find the objects it creates and alters"),
    _schema("CREATE", "install and upgrade create the tables, enum and function"),
)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the objects are, as only the database can say.

    ``default_schema`` holds the names that are neither qualified nor under
    ``db_schema`` (the first schema of the search_path that has them).
    ``sequences`` maps a table field to the qualified name parts of its
    ``id`` sequence; a table not listed gets PostgreSQL's default name.
    """

    default_schema: str = DEFAULT_SCHEMA
    sequences: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


DEFAULT_PLACEMENT = Placement()


def privileges(part: Part, *, results: bool = INCLUDE_RESULTS) -> tuple[Privilege, ...]:
    """The privileges of ``part`` (a worker's include a producer's); ``results=False``
    leaves out the opt-in results table (e.g. when it is not installed)."""
    by_part = {"producer": PRODUCER, "worker": PRODUCER + WORKER_EXTRA, "admin": ADMIN}
    if part not in by_part:
        raise ConfigurationError(f"unknown part {part!r}: choose {', '.join(PARTS)}")
    chosen = by_part[part]
    return tuple(p for p in chosen if results or p.target != "results_table")


def grant_statements(
    part: Part,
    settings: DBSettings,
    role: str,
    *,
    placement: Placement = DEFAULT_PLACEMENT,
    results: bool = INCLUDE_RESULTS,
) -> list[sql.Composed]:
    """``GRANT`` statements giving ``role`` the privileges of ``part``."""
    return statements(privileges(part, results=results), settings, role, placement=placement)


def statements(
    items: Iterable[Privilege],
    settings: DBSettings,
    role: str,
    *,
    placement: Placement = DEFAULT_PLACEMENT,
    revoke: bool = False,
) -> list[sql.Composed]:
    """One ``GRANT`` (or, with ``revoke``, ``REVOKE``) per object, privileges in order."""
    chosen = list(items)
    grouped: dict[tuple[ObjectKind, tuple[str, ...]], list[str]] = {}
    for item in chosen:
        for parts in _objects(item, chosen, settings, placement):
            words = grouped.setdefault((item.kind, parts), [])
            if item.privilege not in words:
                words.append(item.privilege)
    return [
        _statement(kind, parts, words, role, revoke=revoke)
        for (kind, parts), words in grouped.items()
    ]


def schemas(
    items: Iterable[Privilege], settings: DBSettings, placement: Placement = DEFAULT_PLACEMENT
) -> list[str]:
    """The schemas holding the objects of ``items`` (of every object, for none)."""
    chosen = list(items)
    found: list[str] = []
    objects = [p for p in chosen if p.kind != "schema"]
    named = [_object_parts(p, settings, placement) for p in objects] or [
        _qualified(settings, field, placement) for field in ADMIN_OBJECTS
    ]
    for parts in named:
        if parts[-2] not in found:  # (schema, name), or (database, schema, name)
            found.append(parts[-2])
    return found


def serial_sequence(settings: DBSettings, field: str) -> tuple[str, ...]:
    """PostgreSQL's default name of the ``id`` sequence of a ``bigserial`` table,
    ``{table}_id_seq``, shortened to fit as PostgreSQL shortens it."""
    *schema, table = settings.qualified_parts(field)
    room = MAX_IDENTIFIER_BYTES - sum(len(p) + 1 for p in _SERIAL_SUFFIX)
    name = "_".join((table.lower()[:room], *_SERIAL_SUFFIX))
    return (*(s.lower() for s in schema), name)


def _objects(
    item: Privilege, chosen: list[Privilege], settings: DBSettings, placement: Placement
) -> list[tuple[str, ...]]:
    if item.kind == "schema":
        return [(name,) for name in schemas(chosen, settings, placement)]
    return [_object_parts(item, settings, placement)]


def _object_parts(
    item: Privilege, settings: DBSettings, placement: Placement
) -> tuple[str, ...]:
    """Schema-qualified name parts of a table or sequence."""
    if item.kind == "sequence":
        parts = placement.sequences.get(item.target) or serial_sequence(settings, item.target)
        return parts if len(parts) > 1 else (placement.default_schema, *parts)
    return _qualified(settings, item.target, placement)


def _qualified(settings: DBSettings, field: str, placement: Placement) -> tuple[str, ...]:
    parts = tuple(p.lower() for p in settings.qualified_parts(field))
    return parts if len(parts) > 1 else (placement.default_schema, *parts)


def _statement(
    kind: ObjectKind, parts: tuple[str, ...], words: list[str], role: str, *, revoke: bool
) -> sql.Composed:
    template = "REVOKE {privileges} ON {kind} {name} FROM {role}" if revoke else (
        "GRANT {privileges} ON {kind} {name} TO {role}"
    )
    return sql.SQL(template).format(
        privileges=sql.SQL(", ").join(sql.SQL(w) for w in words),
        kind=sql.SQL(_KEYWORDS[kind]),
        name=sql.Identifier(*parts),
        role=sql.Identifier(role),
    )
