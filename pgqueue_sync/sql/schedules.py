"""Schedules: registering cron entrypoints, claiming due runs, and their upkeep."""

from __future__ import annotations

import functools

from psycopg import sql

from .statement_set import StatementSet


class ScheduleStatements(StatementSet):
    """Statements on the schedules table."""

    @functools.cached_property
    def insert_schedule(self) -> sql.SQL:
        """Register (entrypoint, expression) pairs; existing pairs are left alone."""
        return self._sql("""
INSERT INTO {schedules} (expression, entrypoint, next_run, status)
SELECT w.expression, w.entrypoint, date_trunc('seconds', NOW() + w.delay), 'queued'
FROM unnest(%(entrypoints)s::text[], %(expressions)s::text[], %(delays)s::interval[])
    AS w(entrypoint, expression, delay)
ON CONFLICT (expression, entrypoint) DO NOTHING
""")

    @functools.cached_property
    def fetch_schedule(self) -> sql.SQL:
        """Claim due (or stale-picked, 30 s) schedules among the given pairs."""
        return self._sql("""
WITH wanted AS (
    SELECT * FROM unnest(%(entrypoints)s::text[], %(expressions)s::text[], %(delays)s::interval[])
        AS w(entrypoint, expression, delay)
),
due AS (
    SELECT s.id, w.delay
    FROM {schedules} s
    JOIN wanted w ON w.entrypoint = s.entrypoint AND w.expression = s.expression
    WHERE (s.status = 'queued' AND s.next_run <= NOW())
       OR (s.status = 'picked' AND NOW() - s.heartbeat > interval '30 seconds')
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE {schedules} s
SET status = 'picked', updated = NOW(), heartbeat = NOW(),
    next_run = date_trunc('seconds', NOW() + due.delay)
FROM due
WHERE s.id = due.id
RETURNING s.id, s.expression, s.heartbeat, s.created, s.updated, s.next_run, s.last_run,
          s.status::text AS status, s.entrypoint
""")

    @functools.cached_property
    def set_schedule_queued(self) -> sql.SQL:
        """Release schedules after a run, stamping ``last_run``."""
        return self._sql(
            "UPDATE {schedules} SET status = 'queued', last_run = NOW(), updated = NOW() "
            "WHERE id = ANY(%(ids)s::bigint[])"
        )

    @functools.cached_property
    def update_schedule_heartbeat(self) -> sql.SQL:
        """Keep running schedules from looking crashed."""
        return self._sql(
            "UPDATE {schedules} SET heartbeat = NOW(), updated = NOW() "
            "WHERE id = ANY(%(ids)s::bigint[])"
        )

    @functools.cached_property
    def peek_schedule(self) -> sql.SQL:
        """Every schedule row, by id."""
        return self._sql(
            "SELECT id, expression, heartbeat, created, updated, next_run, last_run, "
            "status::text AS status, entrypoint FROM {schedules} ORDER BY id"
        )

    @functools.cached_property
    def delete_schedule(self) -> sql.SQL:
        """Delete schedules by id or by entrypoint."""
        return self._sql(
            "DELETE FROM {schedules} WHERE id = ANY(%(ids)s::bigint[]) "
            "OR entrypoint = ANY(%(entrypoints)s::text[])"
        )
