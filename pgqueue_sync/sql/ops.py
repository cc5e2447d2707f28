"""Read-mostly operator statements (stale jobs, workers, backlog, log, pruning), composed once.

Names reach the SQL only as :class:`psycopg.sql.Identifier` (through
:meth:`DBSettings.ident`); values are always ``%(name)s`` parameters. Ages are
computed by the server (``NOW() - ...``) so a client clock never skews them.

Worker sessions: a worker's LISTEN connection carries the ``application_name``
``pgq-sync worker <queue_manager_id> <oid>`` (at most 63 bytes), where ``<oid>``
is the OID of the queue table it works on, so ``workers`` lists only the workers
of its own queue even when several queues (prefixes, schemas) share a database.
The name is set by :data:`LABEL_WORKER_SESSION` and read back by
:attr:`OpsStatements.live_workers` through the patterns below.
"""

from __future__ import annotations

import functools

from psycopg import sql

from .statement_set import StatementSet

#: The tables ``prune`` may delete from. The queue and schedules tables are never among them.
PRUNABLE_TABLES = ("log", "stats")

#: Below every id the sequences hand out: an id walk (prune, retention) starts after it.
BEFORE_ANY_ID = -(2**63)
#: The tables the workers' pruner walks by id (results are pruned by ``finished``).
RETENTION_WALKED_TABLES = ("log", "stats")
#: What the retention lock's key starts with; the qualified log table name follows,
#: so queues under other prefixes or schemas prune independently. It differs from
#: PgQueuer's statistics key, so pruning never holds up a PgQueuer worker's aggregation.
RETENTION_LOCK_NAME = "pgqueue_sync retention"
#: Try the retention lock for the current transaction (``go``: got it).
RETENTION_GATE = "SELECT pg_try_advisory_xact_lock(hashtext(%(lock_key)s)) AS go"
# Which rows a retention step may delete, besides being old: a log row only once
# folded into statistics, and never one of a job still in the queue table (so
# job_status and completion waiting keep working however long a job stays).
_RETENTION_ELIGIBLE = {
    "log": "t.aggregated AND NOT EXISTS (SELECT 1 FROM {queue} q WHERE q.id = t.job_id)",
    "stats": "TRUE",
}


def retention_lock_key(settings_text: str) -> str:
    """The retention lock's key for the qualified log table name ``settings_text``."""
    return f"{RETENTION_LOCK_NAME} {settings_text}"


#: What a worker session's ``application_name`` starts with (then its id and the table OID).
WORKER_SESSION_PREFIX = "pgq-sync worker "
_UUID_PATTERN = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
#: A whole worker session name, its ``queue_manager_id`` (first group) and its OID.
WORKER_SESSION_PATTERN = f"^{WORKER_SESSION_PREFIX}{_UUID_PATTERN} [0-9]+$"
WORKER_SESSION_ID_PATTERN = f"^{WORKER_SESSION_PREFIX}({_UUID_PATTERN}) "
WORKER_SESSION_OID_PATTERN = " ([0-9]+)$"

#: Name the current session after a worker: ``%(label)s`` (``pgq-sync worker <id>``) and
#: the OID of the table ``%(queue_regclass)s`` names (left out if there is no such table).
#: ``set_config(..., false)`` lasts for the session, like ``SET application_name``.
LABEL_WORKER_SESSION = sql.SQL(
    "SELECT set_config('application_name', %(label)s::text"
    " || COALESCE(' ' || to_regclass(%(queue_regclass)s::text)::oid::text, ''), false)"
    " AS application_name"
)


