"""The scheduler's rows in memory: registering, claiming, releasing and deleting
schedules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from ...models import Schedule
from ...queries.values import int_ids, schedule_params
from ...types import CronEntrypoint, CronExpression, ScheduleId
from .base import InMemoryQueriesBase
from .driver import Statement
from .tables import ScheduleRow, trunc_seconds

_SCHEDULE_STALE = timedelta(seconds=30)  # hard-coded in PgQueuer's schedule claim


class InMemorySchedules(InMemoryQueriesBase):
    """The operations of :class:`~pgqueue_sync.scheduler.manager.SchedulerManager`."""

    def insert_schedule(
        self, schedules: Mapping[tuple[CronEntrypoint | str, CronExpression | str], timedelta]
    ) -> None:
        """Register ``(entrypoint, expression) -> delay until next run``; existing rows stay."""
        if not schedules:
            return
        params = schedule_params(schedules)
        with self._statement() as s:
            taken = {(r.entrypoint, r.expression) for r in s.db.schedules.values()}
            given = zip(params["entrypoints"], params["expressions"], params["delays"], strict=True)
            for ep, expr, delay in given:
                schedule_id = s.next_id("schedules")  # drawn before the conflict check
                if (ep, expr) in taken:
                    continue
                taken.add((ep, expr))
                s.db.schedules[schedule_id] = ScheduleRow(
                    schedule_id, expr, ep, s.now, s.now, s.now, trunc_seconds(s.now + delay)
                )

    def fetch_schedule(
        self, entries: Mapping[tuple[CronEntrypoint | str, CronExpression | str], timedelta]
    ) -> list[Schedule]:
        """Claim the due (or crashed, heartbeat older than 30 s) schedules among ``entries``."""
        if not entries:
            return []
        wanted = {(str(ep), str(expr)): delay for (ep, expr), delay in entries.items()}
        claimed: list[Schedule] = []
        with self._statement() as s:
            for row in sorted(s.db.schedules.values(), key=lambda r: r.id):
                delay = wanted.get((row.entrypoint, row.expression))
                if delay is None or not _schedule_due(row, s.now):
                    continue
                row.status, row.updated, row.heartbeat = "picked", s.now, s.now
                row.next_run = trunc_seconds(s.now + delay)
                claimed.append(row.to_schedule())
        return claimed

    def set_schedule_queued(self, ids: Iterable[ScheduleId | int]) -> None:
        """Release schedules after their run, stamping ``last_run``."""
        with self._statement() as s:
            for row in _schedules(s, ids):
                row.status, row.last_run, row.updated = "queued", s.now, s.now

    def update_schedule_heartbeat(self, ids: Iterable[ScheduleId | int]) -> None:
        """Refresh the heartbeat of running schedules."""
        id_list = sorted(set(int_ids(ids)))
        if not id_list:
            return
        with self._statement() as s:
            for row in _schedules(s, id_list):
                row.heartbeat, row.updated = s.now, s.now

    def peek_schedule(self) -> list[Schedule]:
        """Every schedule row, by id."""
        with self._statement() as s:
            return [s.db.schedules[i].to_schedule() for i in sorted(s.db.schedules)]

    def delete_schedule(
        self, ids: Iterable[ScheduleId | int] = (), entrypoints: Iterable[str] = ()
    ) -> None:
        """Delete schedules matching any of ``ids`` or ``entrypoints``."""
        id_set, names = set(int_ids(ids)), set(entrypoints)
        with self._statement() as s:
            s.db.schedules = {
                i: r
                for i, r in s.db.schedules.items()
                if i not in id_set and r.entrypoint not in names
            }

    def clear_schedule(self) -> None:
        """Delete every schedule."""
        with self._statement() as s:
            s.db.schedules.clear()


def _schedules(s: Statement, ids: Iterable[ScheduleId | int]) -> list[ScheduleRow]:
    return [s.db.schedules[i] for i in set(int_ids(ids)) if i in s.db.schedules]


def _schedule_due(row: ScheduleRow, now: datetime) -> bool:
    if row.status == "queued":
        return row.next_run <= now
    return row.status == "picked" and now - row.heartbeat > _SCHEDULE_STALE
