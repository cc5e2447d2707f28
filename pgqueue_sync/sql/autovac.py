"""Per-table autovacuum parameters suited to the queue's tables, as SQL.

Pure functions of :class:`~pgqueue_sync.settings.DBSettings`: no connection,
no I/O. ``pgq-sync autovac`` (:mod:`pgqueue_sync.cli.autovac`) runs the
statements in one transaction, prints them (``--dry-run``) and reads back the
figures of :data:`TABLE_FIGURES`.

Why the tables need different treatment (see "Bloat and autovacuum" in
``docs/operating.md``):

* **The queue table** is small but churns: every job is inserted, updated when
  it is claimed (and at every heartbeat) and deleted when it finishes. None of
  those updates can be HOT, since each changes an indexed column (``status``
  is in the partial indexes' predicates; ``heartbeat``, ``updated`` and
  ``queue_manager_id`` are indexed), so every job leaves two or more dead row
  versions and a dead entry in each index it was in. The claim scans the
  ``(entrypoint, priority DESC, id) WHERE status = 'queued'`` index from its
  head, which is exactly where the entries of claimed jobs pile up. The
  server's defaults wait for dead rows to reach 20 % of the table, which on a
  large backlog is hundreds of thousands of entries for every claim to step
  over.
* **The log table** is insert-mostly (three rows per job), but the statistics
  fold marks each row ``aggregated`` with an UPDATE that cannot be HOT either
  (``aggregated`` is in the ``not_aggregated`` index's predicate): every log row
  turns into one dead version about 30 s after it was written, and ``prune``
  deletes old rows. It is the largest table, so a vacuum pass costs the most
  there: it is vacuumed more often than the defaults, but not as eagerly as
  the queue, and with the server's own throttling.
* **The statistics table** takes per-second buckets in inserts (an upsert that
  rarely conflicts) and ``prune``'s deletes; **the schedules table** has a
  handful of rows whose updates touch no indexed column, so they are HOT and
  pruned on the page without VACUUM. The server's defaults suit both: no
  parameters are set on them.

No ``fillfactor``: HOT updates are what free space on a page is reserved for,
and no update of a queue or log row can be HOT (above), while the schedules
table's rows fit on a page or two with room to spare; a lower fillfactor
would only make the tables bigger.

Parameters that are not set keep following the server's ``postgresql.conf``.
The values are validated numbers rendered as :class:`~psycopg.sql.Literal`
(DDL takes no bound parameters); table names reach SQL only through
:meth:`DBSettings.ident`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from psycopg import sql

from .._version import __version__
from ..errors import ConfigurationError
from ..settings import DBSettings

# The queue table's settings.
#: Vacuum once dead rows pass 1 % of the live ones (plus the threshold below), not 20 %:
#: on a 1,000,000-job backlog that is 11,000 dead rows instead of 200,050 for every
#: claim to step over. Still proportional, so a huge backlog is not rescanned (a pass
#: reads every index in full) for a few thousand dead rows.
QUEUE_VACUUM_SCALE_FACTOR = 0.01
#: ... and at least 1,000 dead rows: about 500 finished jobs, a few seconds of a busy
#: worker. Autovacuum looks at a database once per ``autovacuum_naptime`` (1 min by
#: default) anyway, so a lower value would not vacuum sooner on a busy queue, only
#: more often on an idle one.
QUEUE_VACUUM_THRESHOLD = 1_000
#: Re-analyze after 2 % of the rows changed: the planner's idea of how many rows are
#: queued or picked, and of which entrypoints, should follow the backlog as it grows
#: and drains. ANALYZE samples at most 30,000 rows whatever the size, so it is cheap.
QUEUE_ANALYZE_SCALE_FACTOR = 0.02
#: ... and at least 1,000 changed rows, so an almost empty queue is not re-analyzed
#: at every naptime for a handful of jobs.
QUEUE_ANALYZE_THRESHOLD = 1_000
#: Ten times the default budget (200) per sleep: a pass over the queue table, a few
#: MB and all in shared buffers, finishes in a fraction of the default's time, so
#: the rows that die during the pass (which it cannot remove) are few. Tables with
#: their own cost settings also leave the global autovacuum cost balancing, so
#: vacuums of other tables no longer slow this one down.
QUEUE_VACUUM_COST_LIMIT = 2_000
#: The sleep, in milliseconds, after each budget: PostgreSQL's own default since 12,
#: set here so that the budget above means the same on servers still configured
#: with the old 20 ms. 2,000 per 2 ms still throttles writes to a few hundred MB/s,
#: so a vacuum of an unusually large backlog cannot saturate the disk.
QUEUE_VACUUM_COST_DELAY = 2

# The log table's settings.
#: Vacuum once dead rows pass 5 % of the live ones, not 20 %: each log row leaves
#: one dead version when it is aggregated, so the default lets the heap grow by a
#: fifth before any space is reused, and lets the ``not_aggregated`` index, which
#: every statistics fold scans from its head, collect that many dead entries.
#: Not 1 % as on the queue: the log is the largest table and each pass reads all
#: five of its indexes in full.
LOG_VACUUM_SCALE_FACTOR = 0.05
#: ... and at least 10,000 dead rows (about 3,300 jobs), so a young log is not
#: vacuumed at every naptime.
LOG_VACUUM_THRESHOLD = 10_000
#: Also vacuum after inserts of 5 % of the rows (PostgreSQL 13+): when no worker
#: folds statistics the log is insert-only, and this marks the new pages
#: all-visible and freezes them in small steps instead of one long
#: anti-wraparound pass over the whole table later.
LOG_VACUUM_INSERT_SCALE_FACTOR = 0.05
#: ... and at least 10,000 inserted rows, as for dead rows.
LOG_VACUUM_INSERT_THRESHOLD = 10_000

#: PostgreSQL's limits for the parameters above (``reloptions.c``): kind, minimum,
#: maximum. A value outside them is refused here rather than by the server.
_INT_MAX = 2_147_483_647
_LIMITS: dict[str, tuple[type, float, float]] = {
    "autovacuum_vacuum_scale_factor": (float, 0.0, 100.0),
    "autovacuum_vacuum_threshold": (int, 0, _INT_MAX),
    "autovacuum_vacuum_insert_scale_factor": (float, 0.0, 100.0),
    "autovacuum_vacuum_insert_threshold": (int, -1, _INT_MAX),
    "autovacuum_analyze_scale_factor": (float, 0.0, 100.0),
    "autovacuum_analyze_threshold": (int, 0, _INT_MAX),
    "autovacuum_vacuum_cost_delay": (float, 0.0, 100.0),
    "autovacuum_vacuum_cost_limit": (int, 1, 10_000),
}
#: The four PgQueuer tables, in the order they are shown.
TABLE_FIELDS: tuple[str, ...] = (
    "queue_table",
    "queue_table_log",
    "statistics_table",
    "schedules_table",
)
#: How long ``SET LOCAL lock_timeout`` lets the ALTER TABLEs wait for their
#: SHARE UPDATE EXCLUSIVE lock, in milliseconds. That lock does not conflict
#: with the workers' reads and writes, only with a VACUUM, ANALYZE, index build
#: or schema change in progress on the same table.
LOCK_TIMEOUT_MS = 10_000


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One storage parameter and its value; validated on construction."""

    name: str
    value: int | float

    def __post_init__(self) -> None:
        limits = _LIMITS.get(self.name)
        if limits is None:
            raise ConfigurationError(
                f"unknown autovacuum parameter {self.name!r}: choose one of "
                f"{', '.join(sorted(_LIMITS))}"
            )
        kind, low, high = limits
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigurationError(f"{self.name} must be a number, got {value!r}")
        if kind is int and not isinstance(value, int):
            raise ConfigurationError(f"{self.name} must be a whole number, got {value!r}")
        if not math.isfinite(value) or not low <= value <= high:
            raise ConfigurationError(
                f"{self.name} must be between {low:g} and {high:g}, got {value!r}"
            )

    @property
    def literal(self) -> sql.Literal:
        return sql.Literal(self.value)

    @property
    def setting(self) -> str:
        """``name=value`` as ``pg_class.reloptions`` stores it (the literal's text)."""
        return f"{self.name}={self.literal.as_string().strip()}"

    def assignment(self) -> sql.Composed:
        """``name = value`` for ``ALTER TABLE ... SET (...)``; the name is one of ours."""
        return sql.SQL("{} = {}").format(sql.SQL(self.name), self.literal)


