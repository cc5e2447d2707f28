"""Every runtime statement of the queue, composed once per :class:`DBSettings`.

Names reach the SQL only as :class:`psycopg.sql.Identifier`; values are always
``%(name)s`` parameters. Each statement is one round trip and atomic on its
own, so it behaves the same under autocommit and inside a caller's transaction.
"""

from __future__ import annotations

import functools
from typing import Any

from psycopg import sql

from ..drivers.base import ExpectingColumns
from ..settings import DBSettings
from .names import check_lengths
from .results import store_results_cte

#: Columns returned for a job row, in :class:`~pgqueue_sync.models.Job` order.
_JOB_COLUMNS = (
    "id, priority, created, updated, heartbeat, execute_after, status, entrypoint, "
    "payload, attempts, queue_manager_id, slot, headers"
)

_JOB_COLUMN_NAMES = tuple(name.strip() for name in _JOB_COLUMNS.split(","))

# The enqueue result, by "raise" mode: there every row is inserted or the
# statement fails, so the ids drawn up front are the answer (data-modifying
# CTEs run whether or not they are referenced); otherwise map skipped and
# priority-updated rows to what the table holds.
_ENQUEUE_RESULT = {
    True: "SELECT id FROM input ORDER BY ord\n",
    False: """SELECT COALESCE(w.id, u.id) AS id
FROM input i
LEFT JOIN written w ON w.id = i.id
LEFT JOIN written u ON NOT u.fresh AND u.dedupe_key = i.dedupe_key
ORDER BY i.ord
""",
}


class StatementSet:
    """Statements rendered for one set of object names; immutable and thread-safe."""

    def __init__(self, settings: DBSettings) -> None:
        check_lengths(settings)  # before any statement is rendered, let alone sent
        self.settings = settings
        self._names: dict[str, Any] = {
            "queue": settings.ident("queue_table"),
            "log": settings.ident("queue_table_log"),
            "stats": settings.ident("statistics_table"),
            "schedules": settings.ident("schedules_table"),
            "status": settings.ident("queue_status_type"),
            "results": settings.ident("results_table"),
        }

    def _sql(self, template: str, **extra: sql.Composable) -> sql.SQL:
        # Rendered once: psycopg would otherwise re-render a Composed on every execute.
        composed = sql.SQL(template).format(**self._names, **extra)
        return sql.SQL(composed.as_string())


