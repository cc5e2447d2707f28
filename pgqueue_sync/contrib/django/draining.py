"""``drain()``: run the queued jobs on the test's own Django connection (see :mod:`.testing`)."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterable, MutableMapping
from typing import Any, NamedTuple

from psycopg import pq, sql

from ...errors import ConfigurationError
from ...models import Job, TracebackRecord, failure_record
from ...options import BATCH_SIZE, HEARTBEAT_TIMEOUT
from ...results import StoredResult, encode_result
from ...types import JOB_STATUS, JobId
from ...worker.cancellation import JobCancelled
from ...worker.executors import retry_request
from ._handlers import Handlers, invoke

logger = logging.getLogger(__name__)

#: Safety stop of :func:`drain` without ``max_jobs``: a job that retries with
#: no delay forever would otherwise never let it return.
MAX_DRAIN_RUNS = 10_000



class DrainedJob(NamedTuple):
    """One run of :func:`drain`: the job, its entrypoint and how it ended.

    ``status``: ``successful``, ``exception``, ``failed`` (held by
    ``on_failure="hold"``), ``canceled`` or ``retried`` (queued again).
    """

    id: JobId
    entrypoint: str
    status: str


class DrainError(NamedTuple):
    """A run of :func:`drain` that raised: the job, its status and the exception."""

    id: JobId
    entrypoint: str
    status: str
    error: BaseException


@dataclasses.dataclass
class DrainReport:
    """What :func:`drain` did, run by run (a retried job appears once per run)."""

    jobs: list[DrainedJob] = dataclasses.field(default_factory=list)
    errors: list[DrainError] = dataclasses.field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Runs per status, e.g. ``{"successful": 2, "exception": 1}``."""
        return dict(Counter(job.status for job in self.jobs))

    @property
    def total(self) -> int:
        """Runs in all."""
        return len(self.jobs)

    def raise_errors(self) -> None:
        """Re-raise the first recorded exception, if any."""
        if self.errors:
            raise self.errors[0].error


def drain(
    *,
    using: str | None = None,
    entrypoints: Iterable[str] | None = None,
    max_jobs: int | None = None,
    batch_size: int = BATCH_SIZE,
    resources: MutableMapping[str, Any] | None = None,
) -> DrainReport:
    """Claim and run queued jobs on this thread's Django connection until none is due.

    Blocks; runs each handler (or Django Task) in the calling thread, with the
    claim (``Queries.dequeue``), the outcome (``log_jobs``, results for Django
    Tasks and ``store_result`` entrypoints) and retries (``retry_job``)
    written as a worker writes them, but inside the caller's transaction: it
    never commits or rolls back, so under ``TestCase`` /
    ``@pytest.mark.django_db`` it sees the test's uncommitted jobs and
    everything is rolled back with the test. Afterwards
    ``TaskResult.refresh()`` shows the outcome.

    ``entrypoints`` limits the claim (default: every declared entrypoint and
    Django Tasks queue); an undeclared name raises
    :class:`UnknownEntrypointError`. ``max_jobs`` bounds the runs (a retry
    with no delay runs again in the same drain and counts again); without it
    the drain stops at :data:`MAX_DRAIN_RUNS`. A handler's exception is
    recorded in the report, not raised (see :meth:`DrainReport.raise_errors`).

    Inside a transaction ``NOW()`` is frozen at its start, so jobs due "now"
    (no delay, or a zero-delay retry) are made due by moving their
    ``execute_after`` back one microsecond; jobs with a later
    ``execute_after`` never become due within the test. Each handler runs in
    a savepoint; if it leaves the transaction broken (a database error), the
    savepoint is rolled back so the outcome can still be recorded, otherwise
    the handler's writes stay, as in production.
    """
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
    if max_jobs is not None and max_jobs < 0:
        raise ConfigurationError(f"max_jobs must be >= 0, got {max_jobs}")
    handlers = Handlers(using, resources)
    names = handlers.names if entrypoints is None else list(entrypoints)
    for name in names:
        handlers.require(name)
    return _Drainer(handlers, names, batch_size).run(max_jobs)


