"""Recording what became of claimed jobs: outcomes, retries, releases and requeues.

The outcome write also stores the jobs' results (:mod:`pgqueue_sync.results`)
when a worker keeps them; the helpers below render outcomes and results as the
statements' array parameters, for :mod:`.claiming` too (a claim records the
previous batch's outcomes in the same statement).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from psycopg.types.json import Jsonb

from ..errors import DatabaseError
from ..models import Job, TracebackRecord
from ..results import StoredResult
from ..sql.arrays import int_array, text_array
from ..sql.statements import finish_steps
from ..types import JobId, QueueManagerId
from .base import QueriesBase
from .models import JobOutcome, JobRetry
from .values import int_ids, outcome_params

logger = logging.getLogger(__name__)


class OutcomeQueries(QueriesBase):
    """Finishing, retrying, releasing and requeueing jobs."""

    def log_jobs(
        self,
        job_status: Iterable[JobOutcome],
        *,
        results: Sequence[StoredResult] = (),
        retries: Sequence[JobRetry] = (),
        queue_manager_id: QueueManagerId | uuid.UUID | None = None,
    ) -> list[JobId]:
        """Record outcomes in one statement: delete (or hold as ``failed``) and log.

        Jobs whose row is already gone (e.g. cancelled meanwhile) are skipped
        without a log row. Returns the ids that were logged.

        ``retries`` put jobs back to ``queued`` after their delay with
        ``attempts + 1`` and a ``queued`` log row carrying the record, in the
        same statement. With ``queue_manager_id`` (a worker recording its own
        jobs) only rows still ``picked`` by that worker are touched, so sending
        the same outcomes twice (after a lost reply) changes nothing. Held and
        retried jobs wake idle workers with a ``table_changed_event``.

        ``results`` (:class:`~pgqueue_sync.results.StoredResult`, from a worker
        storing results) go into the opt-in results table in the same
        statement, for the jobs that were logged. Should storing them fail
        (e.g. the table was dropped), the outcomes are recorded without them
        and the loss is logged as an error.
        """
        params = self._finish_params(job_status, retries, queue_manager_id)
        if not params:
            return []
        guarded = queue_manager_id is not None
        steps = outcome_steps(params)
        stored = result_literals(results)
        if not stored:
            rows = self.driver.fetch(self.statements.log_jobs(steps, guarded=guarded), params)
            return [JobId(r["job_id"]) for r in rows]
        try:
            query = self.statements.log_jobs(steps, guarded=guarded, results=True)
            rows = self.driver.fetch(query, {**params, **stored})
        except DatabaseError as exc:
            if not results_failed(exc, stored):
                raise
            log_lost_results(exc, results)
            rows = self.driver.fetch(self.statements.log_jobs(steps, guarded=guarded), params)
        return [JobId(r["job_id"]) for r in rows]

    def _finish_params(
        self,
        job_status: Iterable[JobOutcome],
        retries: Iterable[JobRetry],
        queue_manager_id: QueueManagerId | uuid.UUID | None,
    ) -> dict[str, Any]:
        literals = _outcome_literals(job_status, retries)
        if not literals:
            return {}
        return {
            **literals,
            "steps": literals.pop("steps"),
            "queue_manager_id": queue_manager_id,
            "channel": self.settings.channel,
            "table": self.settings.bare_name("queue_table"),
        }

    def retry_job(
        self,
        job: Job | JobId | int,
        delay: timedelta,
        traceback_record: TracebackRecord | None = None,
        *,
        queue_manager_id: QueueManagerId | uuid.UUID | None = None,
    ) -> bool:
        """Re-queue one job after ``delay`` with ``attempts + 1``; False if the row is gone
        (or, with ``queue_manager_id``, no longer picked by that worker)."""
        logged = self.log_jobs((), retries=[(job, delay, traceback_record)],
                               queue_manager_id=queue_manager_id)
        return bool(logged)

    def release_jobs(
        self,
        records: Mapping[JobId, TracebackRecord] | Mapping[int, TracebackRecord],
        queue_manager_id: QueueManagerId | uuid.UUID,
    ) -> list[JobId]:
        """Put this worker's picked jobs back to ``queued`` now (e.g. at a bounded shutdown).

        ``attempts`` is unchanged; each job gets a ``queued`` log row carrying its
        record, which says why. Jobs no longer picked by this worker are skipped.
        """
        if not records:
            return []
        params = {
            "ids": [int(i) for i in records],
            "tracebacks": [Jsonb(r.to_json()) for r in records.values()],
            "queue_manager_id": queue_manager_id,
        }
        params["channel"] = self.settings.channel
        params["table"] = self.settings.bare_name("queue_table")
        rows = self.driver.fetch(self.statements.release_jobs, params)
        return [JobId(r["job_id"]) for r in rows]

    def requeue_jobs(self, ids: Iterable[int]) -> list[JobId]:
        """Re-queue held (``failed``) jobs with ``attempts`` reset; returns those changed.

        Ids that are not held jobs are ignored.
        """
        params = {
            "ids": int_ids(ids),
            "channel": self.settings.channel,
            "table": self.settings.bare_name("queue_table"),
        }
        rows = self.driver.fetch(self.statements.requeue_jobs, params)
        return [JobId(r["id"]) for r in rows]


def _outcome_literals(
    job_status: Iterable[JobOutcome], retries: Iterable[JobRetry] = ()
) -> dict[str, Any]:
    """Outcomes and retries as the outcome write's array parameters, plus its ``steps``."""
    params = outcome_params(job_status, retries)
    if not params:
        return {}
    statuses = set(params["statuses"])
    return {
        "steps": finish_steps(holds="failed" in statuses, retries="queued" in statuses),
        "ids": int_array(params["ids"]),
        "statuses": text_array(params["statuses"]),
        "tracebacks": text_array(
            None if t is None else json.dumps(t.obj) for t in params["tracebacks"]
        ),
        "delays": text_array(
            None if d is None else f"{d.total_seconds()} seconds" for d in params["delays"]
        ),
        "claimed": text_array(None if c is None else c.isoformat() for c in params["claimed"]),
    }


def outcome_steps(finish_params: Mapping[str, Any]) -> tuple[str, ...]:
    """The outcome steps of prepared finish parameters (``()`` when there are none)."""
    steps: tuple[str, ...] = finish_params.get("steps", ())
    return steps


def result_literals(results: Sequence[StoredResult]) -> dict[str, str]:
    """The results write's array parameters (``{}`` when there is nothing to store)."""
    if not results:
        return {}
    return {
        "result_ids": int_array(r.job.id for r in results),
        "result_values": text_array(r.value for r in results),
        "result_notes": text_array(r.note for r in results),
        "result_created": text_array(r.job.created.isoformat() for r in results),
        "result_attempts": int_array(r.job.attempts for r in results),
        "result_workers": text_array(
            None if r.job.queue_manager_id is None else str(r.job.queue_manager_id)
            for r in results
        ),
    }


def results_failed(exc: DatabaseError, stored: Mapping[str, str]) -> bool:
    """Whether a failed outcome write is worth repeating without its results: a
    missing object (SQLSTATE class 42) or a value the server refused (class 22)."""
    state = exc.sqlstate or ""
    return bool(stored) and state[:2] in ("22", "42")


def log_lost_results(exc: DatabaseError, results: Sequence[StoredResult]) -> None:
    """Say (as an error) that these results were dropped to record their outcomes."""
    logger.error(
        "could not store the results of %d job(s) (%s); recording their outcomes without "
        "them (is the results table installed? 'pgq-sync results install')",
        len(results), exc,
    )