class Statements(StatementSet):
    """The queue's own statements (claim, enqueue, outcomes, schedules, ...)."""

    @property
    def queue_table_text(self) -> str:
        """The quoted, qualified queue table name, bound for ``pg_get_serial_sequence``.

        The id sequence is looked up rather than named by convention: PostgreSQL
        shortens a long table's sequence name, and an operator may rename it.
        """
        return self.settings.ident("queue_table").as_string()

    # -- enqueue ---------------------------------------------------------------------------

    @functools.cache  # noqa: B019 - one cache entry per mode, for life
    def enqueue(self, on_conflict: str) -> sql.SQL:
        """Insert a batch (parallel arrays) and log ``queued`` for rows really inserted.

        Ids are drawn up front so the result maps every input position to its
        job id (``NULL`` where a row was skipped as a duplicate).
        """
        conflict = {
            "raise": "",
            "skip": "ON CONFLICT (dedupe_key) WHERE {dedupe_predicate} DO NOTHING",
            "update_priority": (
                "ON CONFLICT (dedupe_key) WHERE {dedupe_predicate} "
                "DO UPDATE SET priority = GREATEST(q.priority, EXCLUDED.priority)"
            ),
        }[on_conflict]
        predicate = sql.SQL("dedupe_key IS NOT NULL AND status IN ('queued', 'picked')")
        template = """
WITH input AS MATERIALIZED (
    SELECT nextval((SELECT pg_get_serial_sequence(%(table)s, 'id'))::regclass) AS id, t.*
    FROM unnest(
        %(priority)s::integer[], %(entrypoint)s::text[], %(delay)s::interval[],
        %(at)s::timestamptz[], %(dedupe_key)s::text[], %(payload)s::bytea[],
        %(headers)s::jsonb[]
    ) WITH ORDINALITY AS t(priority, entrypoint, delay, at, dedupe_key, payload, headers, ord)
),
written AS (
    INSERT INTO {queue} AS q
        (id, priority, status, entrypoint, execute_after, dedupe_key, payload, headers)
    SELECT id, priority, 'queued', entrypoint, COALESCE(at, NOW() + delay),
           dedupe_key, payload, headers
    FROM input
    """ + conflict + """
    RETURNING q.id, q.entrypoint, q.priority, q.dedupe_key, (q.xmax::text = '0') AS fresh
),
logged AS (
    INSERT INTO {log} (job_id, status, entrypoint, priority)
    SELECT id, 'queued', entrypoint, priority FROM written WHERE fresh
)
""" + _ENQUEUE_RESULT[on_conflict == "raise"]
        return self._sql(template, dedupe_predicate=predicate)

    # -- dequeue ---------------------------------------------------------------------------

    @functools.cache  # noqa: B019 - a few dozen shapes at most
    def dequeue(
        self,
        *,
        capacity: bool,
        budget: bool,
        finish: tuple[str, ...] = (),
        results: bool = False,
        stale: bool = True,
    ) -> sql.SQL:
        """Claim up to ``%(batch)s`` jobs in one statement.

        ``capacity``: some entrypoint has a fleet-wide ``concurrency_limit``;
        ``budget``: the worker has a ``max_concurrent_tasks`` budget;
        ``finish``: first record this worker's finished jobs and retries (the
        guarded ``log_jobs`` parameters, ``finish`` naming the steps from
        :func:`finish_steps`) in the same statement. The claim's
        snapshot still counts those jobs as running, so piggybacking can only
        under-claim, never overshoot a limit.
        ``results`` (with ``finish``): also store results (the ``result_*``
        parameters) in the opt-in results table.
        ``stale``: also re-pick picked jobs whose heartbeat is stale. That scan
        walks the picked-heartbeat index, where every job finished since the
        last VACUUM leaves a dead entry; callers run it every few seconds, not
        on every claim.
        """
        parts = (
            [_finish(finish, guarded=True, results=results, final=False)] if finish else []
        )
        parts.append(_REGISTERED)
        if capacity:
            parts.append(_CAPACITY)
        if budget:
            parts.append(_BUDGET)
        parts.append(_FRESH_OPEN)
        branches = [_OPEN_BRANCH]
        if capacity:
            branches.append(_LIMITED_BRANCH)
        if stale:
            parts.append(_STALE)
            branches.append(_STALE_BRANCH)
        limit = "(SELECT headroom FROM my_load)" if budget else "%(batch)s"
        parts.append(_ELIGIBLE.format(branches=" UNION ALL ".join(branches), limit=limit))
        parts.append(_SEATED_CLAIM if capacity else _PLAIN_CLAIM)
        parts.append(_CLAIMED)
        # The reply is checked for the job columns: see ExpectingColumns.
        return ExpectingColumns(self._sql("WITH " + ",\n".join(parts) + _CLAIM_RESULT)
                                .as_string(), _JOB_COLUMN_NAMES)

    # -- completion, retry, hold -----------------------------------------------------------

    @functools.cache  # noqa: B019 - sixteen variants at most
    def log_jobs(
        self, steps: tuple[str, ...], *, guarded: bool, results: bool = False
    ) -> sql.SQL:
        """Finish jobs: delete, hold as ``failed`` or retry (``queued`` with a delay), and
        log only rows that changed; ``steps`` from :func:`finish_steps`.
        ``guarded``: only rows still picked by ``%(queue_manager_id)s``.
        ``results``: also store results (the ``result_*`` parameters)."""
        return self._sql(
            "WITH " + _finish(steps, guarded=guarded, results=results, final=True)
        )

    @functools.cached_property
    def requeue_jobs(self) -> sql.SQL:
        """Move held (``failed``) jobs back to ``queued`` with ``attempts`` reset."""
        return self._sql("""
WITH requeued AS (
    UPDATE {queue}
    SET status = 'queued', execute_after = NOW(), updated = NOW(),
        attempts = 0, queue_manager_id = NULL
    WHERE id = ANY(%(ids)s::bigint[]) AND status = 'failed'
    RETURNING id, entrypoint, priority, """ + _WAKE + """ AS woke
),
logged AS (
    INSERT INTO {log} (job_id, status, entrypoint, priority)
    SELECT id, 'queued', entrypoint, priority FROM requeued
)
SELECT id FROM requeued ORDER BY id
""")

    # -- bulk actions (one batch per statement) --------------------------------------------
    #
    # A bulk action walks the primary key forward from ``%(after)s`` up to
    # ``%(last_id)s`` (the highest matching id when it was planned), at most
    # ``%(batch)s`` rows per statement. The walk never rescans rows an earlier
    # batch changed or deleted, and jobs enqueued after the plan are left alone.
    # Rows another session holds locked (a claim in progress, a heartbeat) are
    # skipped, never waited for. Each batch statement returns every row it
    # locked, with ``done`` telling whether it acted on it, so the caller can
    # move its cursor past the rows it chose to leave.

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
    RETURNING q.id, q.entrypoint, q.priority, """ + _WAKE + """ AS woke
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

    @functools.cached_property
    def release_jobs(self) -> sql.SQL:
        """Hand this worker's unfinished jobs back to the queue at once, logging why."""
        return self._sql("""
WITH given AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(tracebacks)s::jsonb[]) AS g(id, traceback)
),
released AS (
    UPDATE {queue} q
    SET status = 'queued', execute_after = NOW(), updated = NOW(), queue_manager_id = NULL
    FROM given g
    WHERE q.id = g.id AND q.status = 'picked' AND q.queue_manager_id = %(queue_manager_id)s
    RETURNING q.id, q.entrypoint, q.priority, g.traceback, """ + _WAKE + """ AS woke
)
INSERT INTO {log} (job_id, status, entrypoint, priority, traceback)
SELECT id, 'queued', entrypoint, priority, traceback FROM released
RETURNING job_id
""")

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

    @functools.cache  # noqa: B019 - two variants
    def update_heartbeat(self, *, guarded: bool) -> sql.SQL:
        """Touch the heartbeat of running jobs; ``guarded``: only rows still picked by
        ``%(queue_manager_id)s`` (PgQueuer's has no guard)."""
        if not guarded:
            return self._sql(
                "UPDATE {queue} SET heartbeat = NOW() WHERE id = ANY(%(ids)s::bigint[])"
            )
        # Guard columns come from a materialised step, as in _GUARD (same reason).
        return self._sql("""
WITH beating AS MATERIALIZED (
    SELECT b.id, %(queue_manager_id)s::uuid AS owner, 'picked'::{status} AS holding
    FROM unnest(%(ids)s::bigint[]) AS b(id)
)
UPDATE {queue} q SET heartbeat = NOW()
FROM beating b
WHERE q.id = b.id AND q.status IS NOT DISTINCT FROM b.holding
  AND q.queue_manager_id IS NOT DISTINCT FROM b.owner
""")

    @functools.cached_property
    def notify(self) -> sql.SQL:
        """Send one payload on a channel (delivered at commit)."""
        return self._sql("SELECT pg_notify(%(channel)s, %(payload)s)")

    # -- inspection ------------------------------------------------------------------------

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
            "SELECT " + _JOB_COLUMNS + ", dedupe_key FROM {queue} WHERE status = 'failed' "
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

    # -- cleanup ---------------------------------------------------------------------------

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

    # -- statistics ------------------------------------------------------------------------

    @functools.cache  # noqa: B019 - two variants
    def aggregate_logs(self, *, locked: bool) -> sql.SQL:
        """Fold unaggregated log rows into per-second statistics buckets.

        ``locked``: only proceed when ``pg_try_advisory_xact_lock`` on PgQueuer's
        key succeeds, so concurrent workers (sync or async) never double count;
        and fold at most ``%(chunk)s`` rows, returning how many (``flipped``), so
        a backlog of log rows is folded in short transactions: one long one
        would keep VACUUM from removing the queue's dead rows meanwhile.
        """
        gate = "pg_try_advisory_xact_lock(hashtext(%(lock_key)s))" if locked else "TRUE"
        chosen = ("l.id IN (SELECT n.id FROM {log} n WHERE NOT n.aggregated LIMIT %(chunk)s)"
                  if locked else "TRUE")
        return self._sql("""
WITH gate AS (SELECT """ + gate + """ AS go),
flipped AS (
    UPDATE {log} l SET aggregated = TRUE
    FROM gate
    WHERE gate.go AND NOT l.aggregated AND """ + chosen + """
    RETURNING l.entrypoint, l.priority, l.status, date_trunc('sec', l.created) AS created
),
buckets AS (
    SELECT count(*) AS count, created, entrypoint, priority, status
    FROM flipped GROUP BY created, entrypoint, priority, status
),
stored AS (
    INSERT INTO {stats} AS s (count, created, entrypoint, priority, status)
    SELECT count, created, entrypoint, priority, status FROM buckets
    ON CONFLICT (priority, date_trunc('sec'::text, timezone('UTC'::text, created)), status,
                 entrypoint)
    DO UPDATE SET count = s.count + EXCLUDED.count
)
SELECT count(*) AS flipped FROM flipped
""")

    @functools.cached_property
    def log_statistics(self) -> sql.SQL:
        """The newest statistics buckets, optionally only those newer than ``%(last)s``."""
        return self._sql("""
SELECT count, created, entrypoint, priority, status::text AS status
FROM {stats}
WHERE %(last)s::interval IS NULL OR created > NOW() - %(last)s::interval
ORDER BY id DESC
LIMIT %(limit)s
""")

    # -- schedules -------------------------------------------------------------------------

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


