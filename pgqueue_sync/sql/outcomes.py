"""Writing what became of picked jobs: outcomes, hand-backs and heartbeats.

An outcome deletes a finished job, holds a failed one (``failed``) or puts a
retry back (``queued`` after its delay), and logs only the rows it really
changed. :func:`outcome_writes` builds those steps; :meth:`OutcomeStatements.log_jobs`
runs them alone, and the claim (:mod:`pgqueue_sync.sql.claim`) runs them first
in its own statement.
"""

from __future__ import annotations

import functools

from psycopg import sql

from .results import store_results_cte
from .statement_set import WAKE_LISTENERS, StatementSet

# Recording outcomes: delete finished rows, hold 'failed' ones, put retries
# ('queued' with a delay) back, and log only rows the statement really changed,
# so a job cancelled meanwhile is not logged twice. The worker's variant is
# guarded: it only touches rows still picked by that worker, so re-sending it
# after a lost reply changes nothing. Held and retried rows wake idle
# listeners (UPDATEs fire no trigger): pg_notify in RETURNING runs once per
# changed row, and PostgreSQL delivers identical payloads of one transaction once.

#: The ``done`` CTE: the reported outcomes, one row per job id, with the guard's
#: expected owner and status as columns.
_REPORTED_OUTCOMES = """done AS MATERIALIZED (
    SELECT DISTINCT ON (d.id) d.id, d.status, d.traceback, d.delay, d.claimed,
           %(queue_manager_id)s::uuid AS owner, 'picked'::{status} AS holding
    FROM unnest(%(ids)s::bigint[], %(statuses)s::text[]::{status}[], %(tracebacks)s::jsonb[],
                %(delays)s::interval[], %(claimed)s::timestamptz[])
        AS d(id, status, traceback, delay, claimed)
)"""

#: One step per kind of outcome: finished rows go, held ones stay ``failed``,
#: retried ones go back to ``queued`` after their delay with ``attempts + 1``.
#: ``GUARD`` and ``WAKE`` stand for :data:`_STILL_PICKED_BY_WRITER` and
#: :data:`~pgqueue_sync.sql.statement_set.WAKE_LISTENERS`.
_OUTCOME_STEPS = {
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
_STILL_PICKED_BY_WRITER = (
    "AND q.status IS NOT DISTINCT FROM d.holding "
    "AND q.queue_manager_id IS NOT DISTINCT FROM d.owner "
    "AND (d.claimed IS NULL OR q.updated IS NOT DISTINCT FROM d.claimed)"
)


def finish_steps(*, holds: bool, retries: bool) -> tuple[str, ...]:
    """The outcome steps a batch needs (a statement carries only those: each
    unused UPDATE step would still cost its planning and a scan of ``done``)."""
    return ("removed", *(["held"] if holds else []), *(["retried"] if retries else []))


def outcome_writes(
    steps: tuple[str, ...], *, guarded: bool, results: bool, standalone: bool
) -> str:
    """The outcome CTEs for ``steps``, then the log insert of the rows they changed.

    ``standalone``: the log insert is the final statement (returning ``job_id``);
    otherwise it is one more CTE, ``finished_log``, and the statement goes on (a
    claim). ``guarded``: only rows still picked by the writer. ``results``: also
    store results (the ``result_*`` parameters).
    """
    ctes = [_REPORTED_OUTCOMES, *(_OUTCOME_STEPS[step] for step in steps)]
    guard = _STILL_PICKED_BY_WRITER if guarded else ""
    text = ",\n".join(ctes).replace("GUARD", guard).replace("WAKE", WAKE_LISTENERS)
    if results:
        text += ",\n" + store_results_cte([s for s in steps if s != "retried"])
    rows = "\nUNION ALL\n".join(
        f"SELECT id, status, entrypoint, priority, traceback FROM {step}" for step in steps
    )
    insert = "INSERT INTO {log} (job_id, status, entrypoint, priority, traceback)\n" + rows
    if standalone:
        return text + "\n" + insert + "\nRETURNING job_id\n"
    return text + ",\nfinished_log AS (\n" + insert + "\n)"


class OutcomeStatements(StatementSet):
    """Statements a worker runs for the jobs it holds: outcomes, hand-backs, heartbeats."""

    @functools.cache  # noqa: B019 - sixteen variants at most
    def log_jobs(
        self, steps: tuple[str, ...], *, guarded: bool, results: bool = False
    ) -> sql.SQL:
        """Finish jobs: delete, hold as ``failed`` or retry (``queued`` with a delay), and
        log only rows that changed; ``steps`` from :func:`finish_steps`.
        ``guarded``: only rows still picked by ``%(queue_manager_id)s``.
        ``results``: also store results (the ``result_*`` parameters)."""
        return self._sql(
            "WITH " + outcome_writes(steps, guarded=guarded, results=results, standalone=True)
        )

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
    RETURNING q.id, q.entrypoint, q.priority, g.traceback, """ + WAKE_LISTENERS + """ AS woke
)
INSERT INTO {log} (job_id, status, entrypoint, priority, traceback)
SELECT id, 'queued', entrypoint, priority, traceback FROM released
RETURNING job_id
""")

    @functools.cache  # noqa: B019 - two variants
    def update_heartbeat(self, *, guarded: bool) -> sql.SQL:
        """Touch the heartbeat of running jobs; ``guarded``: only rows still picked by
        ``%(queue_manager_id)s`` (PgQueuer's has no guard)."""
        if not guarded:
            return self._sql(
                "UPDATE {queue} SET heartbeat = NOW() WHERE id = ANY(%(ids)s::bigint[])"
            )
        # Guard columns come from a materialised step, as in _STILL_PICKED_BY_WRITER
        # (same reason).
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
