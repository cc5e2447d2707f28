"""Bulk actions in memory: requeue, cancel or purge many jobs, batch by batch,
through the same :func:`~pgqueue_sync.queries.bulk.walk_bulk` loop as the database."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ...errors import ConfigurationError
from ...queries.bulk import (
    BULK_BATCH_SIZE,
    BulkAction,
    BulkPlan,
    BulkResult,
    BulkRow,
    bulk_scope,
    walk_bulk,
)
from ...queries.cancellation import cancellation_payloads
from ...queries.values import outcome_params
from ...types import JobId
from .base import InMemoryQueriesBase
from .driver import Statement
from .outcomes import write_outcomes
from .tables import JobRow


class InMemoryBulk(InMemoryQueriesBase):
    """Planning and running bulk actions."""

    def plan_bulk(
        self, action: BulkAction, *, entrypoints: str | Sequence[str] | None = None
    ) -> BulkPlan:
        """Count the jobs a bulk action would change now; see :meth:`Queries.plan_bulk`."""
        names = bulk_scope(action, entrypoints)
        plan = BulkPlan(action, names, 0, None)
        with self._statement() as s:
            ids = [r.id for r in _bulk_rows(s, plan)]
        return BulkPlan(action, names, len(ids), JobId(max(ids)) if ids else None)

    def run_bulk(
        self,
        plan: BulkPlan,
        *,
        batch_size: int = BULK_BATCH_SIZE,
        on_batch: Callable[[int], None] | None = None,
    ) -> BulkResult:
        """Carry out a planned bulk action batch by batch; see :meth:`Queries.run_bulk`.

        Each batch is one atomic step. Nothing is ever locked by another
        session here, so ``busy`` is always 0.
        """
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")

        def run_batch(after: int) -> list[BulkRow]:
            with self._statement() as s:
                rows = [r for r in _bulk_rows(s, plan) if r.id > after][:batch_size]
                if plan.action == "requeue":
                    return _requeue_batch(s, rows)
                if plan.action == "purge":
                    return _purge_batch(s, rows)
                if not rows:
                    return []
                ids = [r.id for r in rows]
                done = set(write_outcomes(s, outcome_params((i, "canceled", None) for i in ids)))
                s.payloads.extend(cancellation_payloads(self.settings.channel, ids, s.now))
                return [BulkRow(r.id, r.entrypoint, r.id in done) for r in rows]

        def remaining() -> int:
            with self._statement() as s:
                return sum(1 for _ in _bulk_rows(s, plan))

        return walk_bulk(plan, run_batch=run_batch, remaining=remaining, on_batch=on_batch)


def _bulk_rows(s: Statement, plan: BulkPlan) -> list[JobRow]:
    """The rows a bulk action selects, up to ``plan.last_id`` (if planned), by id."""
    names = None if plan.entrypoints is None else set(plan.entrypoints)
    found = [
        r for r in s.db.jobs.values()
        if r.status in plan.statuses
        and (names is None or r.entrypoint in names)
        and (plan.last_id is None or r.id <= plan.last_id)
    ]
    return sorted(found, key=lambda r: r.id)


def _requeue_batch(s: Statement, rows: list[JobRow]) -> list[BulkRow]:
    """Requeue held rows as the bulk statement does: a row whose dedupe key an active
    job holds, or an earlier row of the batch has, stays held."""
    active = s.active_keys()
    seen: set[str] = set()
    moved: list[JobRow] = []
    for row in rows:
        key = row.dedupe_key
        if key is None or (key not in seen and key not in active):
            moved.append(row)
        if key is not None:
            seen.add(key)
    for row in moved:
        row.status, row.execute_after, row.updated = "queued", s.now, s.now
        row.attempts, row.queue_manager_id = 0, None
        s.log(row, "queued")
    if moved:
        s.table_changed("update")
    done = {r.id for r in moved}
    return [BulkRow(r.id, r.entrypoint if r.id in done else None, r.id in done) for r in rows]


def _purge_batch(s: Statement, rows: list[JobRow]) -> list[BulkRow]:
    """Delete queued rows, logging each ``deleted``; the DELETE's trigger fires even
    for an empty batch, as in the database."""
    for row in rows:
        del s.db.jobs[row.id]
        s.log(row, "deleted")
    s.table_changed("delete")
    return [BulkRow(r.id, r.entrypoint, True) for r in rows]
