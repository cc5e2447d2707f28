"""Emptying the queue's tables, and looking after the queue table (health,
``ANALYZE``, ``VACUUM``)."""

from __future__ import annotations

from collections.abc import Sequence

from ..models import TableHealth
from ..sql import upkeep as upkeep_sql
from .base import QueriesBase
from .values import entrypoint_names


class HousekeepingQueries(QueriesBase):
    """Clearing tables and the queue table's upkeep."""

    def clear_queue(self, entrypoint: str | Sequence[str] | None = None) -> None:
        """Delete queued, picked and held jobs: of some entrypoints (logged ``deleted``),
        or all of them with ``TRUNCATE`` (not logged)."""
        if entrypoint is None:
            self.driver.execute(self.statements.truncate("queue"))
            return
        params = {"entrypoints": entrypoint_names(entrypoint)}
        self.driver.execute(self.statements.clear_queue_for, params)

    def clear_queue_log(self, entrypoint: str | Sequence[str] | None = None) -> None:
        """Delete log rows of some entrypoints, or all of them."""
        self._clear("log", entrypoint)

    def clear_statistics_log(self, entrypoint: str | Sequence[str] | None = None) -> None:
        """Delete statistics rows of some entrypoints, or all of them."""
        self._clear("stats", entrypoint)

    def _clear(self, table: str, entrypoint: str | Sequence[str] | None) -> None:
        if entrypoint is None:
            self.driver.execute(self.statements.truncate(table))
        else:
            query = self.statements.delete_for_entrypoints(table)
            self.driver.execute(query, {"entrypoints": entrypoint_names(entrypoint)})

    def queue_table_health(self) -> TableHealth:
        """The queue table's row counters, last ANALYZE/VACUUM and autovacuum state."""
        query, params = upkeep_sql.health(self.settings)
        [row] = self.driver.fetch(query, params)
        return TableHealth(**row)

    def analyze_queue_table(self) -> None:
        """``ANALYZE`` the queue table (owner only; skipped while another session does)."""
        self.driver.execute(upkeep_sql.analyze(self.settings))

    def vacuum_queue_table(self) -> None:
        """``VACUUM`` the queue table (owner only; needs an autocommit connection)."""
        self.driver.execute(upkeep_sql.vacuum(self.settings))
