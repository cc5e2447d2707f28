"""Looking at the queue: what is queued, what the log says, what failed and why."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Literal

from ..errors import ConfigurationError
from ..models import Job, Log, QueueStatistics
from ..options import HEARTBEAT_TIMEOUT
from ..types import JOB_STATUS, JobId
from .base import QueriesBase
from .models import EntrypointExecutionParameter, ErrorRecord, PollState
from .values import error_record, int_ids, stale_timeouts


class InspectionQueries(QueriesBase):
    """Read-only looks at the queue and its log."""

    def queue_size(self) -> list[QueueStatistics]:
        """Counts of rows in the queue table by entrypoint, priority and status."""
        rows = self.driver.fetch(self.statements.queue_size)
        return [QueueStatistics(**row) for row in rows]

    def queue_log(self) -> list[Log]:
        """Every log row, oldest first (use with care on a large log)."""
        return [Log.from_row(row) for row in self.driver.fetch(self.statements.queue_log)]

    def job_status(self, ids: Iterable[int]) -> list[tuple[JobId, JOB_STATUS]]:
        """The latest logged status of each job that has one, in one query.

        A one-shot look; to block until jobs are final, use
        :class:`~pgqueue_sync.completion.CompletionWatcher`.
        """
        rows = self.driver.fetch(self.statements.job_status, {"ids": int_ids(ids)})
        return [(JobId(r["job_id"]), r["status"]) for r in rows]

    def queued_work(self, entrypoints: Iterable[str]) -> int:
        """Queued jobs of these entrypoints, deferred ones included."""
        rows = self.driver.fetch(self.statements.queued_work, {"entrypoints": list(entrypoints)})
        return int(rows[0]["count"])

    def eligible_queued_work(self, entrypoints: Iterable[str]) -> int:
        """Queued jobs of these entrypoints that could run now."""
        params = {"entrypoints": list(entrypoints)}
        return int(self.driver.fetch(self.statements.eligible_queued_work, params)[0]["count"])

    def poll_state(
        self,
        entrypoints: Iterable[str] | Mapping[str, EntrypointExecutionParameter | int],
        heartbeat_timeout: timedelta = HEARTBEAT_TIMEOUT,
    ) -> PollState:
        """Eligible work now? Delay to the next deferred job? Anything queued at all?
        When does the next picked job go stale? (Per-entrypoint stale timeouts
        come from :class:`EntrypointExecutionParameter` values, else
        ``heartbeat_timeout``.)"""
        names, stale = stale_timeouts(entrypoints)
        params = {
            "entrypoints": names,
            "stale_after": stale,
            "heartbeat_timeout": heartbeat_timeout,
        }
        row = self.driver.fetch(self.statements.poll_state, params)[0]
        return PollState(eligible=row["eligible"], eta=row["eta"], queued=row["queued"],
                         stale_eta=row["stale_eta"])

    def next_deferred_eta(self, entrypoints: Iterable[str]) -> timedelta | None:
        """Time until the soonest deferred job becomes eligible, or ``None``."""
        params = {"entrypoints": list(entrypoints)}
        eta: timedelta | None = self.driver.fetch(self.statements.next_deferred_eta, params)[0][
            "eta"
        ]
        return eta

    def list_failed_jobs(
        self, limit: int = 100, order: Literal["ASC", "DESC"] = "DESC"
    ) -> list[Job]:
        """Held jobs, newest first by default."""
        if order not in ("ASC", "DESC"):
            raise ConfigurationError(f"order must be 'ASC' or 'DESC', got {order!r}")
        rows = self.driver.fetch(self.statements.list_failed_jobs(order), {"limit": limit})
        return [Job.from_row(row) for row in rows]

    def last_errors(self, ids: Iterable[int]) -> dict[JobId, ErrorRecord]:
        """The newest logged failure of each job: from its latest log row that carries
        a traceback record (a hold, an exception, a retry), in one query.

        Jobs without such a row are left out. Only rows logged since the job's
        row was created count, so an id reused after a reinstall does not
        inherit an older job's error; a job no longer in the queue has none.
        """
        id_list = sorted(set(int_ids(ids)))
        if not id_list:
            return {}
        rows = self.driver.fetch(self.statements.last_errors, {"ids": id_list})
        found = (error_record(r) for r in rows)
        return {e.job_id: e for e in found if e is not None}