# Recording outcomes: delete finished rows, hold 'failed' ones, put retries
# ('queued' with a delay) back, and log only rows the statement really changed,
# so a job cancelled meanwhile is not logged twice. The worker's variant is
# guarded: it only touches rows still picked by that worker, so re-sending it
# after a lost reply changes nothing. Held and retried rows wake idle
# listeners (UPDATEs fire no trigger): pg_notify in RETURNING runs once per
# changed row, and PostgreSQL delivers identical payloads of one transaction once.
_DONE = """done AS MATERIALIZED (
    SELECT DISTINCT ON (d.id) d.id, d.status, d.traceback, d.delay, d.claimed,
           %(queue_manager_id)s::uuid AS owner, 'picked'::{status} AS holding
    FROM unnest(%(ids)s::bigint[], %(statuses)s::text[]::{status}[], %(tracebacks)s::jsonb[],
                %(delays)s::interval[], %(claimed)s::timestamptz[])
        AS d(id, status, traceback, delay, claimed)
)"""

#: One step per kind of outcome: finished rows go, held ones stay ``failed``,
#: retried ones go back to ``queued`` after their delay with ``attempts + 1``.
_STEPS = {
    "removed": """removed AS (
    DELETE FROM {queue} q USING done d
    WHERE q.id = d.id AND d.status NOT IN ('failed', 'queued') GUARD
    RETURNING q.id, q.entrypoint, q.priority, d.status, d.traceback
)""",
    "held": """held AS (
    UPDATE {queue} q SET status = 'failed', updated = NOW(), queue_manager_id = NULL
    FROM done d
    WHERE q.id = d.id AND d.status = 'failed' GUARD
    RETURNING q.id, q.entrypoint, q.priority, d.status, d.traceback, WAKE AS woke
)""",
    "retried": """retried AS (
    UPDATE {queue} q
    SET status = 'queued', execute_after = NOW() + COALESCE(d.delay, interval '0'),
        attempts = q.attempts + 1, updated = NOW(), queue_manager_id = NULL
    FROM done d
    WHERE q.id = d.id AND d.status = 'queued' GUARD
    RETURNING q.id, q.entrypoint, q.priority, d.status, d.traceback, WAKE AS woke
)""",
}

