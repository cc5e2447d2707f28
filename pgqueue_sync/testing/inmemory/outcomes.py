"""Recording what became of claimed jobs in memory: outcomes, retries, releases
and requeues, through :func:`write_outcomes` (the completion write other parts share)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from ...errors import ConfigurationError
from ...models import Job, TracebackRecord
from ...queries.models import JobOutcome, JobRetry
from ...queries.values import int_ids, outcome_params
from ...results import StoredResult
from ...types import JOB_STATUS, JobId, QueueManagerId
from .base import InMemoryQueriesBase
from .driver import Statement
from .tables import JobRow, json_copy


class InMemoryOutcomes(InMemoryQueriesBase):
    """Finishing, retrying, releasing and requeueing jobs."""

    def log_jobs(
        self,
        job_status: Iterable[JobOutcome],
        *,
        results: Sequence[StoredResult] = (),
        retries: Sequence[JobRetry] = (),
        queue_manager_id: QueueManagerId | uuid.UUID | None = None,
    ) -> list[JobId]:
        """Delete (or hold ``failed``), retry and log; see :meth:`Queries.log_jobs`.

        Storing ``results`` is not supported here (ConfigurationError).
        """
        no_results(results)
        params = outcome_params(job_status, retries)
        if not params:
            return []
        with self._statement() as s:
            return write_outcomes(s, params, queue_manager_id)

    def retry_job(
        self,
        job: Job | JobId | int,
        delay: timedelta,
        traceback_record: TracebackRecord | None = None,
        *,
        queue_manager_id: QueueManagerId | uuid.UUID | None = None,
    ) -> bool:
        """Re-queue one job after ``delay`` with ``attempts + 1``; False if the row is gone."""
        logged = self.log_jobs((), retries=[(job, delay, traceback_record)],
                               queue_manager_id=queue_manager_id)
        return bool(logged)

    def release_jobs(
        self,
        records: Mapping[JobId, TracebackRecord] | Mapping[int, TracebackRecord],
        queue_manager_id: QueueManagerId | uuid.UUID,
    ) -> list[JobId]:
        """Put this worker's picked jobs back to ``queued`` now, ``attempts`` unchanged."""
        if not records:
            return []
        given = [(int(i), json_copy(r.to_json())) for i, r in records.items()]
        released: list[JobId] = []
        with self._statement() as s:
            for job_id, record in given:
                row = s.db.jobs.get(job_id)
                if row is None or row.status != "picked":
                    continue
                if row.queue_manager_id != queue_manager_id:
                    continue
                row.status, row.execute_after, row.updated = "queued", s.now, s.now
                row.queue_manager_id = None
                s.log(row, "queued", record)
                released.append(JobId(job_id))
            if released:
                s.table_changed("update")
        return released

    def requeue_jobs(self, ids: Iterable[int]) -> list[JobId]:
        """Re-queue held (``failed``) jobs with ``attempts`` reset; returns those changed.

        Raises :class:`UniqueViolation` (nothing changed) if a held job's
        ``dedupe_key`` is meanwhile taken by an active job, as the index would.
        """
        wanted = set(int_ids(ids))
        with self._statement() as s:
            held = (s.db.jobs[i] for i in sorted(wanted & s.db.jobs.keys()))
            rows = [r for r in held if r.status == "failed"]
            s.reactivate(rows)
            for row in rows:
                row.status, row.execute_after, row.updated = "queued", s.now, s.now
                row.attempts, row.queue_manager_id = 0, None
                s.log(row, "queued")
            if rows:
                s.table_changed("update")
        return [JobId(r.id) for r in rows]


def write_outcomes(
    s: Statement,
    params: Mapping[str, list[Any]],
    queue_manager_id: QueueManagerId | uuid.UUID | None = None,
) -> list[JobId]:
    """The completion write: delete, hold ``failed`` or retry (``queued``) and log rows
    that still exist (with ``queue_manager_id``: still picked by that worker)."""
    done: dict[int, tuple[JOB_STATUS, Any, timedelta | None, datetime | None]] = {}
    for job_id, status, record, delay, claimed in zip(
        params["ids"], params["statuses"], params["tracebacks"], params["delays"],
        params["claimed"], strict=True,
    ):
        stored = None if record is None else json_copy(record.obj)
        done.setdefault(job_id, (cast("JOB_STATUS", status), stored, delay, claimed))
    removed: list[tuple[JobRow, JOB_STATUS, Any]] = []
    updated: list[tuple[JobRow, JOB_STATUS, Any]] = []
    for job_id, (status, record, delay, claimed) in done.items():
        row = s.db.jobs.get(job_id)
        if row is None or not guard_passes(row, queue_manager_id):
            continue
        if queue_manager_id is not None and claimed is not None and row.updated != claimed:
            continue  # the same worker claimed it anew since
        if status == "queued":
            s.reactivate([row])
            row.status, row.execute_after = "queued", s.now + (delay or timedelta(0))
            row.attempts += 1
            row.updated, row.queue_manager_id = s.now, None
            updated.append((row, status, record))
        elif status == "failed":
            row.status, row.updated, row.queue_manager_id = "failed", s.now, None
            updated.append((row, status, record))
        else:
            del s.db.jobs[job_id]
            removed.append((row, status, record))
    for row, status, record in removed + updated:
        s.log(row, status, record)
    if updated:
        s.table_changed("update")
    s.table_changed("delete")  # the DELETE runs even when only holds (or nothing) match
    return [JobId(row.id) for row, _, _ in removed + updated]


def guard_passes(row: JobRow, queue_manager_id: QueueManagerId | uuid.UUID | None) -> bool:
    """Whether a guarded write may touch ``row``: unguarded, or still picked by that worker."""
    return queue_manager_id is None or (
        row.status == "picked" and row.queue_manager_id == queue_manager_id
    )


def no_results(results: Sequence[StoredResult]) -> None:
    """Refuse results to store: there is no results table in memory."""
    if results:
        raise ConfigurationError(
            "the in-memory adapter cannot store job results; use PostgreSQL for store_results"
        )