@dataclasses.dataclass(frozen=True)
class TableTuning:
    """The parameters set on the table in ``field`` (a :class:`DBSettings` field)."""

    field: str
    parameters: tuple[Parameter, ...]
    summary: str

    def __post_init__(self) -> None:
        if self.field not in TABLE_FIELDS:
            raise ConfigurationError(f"not a queue table field: {self.field!r}")
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"a parameter is set twice on {self.field}: {names}")

    @property
    def settings(self) -> list[str]:
        """The ``reloptions`` entries these parameters leave, in order."""
        return [p.setting for p in self.parameters]


QUEUE_TUNING = TableTuning(
    "queue_table",
    (
        Parameter("autovacuum_vacuum_scale_factor", QUEUE_VACUUM_SCALE_FACTOR),
        Parameter("autovacuum_vacuum_threshold", QUEUE_VACUUM_THRESHOLD),
        Parameter("autovacuum_analyze_scale_factor", QUEUE_ANALYZE_SCALE_FACTOR),
        Parameter("autovacuum_analyze_threshold", QUEUE_ANALYZE_THRESHOLD),
        Parameter("autovacuum_vacuum_cost_limit", QUEUE_VACUUM_COST_LIMIT),
        Parameter("autovacuum_vacuum_cost_delay", QUEUE_VACUUM_COST_DELAY),
    ),
    "every job leaves dead rows and dead entries at the head of the claim index: "
    "vacuum early and fast",
)
LOG_TUNING = TableTuning(
    "queue_table_log",
    (
        Parameter("autovacuum_vacuum_scale_factor", LOG_VACUUM_SCALE_FACTOR),
        Parameter("autovacuum_vacuum_threshold", LOG_VACUUM_THRESHOLD),
        Parameter("autovacuum_vacuum_insert_scale_factor", LOG_VACUUM_INSERT_SCALE_FACTOR),
        Parameter("autovacuum_vacuum_insert_threshold", LOG_VACUUM_INSERT_THRESHOLD),
    ),
    "insert-mostly, and every row is updated once by the statistics fold: "
    f"vacuum at {LOG_VACUUM_SCALE_FACTOR:.0%} dead or inserted rows instead of 20%",
)
#: What ``pgq-sync autovac`` sets; the statistics and schedules tables keep the defaults.
TUNINGS: tuple[TableTuning, ...] = (QUEUE_TUNING, LOG_TUNING)


