"""Emptying the in-memory tables; the queue table's upkeep has nothing to do here."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ...models import TableHealth
from ...queries.values import entrypoint_names
from .base import InMemoryQueriesBase


class InMemoryHousekeeping(InMemoryQueriesBase):
    """Clearing tables, and the (always healthy) queue table's upkeep."""

    def clear_queue(self, entrypoint: str | Sequence[str] | None = None) -> None:
        """Delete jobs of some entrypoints (logged ``deleted``), or all (not logged)."""
        with self._statement() as s:
            if entrypoint is None:
                s.db.jobs.clear()
                s.table_changed("truncate")
                return
            names = set(entrypoint_names(entrypoint))
            for row in [r for r in s.db.jobs.values() if r.entrypoint in names]:
                del s.db.jobs[row.id]
                s.log(row, "deleted")
            s.table_changed("delete")

    def clear_queue_log(self, entrypoint: str | Sequence[str] | None = None) -> None:
        """Delete log rows of some entrypoints, or all of them."""
        with self._statement() as s:
            keep = _keeper(entrypoint)
            s.db.log_rows[:] = [r for r in s.db.log_rows if keep(r.entrypoint)]

    def clear_statistics_log(self, entrypoint: str | Sequence[str] | None = None) -> None:
        """Delete statistics rows of some entrypoints, or all of them."""
        with self._statement() as s:
            keep = _keeper(entrypoint)
            s.db.statistics = {k: v for k, v in s.db.statistics.items() if keep(v.entrypoint)}

    def queue_table_health(self) -> TableHealth:
        """Always healthy: there is no planner and nothing to vacuum in memory."""
        now = self.driver.now()
        return TableHealth(reltuples=0.0, live=0, dead=0, modified=0, analyzed=now,
                           vacuumed=now, autovacuum=True, owner=True, now=now)

    def analyze_queue_table(self) -> None:
        """Nothing to do in memory."""

    def vacuum_queue_table(self) -> None:
        """Nothing to do in memory."""


def _keeper(entrypoint: str | Sequence[str] | None) -> Callable[[str], bool]:
    if entrypoint is None:
        return lambda _name: False
    names = set(entrypoint_names(entrypoint))
    return lambda name: name not in names
