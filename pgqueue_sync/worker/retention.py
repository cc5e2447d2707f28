"""Retention: workers keep the log, statistics and stored results within their windows.

A busy queue writes about three log rows per job, and nothing else ever removes
them. Every :data:`INTERVAL` seconds (with jitter) each worker's
``pgqueue_sync-pruner`` thread runs one pass (:class:`Pruner`):

* **one worker at a time.** Every statement first tries a transaction-level
  advisory lock of its own key (``pgqueue_sync retention <log table>``) and does
  nothing when another session holds it: the pass is skipped, never waited for.
  PgQueuer's aggregation lock is a different key, so PgQueuer workers are not
  held up;
* **small steps.** Each statement deletes at most :data:`BATCH_SIZE` rows and
  is its own transaction; a pass stops after :data:`MAX_BATCHES` statements or
  :data:`PASS_TIME_BUDGET` seconds, and the rest waits for the next pass;
* **never in the way of claims.** Only log, statistics and results rows are
  deleted; the queue table is only read (by primary key, no row locks);
* **what may go.** Log rows older than ``keep_log`` that were folded into the
  statistics and whose job is no longer in the queue table (so ``job_status``
  and completion waiting keep working for queued, running and held jobs);
  statistics rows older than ``keep_statistics``; stored results older than
  ``keep_results`` of jobs no longer queued.

A pass that removed something logs one INFO line (rows per table, seconds);
:attr:`Pruner.totals` counts the rows this process removed (the
``pgqueue_sync_pruned_rows_total`` metric of a worker serving metrics).
``pgq-sync prune`` (:meth:`pgqueue_sync.ops.OpsQueries.prune`) stays for manual runs.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from ..types import RetentionTable

if TYPE_CHECKING:
    from ..queries import Queries

logger = logging.getLogger(__name__)

#: Seconds between passes of one worker (± 20 % jitter).
INTERVAL = 60.0
#: Rows deleted (at most) per statement, each its own short transaction.
BATCH_SIZE = 5_000
#: Statements per pass, over all tables: at most a million rows a minute, well
#: above what a worker fleet can log.
MAX_BATCHES = 200
#: A pass stops starting statements after this many seconds.
PASS_TIME_BUDGET = 20.0
#: The order of a pass: the log first (by far the largest).
TABLES: tuple[RetentionTable, ...] = ("log", "statistics", "results")


@dataclasses.dataclass(frozen=True)
class PassReport:
    """What one pass did: rows removed per table, and whether it ran at all."""

    deleted: dict[RetentionTable, int]
    seconds: float
    skipped: bool = False  # another worker held the retention lock
    complete: bool = True  # False: the budget ran out with old rows left

    @property
    def total(self) -> int:
        """Rows removed from all tables."""
        return sum(self.deleted.values())


class Pruner:
    """One worker's retention passes; call it every :data:`INTERVAL` seconds.

    ``keep_log``, ``keep_statistics`` and ``keep_results`` are validated
    windows (``None``: that table is never pruned). ``stopping`` is polled
    between statements so that a worker's shutdown never waits for a pass.
    Each call blocks for at most about :data:`PASS_TIME_BUDGET` seconds plus
    one statement. Not meant to be called from two threads at once (two
    workers in one process each have their own).
    """

    def __init__(
        self,
        queries: Queries,
        *,
        keep_log: timedelta | None,
        keep_statistics: timedelta | None,
        keep_results: timedelta | None,
        stopping: Callable[[], bool] = lambda: False,
        batch_size: int = BATCH_SIZE,
        max_batches: int = MAX_BATCHES,
        time_budget: float = PASS_TIME_BUDGET,
    ) -> None:
        self.queries = queries
        self.windows: dict[RetentionTable, timedelta | None] = {
            "log": keep_log, "statistics": keep_statistics, "results": keep_results,
        }
        self._stopping = stopping
        self._batch_size = batch_size
        self._max_batches = max_batches
        self._time_budget = time_budget
        self._lock = threading.Lock()
        self._totals: dict[RetentionTable, int] = dict.fromkeys(TABLES, 0)

    @property
    def enabled(self) -> bool:
        """True when at least one table has a window."""
        return any(window is not None for window in self.windows.values())

    @property
    def totals(self) -> dict[str, int]:
        """Rows this pruner removed since it was made, per table (a copy)."""
        with self._lock:
            return {str(table): n for table, n in self._totals.items()}

    def __call__(self) -> None:
        self.run_pass()

    def run_pass(self) -> PassReport:
        """Prune every table that has a window, within the pass budget."""
        started = time.monotonic()
        deadline = started + self._time_budget
        budget = self._max_batches
        deleted: dict[RetentionTable, int] = {}
        outcome = "done"
        for table in TABLES:
            window = self.windows[table]
            if window is None:
                continue
            deleted[table], used, outcome = self._prune_table(table, window, budget, deadline)
            budget -= used
            if outcome != "done":
                break
        return self._report(deleted, started, outcome)

    def _prune_table(
        self, table: RetentionTable, keep: timedelta, budget: int, deadline: float
    ) -> tuple[int, int, str]:
        """Rows deleted, statements used and why it stopped (done, skipped, budget)."""
        deleted = used = 0
        after: int | None = None
        while True:
            if used >= budget or time.monotonic() >= deadline or self._stopping():
                return deleted, used, "budget"
            step = self.queries.prune_expired(table, keep, after=after,
                                              batch_size=self._batch_size)
            used += 1
            if not step.locked:
                return deleted, used, "skipped"
            deleted += step.deleted
            self._count(table, step.deleted)
            if step.done:
                return deleted, used, "done"
            after = step.last_id

    def _count(self, table: RetentionTable, rows: int) -> None:
        if rows:
            with self._lock:
                self._totals[table] += rows

    def _report(
        self, deleted: dict[RetentionTable, int], started: float, outcome: str
    ) -> PassReport:
        report = PassReport(deleted, time.monotonic() - started,
                            skipped=outcome == "skipped", complete=outcome == "done")
        if report.total:
            logger.info(
                "retention: removed %s in %.1fs%s",
                ", ".join(f"{n} {table} rows" for table, n in deleted.items() if n),
                report.seconds, "" if report.complete else " (more left for the next pass)",
            )
        elif report.skipped:
            logger.debug("retention: another worker is pruning; pass skipped")
        return report


__all__ = ["Pruner", "PassReport"]