def table_name(settings: DBSettings, field: str) -> str:
    """The table's name as the catalog spells it, schema-qualified when configured."""
    return ".".join(part.lower() for part in settings.qualified_parts(field))


def set_statements(
    settings: DBSettings, *, tunings: Sequence[TableTuning] = TUNINGS
) -> list[sql.Composed]:
    """One ``ALTER TABLE ... SET (...)`` per tuned table."""
    return [
        sql.SQL("ALTER TABLE {} SET (\n    {}\n)").format(
            settings.ident(t.field), sql.SQL(",\n    ").join(p.assignment() for p in t.parameters)
        )
        for t in tunings
        if t.parameters
    ]


def reset_statements(
    settings: DBSettings, *, tunings: Sequence[TableTuning] = TUNINGS
) -> list[sql.Composed]:
    """One ``ALTER TABLE ... RESET (...)`` per tuned table, for exactly the parameters
    :func:`set_statements` sets (anything else in ``reloptions`` stays)."""
    return [
        sql.SQL("ALTER TABLE {} RESET (\n    {}\n)").format(
            settings.ident(t.field), sql.SQL(",\n    ").join(sql.SQL(p.name) for p in t.parameters)
        )
        for t in tunings
        if t.parameters
    ]


def lock_timeout_statement(*, milliseconds: int = LOCK_TIMEOUT_MS) -> sql.Composed:
    """``SET LOCAL lock_timeout``: bound the wait for the tables' locks."""
    if isinstance(milliseconds, bool) or not isinstance(milliseconds, int) or milliseconds < 1:
        raise ConfigurationError(f"lock timeout must be a positive number of ms, "
                                 f"got {milliseconds!r}")
    return sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{milliseconds}ms"))


