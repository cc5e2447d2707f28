"""Bulk actions: requeue, cancel or purge many jobs, batch by batch.

:meth:`~pgqueue_sync.queries.Queries.plan_bulk` counts what an action would
change; :meth:`~pgqueue_sync.queries.Queries.run_bulk` carries it out through
:func:`walk_bulk`, the batch loop shared with the in-memory adapter.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from ..errors import ConfigurationError
from ..sql.ops import BEFORE_ANY_ID
from ..types import JOB_STATUS, JobId
from .batch import check_entrypoint
from .cancellation import CancellationQueries
from .values import entrypoint_names

logger = logging.getLogger(__name__)

#: What :meth:`Queries.run_bulk` can do to many jobs at once.
BulkAction = Literal["requeue", "cancel", "purge"]
BULK_ACTIONS: tuple[BulkAction, ...] = ("requeue", "cancel", "purge")
#: The statuses each bulk action selects: held jobs are requeued, queued and
#: picked ones cancelled, queued ones purged.
BULK_STATUSES: Mapping[BulkAction, tuple[JOB_STATUS, ...]] = {
    "requeue": ("failed",),
    "cancel": ("queued", "picked"),
    "purge": ("queued",),
}
#: Rows per statement of a bulk action; each batch is its own short transaction.
BULK_BATCH_SIZE = 1_000
#: Passes over the selection a cancel or purge makes while rows another session
#: held locked (a claim, a heartbeat) are left; requeue makes one (see run_bulk).
BULK_SWEEPS = 3
#: Seconds between two such passes, for the other session to finish.
BULK_SWEEP_PAUSE = 0.1
#: Ids a :class:`BulkResult` keeps (the lowest ones); the counts are always complete.
BULK_REPORTED_IDS = 100


@dataclasses.dataclass(frozen=True)
class BulkPlan:
    """What a bulk action would change, counted when it was planned.

    ``entrypoints`` is ``None`` for every entrypoint. ``last_id`` is the highest
    matching id then (``None``: nothing matched); :meth:`Queries.run_bulk`
    stops there, so jobs enqueued later are never touched.
    """

    action: BulkAction
    entrypoints: tuple[str, ...] | None
    count: int
    last_id: JobId | None

    @property
    def statuses(self) -> tuple[JOB_STATUS, ...]:
        """The statuses the action selects."""
        return BULK_STATUSES[self.action]


@dataclasses.dataclass(frozen=True)
class BulkResult:
    """What a bulk action did.

    ``done`` jobs were changed in ``batches`` statements; ``by_entrypoint``
    splits ``done``; ``ids`` holds the lowest of their ids (at most
    :data:`BULK_REPORTED_IDS`), ascending. ``kept``: held jobs a requeue left
    held because an active job holds their ``dedupe_key``. ``busy``: matching
    jobs left because another session kept them locked through every pass.
    """

    action: BulkAction
    done: int
    batches: int
    by_entrypoint: Mapping[str, int]
    ids: tuple[JobId, ...]
    kept: int = 0
    busy: int = 0


@dataclasses.dataclass(frozen=True)
class BulkRow:
    """One row a bulk batch locked: ``done`` when the batch acted on it."""

    id: int
    entrypoint: str | None
    done: bool


class BulkQueries(CancellationQueries):
    """Planning and running bulk actions."""

    def plan_bulk(
        self, action: BulkAction, *, entrypoints: str | Sequence[str] | None = None
    ) -> BulkPlan:
        """Count the jobs a bulk action would change now, and note the highest id.

        ``requeue``: held (``failed``) jobs; ``cancel``: queued and picked jobs;
        ``purge``: queued jobs (deferred ones included). ``entrypoints=None``
        means every entrypoint, which only ``requeue`` accepts.
        """
        names = bulk_scope(action, entrypoints)
        row = self.driver.fetch(
            self.statements.bulk_plan(every=names is None),
            {"statuses": list(BULK_STATUSES[action]), "entrypoints": list(names or ()),
             "last_id": None},
        )[0]
        last = row["last_id"]
        return BulkPlan(action, names, int(row["count"]), None if last is None else JobId(last))

    def run_bulk(
        self,
        plan: BulkPlan,
        *,
        batch_size: int = BULK_BATCH_SIZE,
        on_batch: Callable[[int], None] | None = None,
    ) -> BulkResult:
        """Carry out a planned bulk action, ``batch_size`` jobs per statement.

        Walks the ids up to ``plan.last_id`` once, lowest first; jobs enqueued
        since the plan are not touched. On an autocommit driver each batch
        commits on its own, so no lock outlives a batch, and rows another
        session holds locked (a claim in progress, a heartbeat) are skipped
        rather than waited for: workers are never blocked.

        * ``requeue``: as :meth:`requeue_jobs` (``attempts`` reset, a ``queued``
          log row, workers woken once per batch). A held job whose
          ``dedupe_key`` an active job holds stays held (``kept``).
        * ``cancel``: as :meth:`mark_job_as_cancelled`, batch by batch: queued
          jobs are deleted and running ones see their cancellation token; all
          are logged ``canceled``.
        * ``purge``: queued jobs are deleted and logged ``deleted``; picked and
          held jobs are never touched.

        A cancel or purge walks again (up to :data:`BULK_SWEEPS` times) while
        jobs it skipped as locked still match; what is left then is ``busy``.
        A requeue walks once, so a requeued job that is held again meanwhile
        is not requeued a second time. ``on_batch`` gets each batch's count.
        """
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        every = plan.entrypoints is None
        params: dict[str, Any] = {
            "entrypoints": list(plan.entrypoints or ()),
            "last_id": plan.last_id,
            "batch": batch_size,
            "channel": self.settings.channel,
            "table": self.settings.bare_name("queue_table"),
        }

        def run_batch(after: int) -> list[BulkRow]:
            batch = {**params, "after": after}
            if plan.action == "cancel":
                return self._cancel_batch(every, batch)
            statement = (self.statements.bulk_requeue if plan.action == "requeue"
                         else self.statements.bulk_purge)
            rows = self.driver.fetch(statement(every=every), batch)
            return [BulkRow(r["id"], r["entrypoint"], r["done"]) for r in rows]

        def remaining() -> int:
            query = self.statements.bulk_plan(every=every)
            counted = {**params, "statuses": list(plan.statuses)}
            return int(self.driver.fetch(query, counted)[0]["count"])

        return walk_bulk(plan, run_batch=run_batch, remaining=remaining, on_batch=on_batch)

    def _cancel_batch(self, every: bool, params: Mapping[str, Any]) -> list[BulkRow]:
        # Lock the batch, then cancel it by id in the same transaction: the
        # rows cannot finish or be claimed in between.
        with self.driver.transaction() as tx:
            locked = tx.fetch(self.statements.bulk_lock_active(every=every), params)
            ids = [int(r["id"]) for r in locked]
            done = set(self._on(tx).mark_job_as_cancelled(ids))
        return [BulkRow(r["id"], r["entrypoint"], r["id"] in done) for r in locked]


def walk_bulk(
    plan: BulkPlan,
    *,
    run_batch: Callable[[int], Sequence[BulkRow]],
    remaining: Callable[[], int],
    on_batch: Callable[[int], None] | None = None,
) -> BulkResult:
    """The batch loop behind ``run_bulk``, shared by the database and the in-memory
    queries: ``run_batch(after)`` handles the next batch of ids above ``after``;
    ``remaining()`` counts the jobs that still match, up to ``plan.last_id``."""
    by_entrypoint: collections.Counter[str] = collections.Counter()
    ids: list[int] = []
    batches = kept = busy = 0
    if plan.last_id is None:
        return BulkResult(plan.action, 0, 0, {}, ())
    sweeps = 1 if plan.action == "requeue" else BULK_SWEEPS
    for sweep in range(sweeps):
        if sweep:
            time.sleep(BULK_SWEEP_PAUSE)
        after, kept = BEFORE_ANY_ID, 0
        while True:
            rows = run_batch(after)
            if not rows:
                break
            after = max(r.id for r in rows)
            done = [r for r in rows if r.done]
            kept += len(rows) - len(done)
            batches += 1
            by_entrypoint.update(r.entrypoint or "" for r in done)
            ids = sorted(ids + [r.id for r in done])[:BULK_REPORTED_IDS]
            if on_batch is not None:
                on_batch(len(done))
            logger.debug("%s: %d job(s) in batch %d (up to id %d)",
                         plan.action, len(done), batches, after)
        if sweeps == 1:
            break
        busy = remaining()
        if not busy:
            break
    total = sum(by_entrypoint.values())
    logger.info("%s: %d job(s) in %d batch(es)", plan.action, total, batches)
    return BulkResult(plan.action, total, batches, dict(sorted(by_entrypoint.items())),
                      tuple(JobId(i) for i in ids), kept=kept if plan.action == "requeue" else 0,
                      busy=busy)


def bulk_scope(action: str, entrypoints: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """The validated entrypoints of a bulk action (``None``: every one)."""
    if action not in BULK_ACTIONS:
        raise ConfigurationError(
            f"bulk action must be one of {', '.join(BULK_ACTIONS)}, got {action!r}"
        )
    if entrypoints is None:
        if action != "requeue":
            raise ConfigurationError(f"{action} needs the entrypoints it applies to")
        return None
    names = tuple(dict.fromkeys(check_entrypoint(e) for e in entrypoint_names(entrypoints)))
    if not names:
        raise ConfigurationError(f"{action} needs at least one entrypoint")
    return names
