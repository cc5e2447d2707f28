"""Read-only questions about the queue: sizes, the log, held jobs, what an idle worker waits for.

Nothing here writes; each statement is one round trip.
"""

from __future__ import annotations

import functools

from psycopg import sql

from .statement_set import JOB_COLUMNS, StatementSet


class InspectionStatements(StatementSet):
    """Statements that read the queue and its log."""

    @functools.cached_property
    def poll_state(self) -> sql.SQL:
        """One probe for the idle wait: is work eligible now, when is the next deferred
        job, is anything queued, and when does the next picked job go stale (its
        heartbeat older than its entrypoint's stale timeout; ``%(stale_after)s``
        per entrypoint, ``NULL`` for ``%(heartbeat_timeout)s``)."""
        return self._sql("""
WITH registered AS (
    SELECT r.entrypoint,
           COALESCE(r.stale_after, %(heartbeat_timeout)s::interval) AS stale_after
    FROM unnest(%(entrypoints)s::text[], %(stale_after)s::interval[]) AS r(entrypoint, stale_after)
)
SELECT
    EXISTS (
        SELECT 1 FROM {queue} WHERE status = 'queued'
        AND entrypoint = ANY(%(entrypoints)s::text[]) AND execute_after <= NOW()
    ) AS eligible,
    (
        SELECT min(execute_after) FROM {queue} WHERE status = 'queued'
        AND entrypoint = ANY(%(entrypoints)s::text[]) AND execute_after > NOW()
    ) - NOW() AS eta,
    EXISTS (
        SELECT 1 FROM {queue} WHERE status = 'queued'
        AND entrypoint = ANY(%(entrypoints)s::text[])
    ) AS queued,
    (
        SELECT min(q.heartbeat + r.stale_after) FROM {queue} q
        JOIN registered r ON r.entrypoint = q.entrypoint
        WHERE q.status = 'picked'
    ) - NOW() AS stale_eta
""")

    @functools.cached_property
    def queue_size(self) -> sql.SQL:
        """Row counts grouped by entrypoint, priority and status."""
        return self._sql("""
SELECT count(*) AS count, entrypoint, priority, status::text AS status
FROM {queue}
GROUP BY entrypoint, priority, status
ORDER BY count, entrypoint, priority, status
""")

    def list_failed_jobs(self, order: str) -> sql.SQL:
        """Held jobs, newest (``DESC``) or oldest (``ASC``) first."""
        direction = sql.SQL("DESC" if order == "DESC" else "ASC")
        return self._sql(
            "SELECT " + JOB_COLUMNS + ", dedupe_key FROM {queue} WHERE status = 'failed' "
            "ORDER BY updated {direction}, id {direction} LIMIT %(limit)s",
            direction=direction,
        )

    @functools.cached_property
    def queue_log(self) -> sql.SQL:
        """Every log row, oldest first."""
        return self._sql(
            "SELECT created, job_id, status::text AS status, priority, entrypoint, traceback, "
            "aggregated FROM {log} ORDER BY id"
        )

    @functools.cached_property
    def job_status(self) -> sql.SQL:
        """The latest logged status of each job id."""
        return self._sql("""
SELECT DISTINCT ON (job_id) job_id, status::text AS status
FROM {log}
WHERE job_id = ANY(%(ids)s::bigint[])
ORDER BY job_id, created DESC, id DESC
""")

    @functools.cached_property
    def queued_work(self) -> sql.SQL:
        """How many jobs of these entrypoints are queued, deferred ones included."""
        return self._sql(
            "SELECT count(*) AS count FROM {queue} "
            "WHERE status = 'queued' AND entrypoint = ANY(%(entrypoints)s::text[])"
        )

    @functools.cached_property
    def eligible_queued_work(self) -> sql.SQL:
        """How many queued jobs of these entrypoints could run now (``<=``, like PgQueuer)."""
        return self._sql(
            "SELECT count(*) AS count FROM {queue} WHERE status = 'queued' "
            "AND entrypoint = ANY(%(entrypoints)s::text[]) AND execute_after <= NOW()"
        )

    @functools.cached_property
    def next_deferred_eta(self) -> sql.SQL:
        """Time until the soonest deferred job of these entrypoints becomes eligible."""
        return self._sql(
            "SELECT min(execute_after) - NOW() AS eta FROM {queue} WHERE status = 'queued' "
            "AND entrypoint = ANY(%(entrypoints)s::text[]) AND execute_after > NOW()"
        )

    @functools.cached_property
    def last_errors(self) -> sql.SQL:
        """For each of ``%(ids)s``: the traceback record of its newest log row that has
        one, written since the job was created (ids may repeat after a reinstall)."""
        return self._sql("""
SELECT DISTINCT ON (l.job_id) l.job_id, l.created, l.status::text AS status, l.traceback
FROM {log} l
JOIN {queue} q ON q.id = l.job_id
WHERE l.job_id = ANY(%(ids)s::bigint[])
  AND l.created >= q.created
  AND jsonb_typeof(l.traceback) = 'object'
ORDER BY l.job_id, l.created DESC, l.id DESC
""")