def script(
    settings: DBSettings, *, reset: bool = False, tunings: Sequence[TableTuning] = TUNINGS
) -> str:
    """The statements as an offline script: a header, then each with the reason as a comment."""
    action = "reset" if reset else "set"
    lines = [
        f"-- pgqueue_sync {__version__}: {action} the queue's autovacuum parameters -- "
        f"prefix={settings.prefix!r} schema={settings.db_schema!r}",
        "-- one transaction; its SHARE UPDATE EXCLUSIVE locks do not block running workers",
        "BEGIN;",
    ]
    statements = reset_statements if reset else set_statements
    chosen = [t for t in tunings if t.parameters]
    for tuning, statement in zip(chosen, statements(settings, tunings=chosen), strict=True):
        lines += ["", f"-- {table_name(settings, tuning.field)}: {tuning.summary}",
                  f"{statement.as_string()};"]
    lines += ["", "COMMIT;"]
    return "\n".join(lines) + "\n"


def vacuum_statement(settings: DBSettings, fields: Sequence[str]) -> sql.Composed:
    """``VACUUM (ANALYZE)`` of the tables in ``fields``: the by-hand alternative to autovacuum."""
    if not fields:
        raise ConfigurationError("vacuum which tables? give at least one")
    return sql.SQL("VACUUM (ANALYZE) {}").format(
        sql.SQL(", ").join(settings.ident(field) for field in fields)
    )


def table_names(settings: DBSettings, *, fields: Sequence[str] = TABLE_FIELDS) -> list[str]:
    """The quoted, qualified names of ``fields``, as ``to_regclass`` takes them (bound
    as :data:`TABLE_FIGURES`' ``names`` parameter)."""
    return [settings.ident(field).as_string() for field in fields]


#: The server settings that decide whether autovacuum runs at all.
SERVER_SETTINGS = sql.SQL(
    "SELECT current_setting('autovacuum') AS autovacuum, "
    "current_setting('track_counts') AS track_counts"
)

#: Per table of ``%(names)s`` (quoted names, see :func:`table_names`), in order: whether
#: it exists, its storage parameters, ``pg_stat_user_tables``' row counts and vacuum
#: times (ages on the server's clock), its heap and index sizes, and ``vacuum_at``:
#: the dead rows at which autovacuum vacuums it (threshold + scale factor x reltuples,
#: from its own parameters or else the server's).
TABLE_FIGURES = sql.SQL("""
SELECT t.ord, c.oid IS NOT NULL AS found, c.reloptions,
       s.n_live_tup AS live, s.n_dead_tup AS dead,
       s.n_mod_since_analyze AS modified_since_analyze,
       s.n_ins_since_vacuum AS inserted_since_vacuum,
       s.last_autovacuum, EXTRACT(EPOCH FROM now() - s.last_autovacuum)::float8
           AS seconds_since_autovacuum,
       s.last_vacuum, EXTRACT(EPOCH FROM now() - s.last_vacuum)::float8 AS seconds_since_vacuum,
       s.last_autoanalyze, s.last_analyze, s.autovacuum_count, s.vacuum_count,
       pg_relation_size(c.oid) AS table_bytes, pg_indexes_size(c.oid) AS index_bytes,
       floor(COALESCE(o.threshold, current_setting('autovacuum_vacuum_threshold')::float8)
             + COALESCE(o.scale_factor,
                        current_setting('autovacuum_vacuum_scale_factor')::float8)
               * GREATEST(c.reltuples, 0))::bigint AS vacuum_at,
       COALESCE(o.enabled, TRUE) AS autovacuum_enabled
FROM unnest(%(names)s::text[]) WITH ORDINALITY AS t(name, ord)
LEFT JOIN pg_class c ON c.oid = to_regclass(t.name)
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
LEFT JOIN LATERAL (
    SELECT max(option_value) FILTER (WHERE option_name = 'autovacuum_vacuum_threshold')::float8
               AS threshold,
           max(option_value) FILTER (WHERE option_name = 'autovacuum_vacuum_scale_factor')::float8
               AS scale_factor,
           max(option_value) FILTER (WHERE option_name = 'autovacuum_enabled')::boolean
               AS enabled
    FROM pg_options_to_table(c.reloptions)
) o ON TRUE
ORDER BY t.ord
""")

#: The owners of the tables in ``%(names)s`` (for the message when ALTER TABLE is refused).
TABLE_OWNERS = sql.SQL("""
SELECT DISTINCT pg_get_userbyid(c.relowner) AS owner
FROM unnest(%(names)s::text[]) AS t(name)
JOIN pg_class c ON c.oid = to_regclass(t.name)
ORDER BY 1
""")