class OpsStatements(StatementSet):
    """Composed operator statements for one set of object names; immutable and thread-safe."""

    @property
    def queue_regclass(self) -> str:
        """The quoted, qualified queue table name, bound as a value for ``to_regclass``."""
        return self.settings.ident("queue_table").as_string()

    @functools.cached_property
    def stale_jobs(self) -> sql.SQL:
        """Picked jobs whose heartbeat is older than ``%(threshold)s``, stalest first;
        ``repickable``: older than ``%(heartbeat_timeout)s`` too (any worker re-claims it)."""
        return self._sql("""
SELECT id, priority, queue_manager_id, created, updated, heartbeat, execute_after,
       status::text AS status, entrypoint, attempts,
       EXTRACT(EPOCH FROM NOW() - heartbeat)::float8 AS seconds_since_heartbeat,
       heartbeat < NOW() - %(heartbeat_timeout)s::interval AS repickable
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
    def live_workers(self) -> sql.SQL:
        """One row per worker: those with an open session named after them (connected,
        busy or idle) and those holding picked jobs, busiest first.

        Session columns come as arrays in ``backend_start`` order (normally one
        session: the LISTEN connection). A worker with no session is ``holding``
        while its newest heartbeat is younger than ``%(heartbeat_timeout)s`` (a
        PgQueuer worker, say) and ``stale`` after that.
        """
        return self._sql("""
WITH sessions AS (
    SELECT substring(a.application_name FROM %(id_pattern)s::text)::uuid AS queue_manager_id,
           a.pid, a.application_name, host(a.client_addr) AS client_addr, a.client_hostname,
           a.client_port, a.backend_start, a.state
    FROM pg_stat_activity a
    WHERE a.datname = current_database()
      AND a.application_name ~ %(name_pattern)s::text
      AND substring(a.application_name FROM %(oid_pattern)s::text)
          = to_regclass(%(queue_regclass)s::text)::oid::text
),
connected AS (
    SELECT queue_manager_id,
           array_agg(pid ORDER BY backend_start, pid) AS pids,
           array_agg(application_name ORDER BY backend_start, pid) AS application_names,
           array_agg(client_addr ORDER BY backend_start, pid) AS client_addrs,
           array_agg(client_hostname ORDER BY backend_start, pid) AS client_hostnames,
           array_agg(client_port ORDER BY backend_start, pid) AS client_ports,
           array_agg(backend_start ORDER BY backend_start, pid) AS backend_starts,
           array_agg(EXTRACT(EPOCH FROM NOW() - backend_start)::float8
                     ORDER BY backend_start, pid) AS seconds_connected,
           array_agg(state ORDER BY backend_start, pid) AS states
    FROM sessions
    GROUP BY queue_manager_id
),
held AS (
    SELECT queue_manager_id, count(*) AS active_jobs,
           array_agg(id ORDER BY id) AS job_ids,
           array_agg(DISTINCT entrypoint ORDER BY entrypoint) AS entrypoints,
           min(heartbeat) AS oldest_heartbeat, max(heartbeat) AS newest_heartbeat
    FROM {queue}
    WHERE status = 'picked' AND queue_manager_id IS NOT NULL
    GROUP BY queue_manager_id
)
SELECT COALESCE(c.queue_manager_id, h.queue_manager_id) AS queue_manager_id,
       CASE WHEN c.queue_manager_id IS NOT NULL THEN 'connected'
            WHEN h.newest_heartbeat >= NOW() - %(heartbeat_timeout)s::interval THEN 'holding'
            ELSE 'stale' END AS seen,
       c.pids, c.application_names, c.client_addrs, c.client_hostnames, c.client_ports,
       c.backend_starts, c.seconds_connected, c.states,
       COALESCE(h.active_jobs, 0) AS active_jobs,
       COALESCE(h.job_ids, ARRAY[]::bigint[]) AS job_ids,
       COALESCE(h.entrypoints, ARRAY[]::text[]) AS entrypoints,
       h.oldest_heartbeat, h.newest_heartbeat,
       EXTRACT(EPOCH FROM NOW() - h.oldest_heartbeat)::float8 AS seconds_since_oldest_heartbeat,
       EXTRACT(EPOCH FROM NOW() - h.newest_heartbeat)::float8 AS seconds_since_newest_heartbeat
FROM connected c
FULL JOIN held h ON h.queue_manager_id = c.queue_manager_id
ORDER BY COALESCE(h.active_jobs, 0) DESC, c.queue_manager_id IS NULL,
         COALESCE(c.queue_manager_id, h.queue_manager_id)
LIMIT %(limit)s
""")

    @functools.cached_property
    def latency(self) -> sql.SQL:
        """Per entrypoint, over the log rows of the last ``%(window)s``: picks, and the
        p50/p95 of queue wait (``queued`` row -> ``picked`` row of the same job) and
        run time (``picked`` -> ``successful``/``exception``/``failed``).

        Reads the window once through the ``created`` index (the MATERIALIZED
        scan has no other condition, so no plan walks the whole log) and pairs
        each row with the job's previous row in the window. Only a job's first
        row in the window looks further back, one probe of the ``(job_id,
        created)`` index each: its predecessor was logged before the window.
        """
        return self._sql("""
WITH recent AS MATERIALIZED (
    SELECT id, job_id, created, status, entrypoint FROM {log}
    WHERE created > NOW() - %(window)s::interval
),
paired AS (
    SELECT r.id, r.job_id, r.created, r.status, r.entrypoint,
           lag(r.status) OVER w AS previous, lag(r.created) OVER w AS previous_at
    FROM recent r
    WINDOW w AS (PARTITION BY r.job_id ORDER BY r.id)
),
timed AS (
    SELECT s.entrypoint, s.status,
           COALESCE(s.previous, b.status) AS previous,
           GREATEST(EXTRACT(EPOCH FROM s.created - COALESCE(s.previous_at, b.created)), 0)
               ::float8 AS seconds
    FROM paired s
    LEFT JOIN LATERAL (
        SELECT l.status, l.created FROM {log} l
        WHERE s.previous IS NULL AND l.job_id = s.job_id AND l.id < s.id
        ORDER BY l.id DESC
        LIMIT 1
    ) b ON TRUE
    WHERE s.status IN ('picked', 'successful', 'exception', 'failed')
)
SELECT entrypoint,
       count(*) FILTER (WHERE status = 'picked') AS picked,
       count(*) FILTER (WHERE status = 'picked' AND previous = 'queued') AS waited,
       percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY seconds)
           FILTER (WHERE status = 'picked' AND previous = 'queued') AS wait,
       count(*) FILTER (WHERE status <> 'picked' AND previous = 'picked') AS finished,
       percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY seconds)
           FILTER (WHERE status <> 'picked' AND previous = 'picked') AS run
