"""Looking at the in-memory queue: what is queued, what the log says, what failed
and why."""

from __future__ import annotations

import collections
import copy
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Literal

from ...errors import ConfigurationError
from ...models import Job, Log, QueueStatistics
from ...options import HEARTBEAT_TIMEOUT
from ...queries.models import EntrypointExecutionParameter, ErrorRecord, PollState
from ...queries.values import error_record, int_ids, stale_timeouts
from ...types import JOB_STATUS, JobId, QueueEntrypoint
from .base import InMemoryQueriesBase, check_limit
from .driver import Statement
from .tables import JobRow, LogRow


class InMemoryInspection(InMemoryQueriesBase):
    """Read-only looks at the queue and its log."""

    def queue_size(self) -> list[QueueStatistics]:
        """Counts of queue rows by entrypoint, priority and status."""
        with self._statement() as s:
            counts = collections.Counter(
                (r.entrypoint, r.priority, r.status) for r in s.db.jobs.values()
            )
        stats = [QueueStatistics(n, QueueEntrypoint(e), p, st) for (e, p, st), n in counts.items()]
        return sorted(stats, key=lambda q: (q.count, q.entrypoint, q.priority, q.status))

    def queue_log(self) -> list[Log]:
        """Every log row, oldest first."""
        with self._statement() as s:
            return [r.to_log() for r in s.db.log_rows]

    def job_status(self, ids: Iterable[int]) -> list[tuple[JobId, JOB_STATUS]]:
        """The latest logged status of each job that has one, by job id."""
        wanted = set(int_ids(ids))
        latest: dict[int, LogRow] = {}
        with self._statement() as s:
            for row in s.db.log_rows:
                if row.job_id in wanted:
                    seen = latest.get(row.job_id)
                    if seen is None or (row.created, row.id) > (seen.created, seen.id):
                        latest[row.job_id] = row
        return [(JobId(i), latest[i].status) for i in sorted(latest)]

    def queued_work(self, entrypoints: Iterable[str]) -> int:
        """Queued jobs of these entrypoints, deferred ones included."""
        return self._count_queued(entrypoints, eligible_only=False)

    def eligible_queued_work(self, entrypoints: Iterable[str]) -> int:
        """Queued jobs of these entrypoints that could run now (``execute_after <= NOW()``)."""
        return self._count_queued(entrypoints, eligible_only=True)

    def _count_queued(self, entrypoints: Iterable[str], *, eligible_only: bool) -> int:
        names = set(entrypoints)
        with self._statement() as s:
            return sum(
                1 for r in _queued(s, names) if not eligible_only or r.execute_after <= s.now
            )

    def poll_state(
        self,
        entrypoints: Iterable[str] | Mapping[str, EntrypointExecutionParameter | int],
        heartbeat_timeout: timedelta = HEARTBEAT_TIMEOUT,
    ) -> PollState:
        """Eligible work now? Delay to the next deferred job? Anything queued at all?
        When does the next picked job go stale?"""
        names, stale = stale_timeouts(entrypoints)
        timeouts = {
            n: heartbeat_timeout if t is None else t for n, t in zip(names, stale, strict=True)
        }
        with self._statement() as s:
            rows = list(_queued(s, set(names)))
            deadlines = [
                r.heartbeat + timeouts[r.entrypoint]
                for r in s.db.jobs.values()
                if r.status == "picked" and r.entrypoint in timeouts
            ]
            return PollState(
                eligible=any(r.execute_after <= s.now for r in rows),
                eta=_eta(rows, s.now),
                queued=bool(rows),
                stale_eta=min(deadlines) - s.now if deadlines else None,
            )

    def next_deferred_eta(self, entrypoints: Iterable[str]) -> timedelta | None:
        """Time until the soonest deferred job becomes eligible, or ``None``."""
        names = set(entrypoints)
        with self._statement() as s:
            return _eta(list(_queued(s, names)), s.now)

    def list_failed_jobs(
        self, limit: int = 100, order: Literal["ASC", "DESC"] = "DESC"
    ) -> list[Job]:
        """Held jobs, newest first by default."""
        if order not in ("ASC", "DESC"):
            raise ConfigurationError(f"order must be 'ASC' or 'DESC', got {order!r}")
        with self._statement() as s:
            held = [r for r in s.db.jobs.values() if r.status == "failed"]
            held.sort(key=lambda r: (r.updated, r.id), reverse=order == "DESC")
            return [r.to_job() for r in held[: check_limit(limit)]]

    def last_errors(self, ids: Iterable[int]) -> dict[JobId, ErrorRecord]:
        """The newest logged failure record of each job still in the queue; see
        :meth:`Queries.last_errors`."""
        wanted = set(int_ids(ids))
        newest: dict[int, LogRow] = {}
        with self._statement() as s:
            for entry in s.db.log_rows:
                row = s.db.jobs.get(entry.job_id)
                if entry.job_id not in wanted or row is None or entry.created < row.created:
                    continue
                if not isinstance(entry.traceback, dict):
                    continue
                seen = newest.get(entry.job_id)
                if seen is None or (entry.created, entry.id) > (seen.created, seen.id):
                    newest[entry.job_id] = entry
            rows = [
                {"job_id": e.job_id, "created": e.created, "status": e.status,
                 "traceback": copy.deepcopy(e.traceback)}
                for e in newest.values()
            ]
        found = [e for e in map(error_record, rows) if e is not None]
        return {e.job_id: e for e in sorted(found, key=lambda e: e.job_id)}


def _queued(s: Statement, names: set[str]) -> Iterator[JobRow]:
    return (r for r in s.db.jobs.values() if r.status == "queued" and r.entrypoint in names)


def _eta(rows: Iterable[JobRow], now: datetime) -> timedelta | None:
    deferred = [r.execute_after for r in rows if r.execute_after > now]
    return min(deferred) - now if deferred else None
