"""The scheduler's rows: registering, claiming, releasing and deleting schedules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta

from ..models import Schedule
from ..types import CronEntrypoint, CronExpression, ScheduleId
from .base import QueriesBase
from .values import int_ids, schedule_params


class ScheduleQueries(QueriesBase):
    """The operations of :class:`~pgqueue_sync.scheduler.manager.SchedulerManager`."""

    def insert_schedule(
        self, schedules: Mapping[tuple[CronEntrypoint | str, CronExpression | str], timedelta]
    ) -> None:
        """Register ``(entrypoint, expression) -> delay until next run``; existing rows stay."""
        if schedules:
            self.driver.execute(self.statements.insert_schedule, schedule_params(schedules))

    def fetch_schedule(
        self, entries: Mapping[tuple[CronEntrypoint | str, CronExpression | str], timedelta]
    ) -> list[Schedule]:
        """Claim the due (or crashed, 30 s stale) schedules among ``entries``.

        Each value is the delay from now to that schedule's following run, which
        becomes its new ``next_run``.
        """
        if not entries:
            return []
        rows = self.driver.fetch(self.statements.fetch_schedule, schedule_params(entries))
        return [Schedule.from_row(row) for row in rows]

    def set_schedule_queued(self, ids: Iterable[ScheduleId | int]) -> None:
        """Release schedules after their run, stamping ``last_run``."""
        self.driver.execute(self.statements.set_schedule_queued, {"ids": int_ids(ids)})

    def update_schedule_heartbeat(self, ids: Iterable[ScheduleId | int]) -> None:
        """Refresh the heartbeat of running schedules."""
        id_list = sorted(set(int_ids(ids)))
        if id_list:
            self.driver.execute(self.statements.update_schedule_heartbeat, {"ids": id_list})

    def peek_schedule(self) -> list[Schedule]:
        """Every schedule row."""
        return [Schedule.from_row(r) for r in self.driver.fetch(self.statements.peek_schedule)]

    def delete_schedule(
        self, ids: Iterable[ScheduleId | int] = (), entrypoints: Iterable[str] = ()
    ) -> None:
        """Delete schedules matching any of ``ids`` or ``entrypoints``."""
        params = {"ids": int_ids(ids), "entrypoints": list(entrypoints)}
        self.driver.execute(self.statements.delete_schedule, params)

    def clear_schedule(self) -> None:
        """Delete every schedule."""
        self.driver.execute(self.statements.truncate("schedules"))
