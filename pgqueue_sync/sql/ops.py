"""Read-mostly operator statements (stale jobs, workers, backlog, log, pruning), composed once.

Names reach the SQL only as :class:`psycopg.sql.Identifier` (through
:meth:`DBSettings.ident`); values are always ``%(name)s`` parameters. Ages are
computed by the server (``NOW() - ...``) so a client clock never skews them.
"""

from __future__ import annotations

import functools

from psycopg import sql

from .statements import StatementSet

#: The tables ``prune`` may delete from. The queue and schedules tables are never among them.
PRUNABLE_TABLES = ("log", "stats")


class OpsStatements(StatementSet):
    """Composed operator statements for one set of object names; immutable and thread-safe."""

    @functools.cached_property
    def stale_jobs(self) -> sql.SQL:
        """Picked jobs whose heartbeat is older than ``%(threshold)s``, stalest first."""
        return self._sql("""
SELECT id, priority, queue_manager_id, created, updated, heartbeat, execute_after,
       status::text AS status, entrypoint, attempts,
       EXTRACT(EPOCH FROM NOW() - heartbeat)::float8 AS seconds_since_heartbeat
FROM {queue}
WHERE status = 'picked' AND heartbeat < NOW() - %(threshold)s::interval
ORDER BY heartbeat ASC, id ASC
LIMIT %(limit)s
""")

    @functools.cached_property
    def active_workers(self) -> sql.SQL:
        """One row per ``queue_manager_id`` holding picked jobs, busiest first."""
        return self._sql("""
SELECT queue_manager_id, count(*) AS active_jobs,
       array_agg(DISTINCT entrypoint ORDER BY entrypoint) AS entrypoints,
       min(heartbeat) AS oldest_heartbeat, max(heartbeat) AS newest_heartbeat,
       EXTRACT(EPOCH FROM NOW() - min(heartbeat))::float8 AS seconds_since_oldest_heartbeat,
       EXTRACT(EPOCH FROM NOW() - max(heartbeat))::float8 AS seconds_since_newest_heartbeat
FROM {queue}
WHERE status = 'picked' AND queue_manager_id IS NOT NULL
GROUP BY queue_manager_id
ORDER BY count(*) DESC, queue_manager_id
LIMIT %(limit)s
""")

    @functools.cached_property
    def backlog(self) -> sql.SQL:
        """Per entrypoint: ready, deferred, picked and held counts, and the oldest ready job."""
        return self._sql("""
SELECT entrypoint,
       count(*) FILTER (WHERE status = 'queued') AS queued_count,
       count(*) FILTER (WHERE status = 'queued' AND execute_after <= NOW()) AS ready,
       count(*) FILTER (WHERE status = 'queued' AND execute_after > NOW()) AS deferred,
       count(*) FILTER (WHERE status = 'picked') AS picked,
       count(*) FILTER (WHERE status = 'failed') AS held,
       min(created) FILTER (WHERE status = 'queued' AND execute_after <= NOW())
           AS oldest_created,
       EXTRACT(EPOCH FROM NOW() - min(created) FILTER (
           WHERE status = 'queued' AND execute_after <= NOW()))::float8 AS oldest_age_seconds
FROM {queue}
GROUP BY entrypoint
ORDER BY entrypoint
LIMIT %(limit)s
""")

    @functools.cached_property
    def throughput(self) -> sql.SQL:
        """Transitions per entrypoint logged within the last ``%(window)s``."""
        return self._sql("""
SELECT entrypoint,
       count(*) FILTER (WHERE status = 'queued') AS enqueued,
       count(*) FILTER (WHERE status = 'successful') AS successful,
       count(*) FILTER (WHERE status IN ('exception', 'failed')) AS errors,
       count(*) FILTER (WHERE status IN ('canceled', 'deleted')) AS canceled
FROM {log}
WHERE created > NOW() - %(window)s::interval
GROUP BY entrypoint
ORDER BY count(*) DESC, entrypoint
LIMIT %(limit)s
""")

    @functools.cached_property
    def recent_log(self) -> sql.SQL:
        """Log rows, newest first, optionally filtered (a ``NULL`` filter matches everything)."""
        return self._sql("""
SELECT id, created, job_id, status::text AS status, priority, entrypoint, traceback, aggregated
FROM {log}
WHERE (%(entrypoint)s::text IS NULL OR entrypoint = %(entrypoint)s::text)
  AND (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s::text[]::{status}[]))
  AND (%(job_id)s::bigint IS NULL OR job_id = %(job_id)s::bigint)
ORDER BY created DESC, id DESC
LIMIT %(limit)s
""")

    @functools.cached_property
    def server_now(self) -> sql.SQL:
        """The server's clock, and the cutoff ``%(age)s`` before it."""
        return self._sql("SELECT NOW() AS now, NOW() - %(age)s::interval AS cutoff")

    @functools.cached_property
    def delete_schedules(self) -> sql.SQL:
        """Delete schedules by id or entrypoint, returning what was deleted."""
        return self._sql("""
DELETE FROM {schedules}
WHERE id = ANY(%(ids)s::bigint[]) OR entrypoint = ANY(%(entrypoints)s::text[])
RETURNING id, expression, heartbeat, created, updated, next_run, last_run,
          status::text AS status, entrypoint
""")

    @functools.cache  # noqa: B019 - one entry per prunable table, for life
    def prune_plan(self, table: str) -> sql.SQL:
        """How many rows of ``log`` or ``stats`` are older than ``%(cutoff)s``, and the last id."""
        return self._sql(
            "SELECT count(*) AS count, max(id) AS last_id FROM {table} "
            "WHERE created < %(cutoff)s::timestamptz",
            table=self._prunable(table),
        )

    @functools.cache  # noqa: B019 - one entry per prunable table, for life
    def prune_batch(self, table: str) -> sql.SQL:
        """Delete the next ``%(batch)s`` rows older than ``%(cutoff)s`` with ids in
        ``(%(after)s, %(last_id)s]``; returns the count and the highest id deleted.

        Walking the primary key forward never revisits dead rows of earlier
        batches, and ``SKIP LOCKED`` means a batch never waits on another
        session's row locks (such as a concurrent aggregation).
        """
        return self._sql("""
WITH doomed AS (
    SELECT id FROM {table}
    WHERE id > %(after)s AND id <= %(last_id)s AND created < %(cutoff)s::timestamptz
    ORDER BY id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
),
gone AS (
    DELETE FROM {table} t USING doomed d WHERE t.id = d.id RETURNING t.id
)
SELECT count(*) AS deleted, max(id) AS last FROM gone
""", table=self._prunable(table))

    def _prunable(self, table: str) -> sql.Composable:
        if table not in PRUNABLE_TABLES:
            raise ValueError(f"prune works on {PRUNABLE_TABLES}, not {table!r}")
        composable: sql.Composable = self._names[table]
        return composable
