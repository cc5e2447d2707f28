"""The claim: one statement that picks up to a batch of jobs for a worker.

The dequeue pipeline (PgQueuer 1.6 semantics, our own SQL) is a chain of CTEs
that :meth:`ClaimStatements.dequeue` joins according to the gate shape: which
entrypoints are registered, their fleet-wide capacity, the worker's own
budget, the open and limited candidates and stale re-picks, then the seats
and the update that marks the jobs picked and logs them.
"""

from __future__ import annotations

import functools

from psycopg import sql

from ..drivers.base import ExpectingColumns
from .outcomes import outcome_writes
from .statement_set import JOB_COLUMN_NAMES, StatementSet

#: ``registered``: the worker's entrypoints with their limits and stale timeouts.
_REGISTERED = """registered AS (
    SELECT r.entrypoint, r.lim,
           COALESCE(r.stale_after, %(heartbeat_timeout)s::interval) AS stale_after
    FROM unnest(%(entrypoints)s::text[], %(limits)s::integer[], %(stale_after)s::interval[])
        AS r(entrypoint, lim, stale_after)
)"""

# Fleet-wide in-flight counts include stale picked rows (queue_manager_id set).
# Limited candidates are windowed *before* locking: with SKIP LOCKED alone a
# worker would slide past another worker's uncommitted claim and overshoot.
#: Candidates of entrypoints with a ``concurrency_limit`` (``fresh_limited``) and
#: the seats they may take (``free_seats``).
_LIMITED_CANDIDATES = """in_flight AS (
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

#: ``my_load``: how many more jobs the worker's ``max_concurrent_tasks`` budget allows.
_WORKER_HEADROOM = """my_load AS (
    SELECT GREATEST(LEAST(%(batch)s, %(budget)s - count(*)), 0) AS headroom
    FROM {queue} WHERE queue_manager_id = %(queue_manager_id)s
)"""

#: ``fresh_open``: queued candidates of entrypoints without a limit, locked.
_UNLIMITED_CANDIDATES = """fresh_open AS (
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
#: ``stale``: picked jobs whose heartbeat is older than their entrypoint's stale timeout.
_STALE_CANDIDATES = """stale AS (
    SELECT q.id, q.priority, q.entrypoint
    FROM {queue} q JOIN registered r ON r.entrypoint = q.entrypoint
    WHERE q.status = 'picked'
      AND q.heartbeat < NOW() - r.stale_after
      AND q.execute_after <= NOW()
    ORDER BY q.priority DESC, q.id ASC
    LIMIT %(batch)s
    FOR UPDATE OF q SKIP LOCKED
)"""

#: The branches of ``eligible``, one per kind of candidate.
_OPEN_BRANCH = "SELECT id, priority, entrypoint, 'open' AS kind FROM fresh_open"
_LIMITED_BRANCH = "SELECT id, priority, entrypoint, 'limited' AS kind FROM fresh_limited"
_STALE_BRANCH = "SELECT id, priority, entrypoint, 'stale' AS kind FROM stale"

#: ``eligible``: the best candidates of every kind, up to the batch (or the headroom).
_ELIGIBLE = """eligible AS (
    SELECT u.id, u.priority, u.entrypoint, u.kind
    FROM ({branches}) u
    ORDER BY u.priority DESC, u.id ASC
    LIMIT {limit}
)"""

# The k-th fresh claim of a limited entrypoint takes its k-th lowest free seat;
# claims left without a seat are dropped. A concurrent worker taking the same
# seat fails on the unique seat index, which the caller treats as an empty batch.
#: ``claim`` when some entrypoint is limited: eligible jobs with their seats.
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

#: ``claim`` when no entrypoint is limited: every eligible job, without a seat.
_PLAIN_CLAIM = """claim AS (
    SELECT e.id, e.kind, NULL::bigint AS seat FROM eligible e
)"""

#: ``claimed``: the claimed jobs marked picked by this worker; ``picked_log``: their log rows.
_MARK_PICKED = """claimed AS (
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

#: The claim's reply: the picked jobs, best first.
_CLAIM_RESULT = """
SELECT * FROM claimed ORDER BY priority DESC, id ASC"""


class ClaimStatements(StatementSet):
    """The claim statement, in every shape a worker needs."""

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
        :func:`~pgqueue_sync.sql.outcomes.finish_steps`) in the same statement. The claim's
        snapshot still counts those jobs as running, so piggybacking can only
        under-claim, never overshoot a limit.
        ``results`` (with ``finish``): also store results (the ``result_*``
        parameters) in the opt-in results table.
        ``stale``: also re-pick picked jobs whose heartbeat is stale. That scan
        walks the picked-heartbeat index, where every job finished since the
        last VACUUM leaves a dead entry; callers run it every few seconds, not
        on every claim.
        """
        parts = [
            outcome_writes(finish, guarded=True, results=results, standalone=False)
        ] if finish else []
        parts += _candidate_steps(capacity=capacity, budget=budget, stale=stale)
        parts.append(_SEATED_CLAIM if capacity else _PLAIN_CLAIM)
        parts.append(_MARK_PICKED)
        # The reply is checked for the job columns: see ExpectingColumns.
        return ExpectingColumns(self._sql("WITH " + ",\n".join(parts) + _CLAIM_RESULT)
                                .as_string(), JOB_COLUMN_NAMES)


def _candidate_steps(*, capacity: bool, budget: bool, stale: bool) -> list[str]:
    """The CTEs from ``registered`` up to ``eligible``, for one gate shape."""
    steps = [_REGISTERED]
    if capacity:
        steps.append(_LIMITED_CANDIDATES)
    if budget:
        steps.append(_WORKER_HEADROOM)
    steps.append(_UNLIMITED_CANDIDATES)
    branches = [_OPEN_BRANCH]
    if capacity:
        branches.append(_LIMITED_BRANCH)
    if stale:
        steps.append(_STALE_CANDIDATES)
        branches.append(_STALE_BRANCH)
    limit = "(SELECT headroom FROM my_load)" if budget else "%(batch)s"
    steps.append(_ELIGIBLE.format(branches=" UNION ALL ".join(branches), limit=limit))
    return steps