# Only rows due exactly at the frozen NOW() are touched (see drain()).
_MAKE_DUE = """
UPDATE {queue} SET execute_after = NOW() - interval '1 microsecond'
WHERE status = 'queued' AND execute_after = NOW() AND entrypoint = ANY(%(entrypoints)s::text[])
"""


class _RollBack(Exception):  # noqa: N818 - internal control flow, never escapes
    """Leaves the handler's savepoint by rolling it back."""


class _Drainer:
    def __init__(self, handlers: Handlers, names: list[str], batch_size: int) -> None:
        self.handlers = handlers
        self.queries = handlers.queries
        self.alias = handlers.alias
        self.claim = handlers.claim_parameters(names)
        self.batch_size = batch_size
        self.worker_id = handlers.pgq.qm.queue_manager_id
        self.report = DrainReport()
        self._make_due = sql.SQL(_MAKE_DUE).format(
            queue=self.queries.settings.ident("queue_table"))

    def run(self, max_jobs: int | None) -> DrainReport:
        limit = MAX_DRAIN_RUNS if max_jobs is None else max_jobs
        while self.claim and self.report.total < limit:
            jobs = self._dequeue(min(self.batch_size, limit - self.report.total))
            if not jobs:
                return self.report
            for job in jobs:
                self._run(job)
        if max_jobs is None and self.report.total >= limit:
            logger.warning("drain stopped after %d runs; jobs keep retrying without delay?",
                           limit)
        return self.report

    def _dequeue(self, count: int) -> list[Job]:
        if self._in_atomic():
            self.queries.driver.execute(self._make_due, {"entrypoints": list(self.claim)})
        return self.queries.dequeue(count, self.claim, self.worker_id, None, HEARTBEAT_TIMEOUT)

    def _run(self, job: Job) -> None:
        value, error = self._call(job)
        status = self._record(job, value, error)
        self.report.jobs.append(DrainedJob(job.id, job.entrypoint, status))
        if error is not None:
            self.report.errors.append(DrainError(job.id, job.entrypoint, status, error))
            logger.info("drained job %d (%r): %s (%r)", job.id, job.entrypoint, status, error)

    def _call(self, job: Job) -> tuple[Any, Exception | None]:
        if not self._in_atomic():  # autocommit: every statement commits, as in production
            return invoke(self.handlers, job)
        from django.db import transaction

        outcome: tuple[Any, Exception | None] = (None, None)
        try:
            with transaction.atomic(using=self.alias):
                outcome = invoke(self.handlers, job)
                if outcome[1] is not None and self._broken():
                    raise _RollBack
        except _RollBack:
            pass
        return outcome

    def _record(self, job: Job, value: Any, error: Exception | None) -> str:
        store = self.handlers.stores_result(job.entrypoint)
        if error is None:
            results = [encode_result(job, value)] if store else []
            self.queries.log_jobs([(job, "successful", None)], results=results)
            return "successful"
        if isinstance(error, JobCancelled):
            self.queries.log_jobs([(job, "canceled", None)],
                                  results=[StoredResult(job)] if store else [])
            return "canceled"
        retry = retry_request(error)
        if retry is not None:
            record = self._traceback(job, error, attempt=job.attempts,
                                     retry_delay=str(retry.delay), reason=retry.reason)
            self.queries.retry_job(job, retry.delay, record)
            return "retried"
        held = self.handlers.holds_failures(job.entrypoint)
        status: JOB_STATUS = "failed" if held else "exception"
        self.queries.log_jobs([(job, status, self._traceback(job, error))],
                              results=[StoredResult(job)] if store else [])
        return status

    def _traceback(self, job: Job, error: BaseException, **extra: Any) -> TracebackRecord:
        return failure_record(job, error, self.worker_id, **extra)

    def _in_atomic(self) -> bool:
        from django.db import connections

        return bool(connections[self.alias].in_atomic_block)

    def _broken(self) -> bool:
        from django.db import connections

        wrapper = connections[self.alias]
        raw = wrapper.connection
        failed = raw is not None and raw.info.transaction_status == pq.TransactionStatus.INERROR
        return bool(wrapper.needs_rollback or failed)