#: Only rows still picked by the writing worker, in the claim the outcome belongs to
#: (``updated`` is set by each claim and by nothing else while a job is picked): the
#: idempotence guard. Without it, a retry re-sent after a lost reply would retry
#: the job again if the same worker had meanwhile claimed it anew.
#: Written so that the id is the only thing the planner can join or scan by: the
#: guard compares with columns of the materialised ``done`` rows (not constants,
#: which it would push into a scan) using IS NOT DISTINCT FROM (which no index,
#: hash or merge join can use). The rows are then reached through the primary
#: key. Otherwise it scans the indexes on ``status`` or ``queue_manager_id``,
#: which keep one dead entry per finished job until VACUUM, or the whole table:
#: either cost grows with every job the worker runs.
_GUARD = (
    "AND q.status IS NOT DISTINCT FROM d.holding "
    "AND q.queue_manager_id IS NOT DISTINCT FROM d.owner "
    "AND (d.claimed IS NULL OR q.updated IS NOT DISTINCT FROM d.claimed)"
)

#: A ``table_changed_event`` shaped as the trigger builds it, operation ``update``.
_WAKE = (
    "pg_notify(%(channel)s::text, json_build_object('channel', %(channel)s::text, "
    "'operation', 'update', 'sent_at', NOW(), 'table', %(table)s::text, "
    "'type', 'table_changed_event')::text)"
)


