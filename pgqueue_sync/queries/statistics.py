"""The log's history: folding log rows into statistics, reading the statistics,
and the workers' retention (pruning old log, statistics and result rows)."""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any

from psycopg import sql

from ..models import LogStatistics, RetentionStep
from ..sql import results as results_sql
from ..sql.ops import BEFORE_ANY_ID, RETENTION_GATE, OpsStatements, retention_lock_key
from ..types import RetentionTable
from .base import QueriesBase

#: Log rows folded into statistics per transaction, and transactions per call.
AGGREGATE_CHUNK = 20_000
AGGREGATE_MAX_CHUNKS = 100


class StatisticsQueries(QueriesBase):
    """Statistics and retention."""

    def aggregate_logs(self) -> None:
        """Fold new log rows into statistics, skipping if another process holds the lock.

        Uses PgQueuer's advisory-lock key, so sync and async workers never count
        a log row twice. Folds at most :data:`AGGREGATE_CHUNK` rows per
        transaction and :data:`AGGREGATE_MAX_CHUNKS` transactions per call (the
        rest waits for the next call): a deep drain leaves millions of log rows,
        and folding them in one transaction took over 20 s, during which
        VACUUM could not remove the queue table's dead rows.
        """
        params = {"lock_key": self.settings.qualified_text("statistics_table"),
                  "chunk": AGGREGATE_CHUNK}
        query = self.statements.aggregate_logs(locked=True)
        for _ in range(AGGREGATE_MAX_CHUNKS):
            rows = self.driver.fetch(query, params)
            if not rows or rows[0]["flipped"] < AGGREGATE_CHUNK:
                return  # all folded, or another process holds the lock

    def log_statistics(
        self, tail: int | None = None, last: timedelta | None = None, *, limit: int | None = None
    ) -> list[LogStatistics]:
        """Aggregate (without the lock), then return the newest buckets.

        ``tail`` (PgQueuer's name) or ``limit`` caps the rows; ``last`` keeps only
        buckets newer than that age.
        """
        self.driver.execute(self.statements.aggregate_logs(locked=False))
        cap = limit if limit is not None else tail
        params = {"limit": cap, "last": last}
        rows = self.driver.fetch(self.statements.log_statistics, params)
        return [LogStatistics(**row) for row in rows]

    def prune_expired(
        self, table: RetentionTable, keep: timedelta, *, after: int | None, batch_size: int
    ) -> RetentionStep:
        """One step of the workers' pruner: delete up to ``batch_size`` rows of
        ``table`` older than ``keep``, in one statement (one short transaction).

        Only with the retention lock, tried and never waited for (``locked``
        false: another worker prunes; nothing was done). ``log`` rows go only
        once aggregated and once their job has left the queue table; ``results``
        only of jobs no longer queued, and nothing when the results table is
        not installed. ``log`` and ``statistics`` are walked by id: pass the
        previous step's ``last_id`` as ``after`` (``None`` to start).
        See :mod:`pgqueue_sync.worker.retention`.
        """
        params = {"lock_key": self._retention_key, "keep": keep, "batch": batch_size}
        if table == "results":
            return self._prune_results_step(params)
        walked = {"log": "log", "statistics": "stats"}[table]
        params["after"] = BEFORE_ANY_ID if after is None else after
        row = self.driver.fetch(self._ops_statements.retention_batch(walked), params)[0]
        return RetentionStep(locked=row["locked"], deleted=row["deleted"],
                             last_id=row["last_id"], done=row["done"])

    def _prune_results_step(self, params: dict[str, Any]) -> RetentionStep:
        query, check = results_sql.exists(self.settings)
        if not self.driver.fetch(query, check)[0]["present"]:
            return RetentionStep(locked=True, deleted=0, last_id=None, done=True)
        params["age"] = params.pop("keep")
        row = self.driver.fetch(self._prune_results_query, params)[0]
        deleted = int(row["count"])
        return RetentionStep(locked=bool(row["locked"]), deleted=deleted, last_id=None,
                             done=deleted < params["batch"])

    @functools.cached_property
    def _ops_statements(self) -> OpsStatements:
        return OpsStatements(self.settings)

    @functools.cached_property
    def _retention_key(self) -> str:
        return retention_lock_key(self.settings.qualified_text("queue_table_log"))

    @functools.cached_property
    def _prune_results_query(self) -> sql.SQL:
        composed = results_sql.prune_batch(self.settings, gate=RETENTION_GATE)
        return sql.SQL(composed.as_string())
