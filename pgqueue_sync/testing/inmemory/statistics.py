"""The in-memory log's history: folding log rows into statistics, reading them,
and retention (pruning old log and statistics rows)."""

from __future__ import annotations

import collections
from datetime import datetime, timedelta, timezone
from typing import Any, cast

from ...models import LogStatistics, RetentionStep
from ...types import JOB_STATUS, QueueEntrypoint, RetentionTable
from .base import InMemoryQueriesBase, check_limit
from .driver import Statement
from .tables import StatRow, trunc_seconds


class InMemoryStatistics(InMemoryQueriesBase):
    """Statistics and retention."""

    def aggregate_logs(self) -> None:
        """Fold new log rows into per-second statistics (the lock is the driver's)."""
        with self._statement() as s:
            _aggregate(s)

    def log_statistics(
        self, tail: int | None = None, last: timedelta | None = None, *, limit: int | None = None
    ) -> list[LogStatistics]:
        """Aggregate, then return the newest buckets (``tail``/``limit`` rows, ``last`` age)."""
        cap = limit if limit is not None else tail
        with self._statement() as s:
            _aggregate(s)
            rows = sorted(s.db.statistics.values(), key=lambda r: r.id, reverse=True)
            if last is not None:
                rows = [r for r in rows if r.created > s.now - last]
        if cap is not None:
            rows = rows[: check_limit(cap)]
        return [
            LogStatistics(r.count, r.created, QueueEntrypoint(r.entrypoint), r.priority, r.status)
            for r in rows
        ]

    def prune_expired(
        self, table: RetentionTable, keep: timedelta, *, after: int | None, batch_size: int
    ) -> RetentionStep:
        """As :meth:`Queries.prune_expired`; the lock is the driver's (always taken)
        and there is no results table (nothing to prune there)."""
        if table == "results":
            return RetentionStep(locked=True, deleted=0, last_id=None, done=True)
        with self._statement() as s:
            return _prune_step(s, table, s.now - keep, after, batch_size)


def _aggregate(s: Statement) -> None:
    buckets: collections.Counter[tuple[int, datetime, str, str]] = collections.Counter()
    for row in s.db.log_rows:
        if not row.aggregated:
            row.aggregated = True
            created = trunc_seconds(row.created).astimezone(timezone.utc)
            buckets[(row.priority, created, row.status, row.entrypoint)] += 1
    for key, count in buckets.items():
        existing = s.db.statistics.get(key)
        if existing is not None:
            existing.count += count
            continue
        priority, created, status, entrypoint = key
        s.db.statistics[key] = StatRow(
            s.next_id("statistics"),
            created,
            count,
            priority,
            cast("JOB_STATUS", status),
            entrypoint,
        )


def _prune_step(
    s: Statement, table: str, cutoff: datetime, after: int | None, batch: int
) -> RetentionStep:
    # The same walk as the SQL (sql/ops.py retention_batch): the next ``batch``
    # rows by id, old and eligible ones deleted; a batch without old rows ends the walk.
    rows: list[Any] = s.db.log_rows if table == "log" else sorted(
        s.db.statistics.values(), key=lambda r: r.id)
    seen = [r for r in rows if after is None or r.id > after][:batch]
    doomed = {
        r.id for r in seen
        if r.created < cutoff and (table != "log" or (r.aggregated and r.job_id not in s.db.jobs))
    }
    if table == "log":
        s.db.log_rows[:] = [r for r in s.db.log_rows if r.id not in doomed]
    else:
        for key in [k for k, r in s.db.statistics.items() if r.id in doomed]:
            del s.db.statistics[key]
    old = any(r.created < cutoff for r in seen)
    return RetentionStep(locked=True, deleted=len(doomed),
                         last_id=max((r.id for r in seen), default=None),
                         done=len(seen) < batch or not old)
