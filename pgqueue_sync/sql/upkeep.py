"""SQL of the queue table's upkeep: its planner statistics and dead rows.

Pure functions of :class:`~pgqueue_sync.settings.DBSettings`, no I/O. See
:mod:`pgqueue_sync.worker.upkeep` for when a worker runs them.
"""

from __future__ import annotations

from psycopg import sql

from ..settings import DBSettings

# One row: what the server knows of the queue table. ``reltuples`` is -1 until
# the table was first analyzed (PostgreSQL 14+; 0 before). Autovacuum counts as
# off when the server has it off or the table opts out (autovacuum_enabled).
_HEALTH = """
SELECT c.reltuples::float8 AS reltuples,
       COALESCE(s.n_live_tup, 0) AS live,
       COALESCE(s.n_dead_tup, 0) AS dead,
       COALESCE(s.n_mod_since_analyze, 0) AS modified,
       GREATEST(s.last_analyze, s.last_autoanalyze) AS analyzed,
       GREATEST(s.last_vacuum, s.last_autovacuum) AS vacuumed,
       current_setting('autovacuum')::boolean
           AND COALESCE((SELECT o.option_value::boolean
                         FROM pg_options_to_table(c.reloptions) o
                         WHERE o.option_name = 'autovacuum_enabled'), true) AS autovacuum,
       pg_has_role(c.relowner, 'USAGE') AS owner,
       NOW() AS now
FROM pg_class c
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = %(table)s::regclass
"""


def health(settings: DBSettings) -> tuple[sql.SQL, dict[str, str]]:
    """The query for :class:`~pgqueue_sync.worker.upkeep.TableHealth`, and its parameters."""
    return sql.SQL(_HEALTH), {"table": settings.ident("queue_table").as_string()}


def analyze(settings: DBSettings) -> sql.Composed:
    """Refresh the queue table's planner statistics; skipped if another session holds it."""
    return sql.SQL("ANALYZE (SKIP_LOCKED) {}").format(settings.ident("queue_table"))


def vacuum(settings: DBSettings) -> sql.Composed:
    """Remove dead rows and dead index entries (not in a transaction block)."""
    return sql.SQL("VACUUM (SKIP_LOCKED) {}").format(settings.ident("queue_table"))