FROM timed
GROUP BY entrypoint
ORDER BY count(*) DESC, entrypoint
LIMIT %(limit)s
""")

    @functools.cached_property
    def unserved(self) -> sql.SQL:
        """Entrypoints with a job ready for longer than ``%(grace)s`` while no job of
        theirs was picked within ``%(window)s`` and none is running (a picked row
        whose heartbeat is younger than ``%(heartbeat_timeout)s``).

        The log is grouped over the window with no status condition, so the scan
        goes through the ``created`` index, never through all ``picked`` rows.
        """
        return self._sql("""
WITH ready AS (
    SELECT entrypoint, count(*) AS ready, min(GREATEST(created, execute_after)) AS ready_since
    FROM {queue}
    WHERE status = 'queued' AND execute_after <= NOW()
    GROUP BY entrypoint
),
picked_recently AS MATERIALIZED (
    SELECT entrypoint FROM {log}
    WHERE created > NOW() - %(window)s::interval
    GROUP BY entrypoint
    HAVING bool_or(status = 'picked')
)
SELECT r.entrypoint, r.ready, r.ready_since,
       EXTRACT(EPOCH FROM NOW() - r.ready_since)::float8 AS seconds_ready
FROM ready r
WHERE r.ready_since < NOW() - %(grace)s::interval
  AND NOT EXISTS (SELECT 1 FROM picked_recently p WHERE p.entrypoint = r.entrypoint)
  AND NOT EXISTS (
      SELECT 1 FROM {queue} q
      WHERE q.entrypoint = r.entrypoint AND q.status = 'picked'
        AND q.heartbeat >= NOW() - %(heartbeat_timeout)s::interval)
ORDER BY r.ready_since, r.entrypoint
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

    @functools.cache  # noqa: B019 - one entry per walked table, for life
    def retention_batch(self, table: str) -> sql.SQL:
        """One step of the workers' pruner over ``log`` or ``stats``, gated by the
        retention lock (``%(lock_key)s``, tried, never waited for).

        Looks at the next ``%(batch)s`` rows by id after ``%(after)s`` and deletes
        those older than ``%(keep)s`` that may go (see ``_RETENTION_ELIGIBLE``).
        Unlike :meth:`prune_batch` there is no plan: counting a large log every
        minute would read all of it. Ids grow with ``created``, so a step that
        finds no row older than the window (or reaches the end of the table)
        ends the walk (``done``): an idle pass reads one batch of rows, and a
        few young rows among old ones (or old rows kept for a job still queued)
        do not stop it. Only rows to delete are
        locked, ``SKIP LOCKED``; the queue table is only read, by primary key.
        """
        if table not in RETENTION_WALKED_TABLES:
            raise ValueError(f"retention walks {RETENTION_WALKED_TABLES}, not {table!r}")
        return self._sql("""
WITH gate AS MATERIALIZED (""" + RETENTION_GATE + """),
seen AS MATERIALIZED (
    SELECT t.id, t.created < NOW() - %(keep)s::interval AS old,
           """ + _RETENTION_ELIGIBLE[table] + """ AS eligible
    FROM {table} t
    WHERE (SELECT go FROM gate) AND t.id > %(after)s
    ORDER BY t.id
    LIMIT %(batch)s
),
doomed AS (
    SELECT t.id FROM {table} t JOIN seen s ON s.id = t.id
    WHERE s.old AND s.eligible
    FOR UPDATE OF t SKIP LOCKED
),
gone AS (
    DELETE FROM {table} t USING doomed d WHERE t.id = d.id RETURNING 1
)
SELECT (SELECT go FROM gate) AS locked,
       (SELECT count(*) FROM gone) AS deleted,
       (SELECT max(id) FROM seen) AS last_id,
       (SELECT count(*) < %(batch)s OR NOT COALESCE(bool_or(old), FALSE) FROM seen) AS done
""", table=self._names[table])

    def _prunable(self, table: str) -> sql.Composable:
        if table not in PRUNABLE_TABLES:
            raise ValueError(f"prune works on {PRUNABLE_TABLES}, not {table!r}")
        composable: sql.Composable = self._names[table]
        return composable