def _bulk_scope(*, every: bool) -> str:
    """The entrypoint condition of a bulk statement: none for ``every`` entrypoint."""
    return "" if every else "    AND entrypoint = ANY(%(entrypoints)s::text[])\n"


def finish_steps(*, holds: bool, retries: bool) -> tuple[str, ...]:
    """The outcome steps a batch needs (a statement carries only those: each
    unused UPDATE step would still cost its planning and a scan of ``done``)."""
    return ("removed", *(["held"] if holds else []), *(["retried"] if retries else []))


def _finish(steps: tuple[str, ...], *, guarded: bool, results: bool, final: bool) -> str:
    """The outcome CTEs for ``steps``, then the log insert: a CTE (``finished_log``)
    when the statement goes on (a claim), else the final statement."""
    ctes = [_DONE, *(_STEPS[step] for step in steps)]
    text = ",\n".join(ctes).replace("GUARD", _GUARD if guarded else "").replace("WAKE", _WAKE)
    if results:
        text += ",\n" + store_results_cte([s for s in steps if s != "retried"])
    rows = "\nUNION ALL\n".join(
        f"SELECT id, status, entrypoint, priority, traceback FROM {step}" for step in steps
    )
    insert = "INSERT INTO {log} (job_id, status, entrypoint, priority, traceback)\n" + rows
    if final:
        return text + "\n" + insert + "\nRETURNING job_id\n"
    return text + ",\nfinished_log AS (\n" + insert + "\n)"


# The dequeue pipeline (PgQueuer 1.6 semantics, our own SQL). Steps are CTEs
# joined by the builder according to the gate shape.

_REGISTERED = """registered AS (
    SELECT r.entrypoint, r.lim,
           COALESCE(r.stale_after, %(heartbeat_timeout)s::interval) AS stale_after
    FROM unnest(%(entrypoints)s::text[], %(limits)s::integer[], %(stale_after)s::interval[])
        AS r(entrypoint, lim, stale_after)
)"""

# Fleet-wide in-flight counts include stale picked rows (queue_manager_id set).
# Limited candidates are windowed *before* locking: with SKIP LOCKED alone a
# worker would slide past another worker's uncommitted claim and overshoot.
_CAPACITY = """in_flight AS (
    SELECT r.entrypoint, r.lim,
           (SELECT count(*) FROM {queue} b
            WHERE b.entrypoint = r.entrypoint AND b.queue_manager_id IS NOT NULL) AS busy
    FROM registered r
    WHERE r.lim > 0
),
open_limited AS (
    SELECT entrypoint, busy, LEAST(%(batch)s, lim - busy) AS room
    FROM in_flight WHERE busy < lim
),
limited_window AS (
    SELECT w.id
    FROM open_limited o
    CROSS JOIN LATERAL (
        SELECT q.id FROM {queue} q
        WHERE q.entrypoint = o.entrypoint AND q.status = 'queued' AND q.execute_after <= NOW()
        ORDER BY q.priority DESC, q.id ASC
        LIMIT o.room
    ) w
),
fresh_limited AS (
    SELECT q.id, q.priority, q.entrypoint FROM {queue} q
    WHERE q.id IN (SELECT id FROM limited_window)
      AND q.status = 'queued' AND q.execute_after <= NOW()
    FOR UPDATE SKIP LOCKED
),
free_seats AS (
    SELECT o.entrypoint, g.seat,
           row_number() OVER (PARTITION BY o.entrypoint ORDER BY g.seat) AS k
    FROM open_limited o
    CROSS JOIN LATERAL generate_series(0, o.busy + o.room - 1) AS g(seat)
    WHERE NOT EXISTS (
        SELECT 1 FROM {queue} h
        WHERE h.entrypoint = o.entrypoint AND h.status = 'picked' AND h.slot = g.seat
    )
)"""

