"""Operator actions on many jobs: requeue held jobs, bulk requeue, purge and cancel, clear.

A bulk action walks the primary key forward from ``%(after)s`` up to
``%(last_id)s`` (the highest matching id when it was planned), at most
``%(batch)s`` rows per statement. The walk never rescans rows an earlier
batch changed or deleted, and jobs enqueued after the plan are left alone.
Rows another session holds locked (a claim in progress, a heartbeat) are
skipped, never waited for. Each batch statement returns every row it
locked, with ``done`` telling whether it acted on it, so the caller can
move its cursor past the rows it chose to leave.
"""

from __future__ import annotations

import functools

from psycopg import sql

from .statement_set import WAKE_LISTENERS, StatementSet


class JobActionStatements(StatementSet):
    """Statements that requeue, purge, lock or delete jobs on an operator's request."""

    @functools.cached_property
    def requeue_jobs(self) -> sql.SQL:
        """Move held (``failed``) jobs back to ``queued`` with ``attempts`` reset."""
        return self._sql("""
WITH requeued AS (
    UPDATE {queue}
    SET status = 'queued', execute_after = NOW(), updated = NOW(),
        attempts = 0, queue_manager_id = NULL
    WHERE id = ANY(%(ids)s::bigint[]) AND status = 'failed'
    RETURNING id, entrypoint, priority, """ + WAKE_LISTENERS + """ AS woke
),
logged AS (
    INSERT INTO {log} (job_id, status, entrypoint, priority)
    SELECT id, 'queued', entrypoint, priority FROM requeued
)
SELECT id FROM requeued ORDER BY id
""")

    @functools.cache  # noqa: B019 - two variants
    def bulk_plan(self, *, every: bool) -> sql.SQL:
        """How many rows have one of ``%(statuses)s`` (of ``%(entrypoints)s`` unless
        ``every``) with an id up to ``%(last_id)s`` (``NULL``: any), and the highest id."""
        return self._sql("""
SELECT count(*) AS count, max(id) AS last_id
FROM {queue}
WHERE status = ANY(%(statuses)s::text[]::{status}[])
  AND (%(last_id)s::bigint IS NULL OR id <= %(last_id)s::bigint)
""" + _bulk_scope(every=every))

    @functools.cache  # noqa: B019 - two variants
    def bulk_requeue(self, *, every: bool) -> sql.SQL:
        """Move the next batch of held (``failed``) jobs back to ``queued`` with
        ``attempts`` reset, as :attr:`requeue_jobs` does, and wake the workers.

        A held job whose ``dedupe_key`` an active (queued or picked) job holds,
        or that shares its key with an earlier held job of the batch, stays held
        (``done`` false): requeueing it would break the key's unique index.
        """
        return self._sql("""
WITH locked AS (
    SELECT id, dedupe_key FROM {queue}
    WHERE status = 'failed' AND id > %(after)s AND id <= %(last_id)s
""" + _bulk_scope(every=every) + """
    ORDER BY id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
),
ranked AS (
    SELECT id, dedupe_key,
           row_number() OVER (PARTITION BY dedupe_key ORDER BY id) AS rank_in_key
    FROM locked
),
movable AS (
    SELECT r.id FROM ranked r
    WHERE r.dedupe_key IS NULL
       OR (r.rank_in_key = 1 AND NOT EXISTS (
               SELECT 1 FROM {queue} a
               WHERE a.dedupe_key = r.dedupe_key AND a.status IN ('queued', 'picked')))
),
requeued AS (
    UPDATE {queue} q
    SET status = 'queued', execute_after = NOW(), updated = NOW(),
        attempts = 0, queue_manager_id = NULL
    FROM movable m
    WHERE q.id = m.id AND q.status = 'failed'
    RETURNING q.id, q.entrypoint, q.priority, """ + WAKE_LISTENERS + """ AS woke
),
logged AS (
    INSERT INTO {log} (job_id, status, entrypoint, priority)
    SELECT id, 'queued', entrypoint, priority FROM requeued
)
SELECT l.id, r.entrypoint, r.id IS NOT NULL AS done
FROM locked l LEFT JOIN requeued r ON r.id = l.id
ORDER BY l.id
""")

    @functools.cache  # noqa: B019 - two variants
    def bulk_purge(self, *, every: bool) -> sql.SQL:
        """Delete the next batch of ``queued`` jobs, logging each as ``deleted``.

        Picked and held jobs are never touched: a row a claim turned ``picked``
        after this statement's snapshot fails the re-check and stays.
        """
        return self._sql("""
WITH locked AS (
    SELECT id FROM {queue}
    WHERE status = 'queued' AND id > %(after)s AND id <= %(last_id)s
""" + _bulk_scope(every=every) + """
    ORDER BY id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
),
purged AS (
    DELETE FROM {queue} q USING locked l
    WHERE q.id = l.id AND q.status = 'queued'
    RETURNING q.id, q.entrypoint, q.priority
),
logged AS (
    INSERT INTO {log} (job_id, status, entrypoint, priority)
    SELECT id, 'deleted', entrypoint, priority FROM purged
)
SELECT l.id, p.entrypoint, p.id IS NOT NULL AS done
FROM locked l LEFT JOIN purged p ON p.id = l.id
ORDER BY l.id
""")

    @functools.cache  # noqa: B019 - two variants
    def bulk_lock_active(self, *, every: bool) -> sql.SQL:
        """Lock the next batch of queued and picked jobs, for a cancellation in the
        same transaction (the caller cancels them by id before it commits)."""
        return self._sql("""
SELECT id, entrypoint FROM {queue}
WHERE status IN ('queued', 'picked') AND id > %(after)s AND id <= %(last_id)s
""" + _bulk_scope(every=every) + """
ORDER BY id
LIMIT %(batch)s
FOR UPDATE SKIP LOCKED
""")

    @functools.cached_property
    def clear_queue_for(self) -> sql.SQL:
        """Delete the jobs of some entrypoints, logging each as ``deleted``."""
        return self._sql("""
WITH gone AS (
    DELETE FROM {queue} WHERE entrypoint = ANY(%(entrypoints)s::text[])
    RETURNING id, entrypoint, priority
)
INSERT INTO {log} (job_id, status, entrypoint, priority)
SELECT id, 'deleted', entrypoint, priority FROM gone
""")

    def truncate(self, table: str) -> sql.SQL:
        """Empty one of ``queue``, ``log``, ``stats`` or ``schedules`` (no log rows)."""
        return self._sql("TRUNCATE {table}", table=self._names[table])

    def delete_for_entrypoints(self, table: str) -> sql.SQL:
        """Delete the rows of some entrypoints from ``log`` or ``stats``."""
        return self._sql(
            "DELETE FROM {table} WHERE entrypoint = ANY(%(entrypoints)s::text[])",
            table=self._names[table],
        )


def _bulk_scope(*, every: bool) -> str:
    """The entrypoint condition of a bulk statement: none for ``every`` entrypoint."""
    return "" if every else "    AND entrypoint = ANY(%(entrypoints)s::text[])\n"

