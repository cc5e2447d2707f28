"""Recording what became of a job: its outcome (success, failure, retry, cancel) with
its log record and stored result, and the hand-back of jobs a stopping worker
did not finish.

Whatever a handler did, its job gets exactly one outcome: :meth:`Recorder.finish`
runs in ``finally`` and every ``BaseException`` is that job's failure. The
outcome is buffered (:class:`~.buffers.CompletionBuffer`) and written with the
next claim or by the flusher; the job keeps its heartbeat until it is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import PgqException
from ..models import Job, TracebackRecord, failure_record
from ..results import StoredResult, encode_result
from ..types import JOB_STATUS, JobId, QueueManagerId
from .buffers import CompletionBuffer, Finished
from .cancellation import Context, JobCancelled
from .capacity import Capacity
from .executors import retry_request
from .held import HeldJobs
from .registry import Registration
from .state import Progress, RunControl, wake_up

if TYPE_CHECKING:
    from ..queries import Queries

logger = logging.getLogger(__name__)


class Recorder:
    """Records the outcomes of one run's jobs; owns the buffer that writes them.

    ``after_job()`` runs after each job ends, before its slot is freed (the
    worker's ``after_job`` hook). ``store_results`` is the worker's default for
    entrypoints that do not say whether they store results.
    """

    def __init__(
        self,
        queries: Queries,
        *,
        owner: QueueManagerId,
        held: HeldJobs,
        control: RunControl,
        capacity: Capacity,
        progress: Progress,
        store_results: bool,
        max_batch: int,
        after_job: Callable[[], None],
    ) -> None:
        self._owner = owner
        self._held = held
        self._wake = control.wake
        self._lane_wake = control.lane_wake
        self._capacity = capacity
        self._progress = progress
        self._store_results = store_results
        self._after_job = after_job
        # Outcomes normally ride along with the next claim; the flusher writes them
        # on its ~100 ms timer when no claim comes, or once a few batches pile up.
        self.buffer = CompletionBuffer(
            queries, owner=owner, current=held.current_claim, max_size=max_batch,
            on_written=self._written,
        )

    def start(self) -> None:
        """Start the flusher thread."""
        self.buffer.start()

    def stop(self) -> bool:
        """Stop the flusher, writing what is left; True if nothing is lost."""
        return self.buffer.stop()

    def finish(
        self,
        job: Job,
        context: Context,
        reg: Registration,
        error: BaseException | None,
        *,
        cancelled: bool,
        seconds: float | None,
        value: Any = None,
    ) -> None:
        """The job's handler ended (``seconds``: how long it ran; None if it did not
        run): buffer its outcome and free its slot."""
        try:
            # abandoned only grows, at shutdown; a membership test needs no lock.
            if job.id in self._held.abandoned:
                logger.warning("job %d finished after it was handed back to the queue", job.id)
            else:
                # Buffer the outcome before the job stops counting as running, so
                # drain mode never sees "nothing running, nothing pending" in between.
                self._record(job, context, reg, error, cancelled, value)
        finally:
            self._after_job()  # before the freed slot lets another claim in
            # The job keeps its heartbeat (held.claimed) until _written.
            self._held.release(job.id)
            self._capacity.finished(seconds)
            wake_up(self._wake)
            wake_up(self._lane_wake)

    def _record(
        self,
        job: Job,
        context: Context,
        reg: Registration,
        error: BaseException | None,
        cancelled: bool,
        value: Any = None,
    ) -> None:
        try:
            finished = self._outcome(job, context, reg, error, cancelled, value)
        except Exception as exc:  # e.g. a result that cannot be encoded
            logger.error("job %d: could not build its outcome (%s); recording a failure",
                         job.id, exc)
            finished = Finished(job, _failure_status(reg), self._traceback(job, exc))
        self.buffer.add(finished)

    def _outcome(
        self,
        job: Job,
        context: Context,
        reg: Registration,
        error: BaseException | None,
        cancelled: bool,
        value: Any,
    ) -> Finished:
        # Results (opt-in) ride in the same buffered write as the outcome; a
        # failure's result row takes its error from the traceback record.
        store = reg.stores(self._store_results)
        if cancelled or isinstance(error, JobCancelled) or (
            error is None and context.cancellation.cancelled
        ):
            return Finished(job, "canceled", None, StoredResult(job) if store else None)
        if error is None:
            return Finished(job, "successful", None, encode_result(job, value) if store else None)
        retry = retry_request(error)
        if retry is not None:
            record = self._traceback(job, error, attempt=job.attempts,
                                     retry_delay=str(retry.delay), reason=retry.reason)
            return Finished(job, "queued", record, delay=retry.delay)
        logger.error("job %d (%r) failed", job.id, job.entrypoint, exc_info=error)
        stored = StoredResult(job) if store else None
        return Finished(job, _failure_status(reg), self._traceback(job, error), stored)

    def _traceback(self, job: Job, error: BaseException, **extra: Any) -> TracebackRecord:
        return failure_record(job, error, self._owner, **extra)

    def _written(self, jobs: list[Job]) -> None:
        self._held.written(jobs)
        self._progress.jobs_logged += len(jobs)
        # A written outcome may free a fleet-wide seat: claim again.
        self._wake.set()


def _failure_status(reg: Registration) -> JOB_STATUS:
    return "failed" if reg.on_failure == "hold" else "exception"


class HandBacks:
    """Returns this worker's picked jobs to the queue, logging why."""

    def __init__(self, queries: Queries, held: HeldJobs, owner: QueueManagerId) -> None:
        self._queries = queries
        self._held = held
        self._owner = owner

    def release_unfinished(self) -> None:
        """At shutdown: cancel the jobs still running and hand them back, with those
        claimed but never started."""
        running, unstarted = self._held.take_unfinished()
        for context in running.values():
            context.cancellation.cancel()
        self.hand_back(dict.fromkeys([*running, *unstarted]), "shutdown")

    def hand_back(self, jobs: dict[JobId, None], reason: str) -> None:
        """Return this worker's picked jobs to the queue now, logging why."""
        if not jobs:
            return
        error = PgqException("the worker shut down before the job finished")
        records = {
            job_id: TracebackRecord.from_exception(
                error, job_id=job_id,
                additional_context={"queue_manager_id": str(self._owner), "reason": reason},
            )
            for job_id in jobs
        }
        try:
            released = self._queries.release_jobs(records, self._owner)
        except PgqException as exc:
            logger.error("could not hand %d running jobs back (%s); they will be re-picked "
                         "once their heartbeat is stale", len(jobs), exc)
            return
        self._held.forget(jobs)
        logger.warning("handed %d unfinished jobs back to the queue: %s",
                       len(released), sorted(released))