_BUDGET = """my_load AS (
    SELECT GREATEST(LEAST(%(batch)s, %(budget)s - count(*)), 0) AS headroom
    FROM {queue} WHERE queue_manager_id = %(queue_manager_id)s
)"""

_FRESH_OPEN = """fresh_open AS (
    SELECT c.id, c.priority, c.entrypoint
    FROM registered r
    CROSS JOIN LATERAL (
        SELECT q.id, q.priority, q.entrypoint FROM {queue} q
        WHERE q.entrypoint = r.entrypoint AND q.status = 'queued' AND q.execute_after <= NOW()
        ORDER BY q.priority DESC, q.id ASC
        LIMIT %(batch)s
        FOR UPDATE SKIP LOCKED
    ) c
    WHERE r.lim = 0
    ORDER BY c.priority DESC, c.id ASC
    LIMIT %(batch)s
)"""

# Stale re-picks ignore capacity (they inherit the seat they hold) but not the budget.
_STALE = """stale AS (
    SELECT q.id, q.priority, q.entrypoint
    FROM {queue} q JOIN registered r ON r.entrypoint = q.entrypoint
    WHERE q.status = 'picked'
      AND q.heartbeat < NOW() - r.stale_after
      AND q.execute_after <= NOW()
    ORDER BY q.priority DESC, q.id ASC
    LIMIT %(batch)s
    FOR UPDATE OF q SKIP LOCKED
)"""

_OPEN_BRANCH = "SELECT id, priority, entrypoint, 'open' AS kind FROM fresh_open"
_LIMITED_BRANCH = "SELECT id, priority, entrypoint, 'limited' AS kind FROM fresh_limited"
_STALE_BRANCH = "SELECT id, priority, entrypoint, 'stale' AS kind FROM stale"

_ELIGIBLE = """eligible AS (
    SELECT u.id, u.priority, u.entrypoint, u.kind
    FROM ({branches}) u
    ORDER BY u.priority DESC, u.id ASC
    LIMIT {limit}
)"""

# The k-th fresh claim of a limited entrypoint takes its k-th lowest free seat;
# claims left without a seat are dropped. A concurrent worker taking the same
# seat fails on the unique seat index, which the caller treats as an empty batch.
_SEATED_CLAIM = """ranked AS (
    SELECT e.id, e.entrypoint,
           row_number() OVER (PARTITION BY e.entrypoint ORDER BY e.priority DESC, e.id ASC) AS k
    FROM eligible e WHERE e.kind = 'limited'
),
seated AS (
    SELECT r.id, f.seat FROM ranked r
    JOIN free_seats f ON f.entrypoint = r.entrypoint AND f.k = r.k
),
claim AS (
    SELECT e.id, e.kind, s.seat
    FROM eligible e LEFT JOIN seated s ON s.id = e.id
    WHERE e.kind <> 'limited' OR s.seat IS NOT NULL
)"""

_PLAIN_CLAIM = """claim AS (
    SELECT e.id, e.kind, NULL::bigint AS seat FROM eligible e
)"""

_CLAIMED = """claimed AS (
    UPDATE {queue} q
    SET status = 'picked', updated = NOW(), heartbeat = NOW(),
        queue_manager_id = %(queue_manager_id)s,
        slot = CASE WHEN c.kind = 'stale' THEN q.slot ELSE c.seat END
    FROM claim c
    WHERE q.id = c.id
    RETURNING q.id, q.priority, q.created, q.updated, q.heartbeat, q.execute_after,
              q.status::text AS status, q.entrypoint, q.payload, q.attempts,
              q.queue_manager_id, q.slot, NULLIF(q.headers, 'null'::jsonb) AS headers
),
picked_log AS (
    INSERT INTO {log} (job_id, status, entrypoint, priority)
    SELECT id, 'picked', entrypoint, priority FROM claimed
)"""

_CLAIM_RESULT = """
SELECT * FROM claimed ORDER BY priority DESC, id ASC"""
