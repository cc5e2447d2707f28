"""Test helpers for Django projects: capture jobs, run them eagerly, or drain the queue in-test.

Three ways to test code that enqueues (``enqueue()`` and Django Tasks' ``.enqueue()``):

* :func:`capture_jobs` records every enqueue in memory and writes nothing::

      with capture_jobs() as jobs:
          client.post("/checkout/")
      jobs.assert_enqueued("send_invoice", count=1)

* :func:`eager_jobs` runs each job's declared handler at enqueue (or at
  commit) in the calling thread, like Django's ``ImmediateBackend``.
* :func:`drain` claims and runs the jobs really written to the queue, on the
  test's own Django connection, so it works inside ``TestCase`` /
  ``@pytest.mark.django_db``, where other connections (a real worker) see
  nothing::

      client.post("/checkout/")
      report = drain()
      assert report.counts == {"successful": 1}

``PGQUEUE_SYNC["TEST_MODE"]`` (``"capture"``, ``"eager"``,
``"eager_on_commit"``) turns capture or eager mode on for the whole process
(:func:`settings_interceptor`). The pytest plugin (:mod:`.pytest_plugin`)
offers all of this as fixtures.

Captured and eager jobs get **fake ids**: negative numbers from a counter of
this process (``-1``, ``-2``, ...), never the id of a row. A Django Task
enqueued under capture or eager mode therefore has no stored result:
``result.refresh()`` raises ``TaskResultDoesNotExist``; use :func:`drain`
to test results.

Handlers are found as the worker finds them: every app's ``tasks`` module
(``PGQUEUE_SYNC["AUTODISCOVER"]``) and ``TASK_MODULES`` are imported, then
the ``@entrypoint`` declarations and the Django Tasks queues of
``PgQueueSyncBackend`` are registered. Unlike the worker, these helpers never
call ``close_old_connections()`` around a job: that would close the test's
connection inside its transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar, overload

from psycopg import pq, sql

from ...applications import PgQueuer
from ...cancellation import CancellationToken, Context, JobCancelled
from ...errors import ConfigurationError, RetryRequested
from ...executors import retry_request
from ...models import Job, TracebackRecord, utc_now
from ...options import BATCH_SIZE, HEARTBEAT_TIMEOUT
from ...queries import EntrypointExecutionParameter, ExecuteAfter, Queries
from ...results import StoredResult, encode_result
from ...types import JOB_STATUS, JobId, QueueEntrypoint, QueueManagerId
from . import registry
from .conf import TEST_MODES, get_settings
from .errors import DjangoConfigurationError
from .producer import EnqueueRequest, add_interceptor, get_queries, remove_interceptor
from .task_store import RETURN_KEY, TASK_ENTRYPOINT_PREFIX, TaskRecord

logger = logging.getLogger(__name__)

__all__ = [
    "CaptureInterceptor",
    "CapturedJob",
    "CapturedJobs",
    "DrainError",
    "DrainReport",
    "DrainedJob",
    "EagerInterceptor",
    "EagerJobs",
    "EagerRun",
    "UnknownEntrypointError",
    "capture_jobs",
    "drain",
    "eager_jobs",
    "reset_settings_modes",
    "settings_captured_jobs",
    "settings_interceptor",
]

#: Safety stop of :func:`drain` without ``max_jobs``: a job that retries with
#: no delay forever would otherwise never let it return.
MAX_DRAIN_RUNS = 10_000

_T = TypeVar("_T")
_ANY: Any = object()  # "payload not given" (None is a payload)

_fake_ids = itertools.count(-1, -1)
_fake_ids_lock = threading.Lock()


class UnknownEntrypointError(ConfigurationError):
    """A job names an entrypoint that has no declared handler; the message lists those that do."""

    def __init__(self, entrypoint: str, declared: Sequence[str]) -> None:
        self.entrypoint = entrypoint
        self.declared = list(declared)
        names = ", ".join(map(repr, declared)) or "none"
        super().__init__(
            f"no handler is declared for entrypoint {entrypoint!r} (declared: {names}); "
            f"declare it with @entrypoint({entrypoint!r}) in an app's tasks module "
            "or a PGQUEUE_SYNC['TASK_MODULES'] module"
        )


def _fake_id() -> JobId:
    with _fake_ids_lock:
        return JobId(next(_fake_ids))


class _Recorded(Sequence[_T]):
    """A thread-safe list that callers read as snapshots (indexing, iteration, ``len``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[_T] = []

    def add(self, items: Iterable[_T]) -> None:
        """Append items (the interceptors call this)."""
        with self._lock:
            self._items.extend(items)

    def clear(self) -> None:
        """Forget everything recorded."""
        with self._lock:
            self._items.clear()

    def snapshot(self) -> list[_T]:
        """A copy of what was recorded, in order."""
        with self._lock:
            return list(self._items)

    @overload
    def __getitem__(self, index: int) -> _T: ...

    @overload
    def __getitem__(self, index: slice) -> list[_T]: ...

    def __getitem__(self, index: int | slice) -> _T | list[_T]:
        return self.snapshot()[index]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.snapshot()!r})"


# -- capture ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CapturedJob:
    """One job that an enqueue asked for while capturing (``id`` is a fake, negative id)."""

    id: JobId
    entrypoint: str
    payload: bytes | None
    priority: int
    execute_after: ExecuteAfter
    dedupe_key: str | None
    headers: Mapping[str, Any] | None
    using: str

    @property
    def task_record(self) -> TaskRecord | None:
        """For a Django Task job: its record (task path, args, kwargs, ...); else ``None``."""
        if not self.entrypoint.startswith(TASK_ENTRYPOINT_PREFIX):
            return None
        try:
            return TaskRecord.from_payload(self.payload)
        except ValueError:
            return None


class CapturedJobs(_Recorded[CapturedJob]):
    """The jobs captured so far, in enqueue order; thread-safe (reads are snapshots)."""

    @property
    def entrypoints(self) -> list[str]:
        """The entrypoint of each captured job, in order."""
        return [job.entrypoint for job in self.snapshot()]

    def for_entrypoint(self, entrypoint: str) -> list[CapturedJob]:
        """The captured jobs of ``entrypoint``."""
        return [job for job in self.snapshot() if job.entrypoint == entrypoint]

    def for_task(self, task: Any) -> list[CapturedJob]:
        """The captured jobs of a Django ``Task`` (matched by its module path)."""
        path = task.module_path
        return [job for job in self.snapshot()
                if job.task_record is not None and job.task_record.task_path == path]

    def assert_enqueued(
        self, entrypoint: str, payload: bytes | None = _ANY, count: int | None = None
    ) -> list[CapturedJob]:
        """Assert jobs of ``entrypoint`` (with ``payload``, if given) were captured; return them.

        ``count`` is the exact number expected (``None``: at least one).
        Raises ``AssertionError`` listing everything captured.
        """
        matching = [job for job in self.for_entrypoint(entrypoint)
                    if payload is _ANY or job.payload == payload]
        if (len(matching) == count) if count is not None else bool(matching):
            return matching
        wanted = f"{'at least 1' if count is None else count} job(s) of {entrypoint!r}"
        if payload is not _ANY:
            wanted += f" with payload {payload!r}"
        raise AssertionError(
            f"expected {wanted}, found {len(matching)}; captured: {self._describe()}"
        )

    def _describe(self) -> str:
        jobs = self.snapshot()
        if not jobs:
            return "nothing"
        return "; ".join(f"{job.entrypoint!r} payload={job.payload!r}" for job in jobs)


class CaptureInterceptor:
    """Answers enqueues with fake ids and records them in :attr:`jobs`; writes nothing.

    Dedupe keys are recorded, not enforced (no ``DuplicateJobError``).
    """

    def __init__(self, jobs: CapturedJobs | None = None) -> None:
        self.jobs = jobs if jobs is not None else CapturedJobs()

    def __call__(self, request: EnqueueRequest) -> list[JobId | None]:
        captured = [
            CapturedJob(
                id=_fake_id(), entrypoint=request.entrypoints[i], payload=request.payloads[i],
                priority=request.priorities[i], execute_after=request.execute_after[i],
                dedupe_key=request.dedupe_keys[i], headers=request.headers[i],
                using=request.using,
            )
            for i in range(len(request.entrypoints))
        ]
        self.jobs.add(captured)
        return [job.id for job in captured]


@contextlib.contextmanager
def capture_jobs() -> Iterator[CapturedJobs]:
    """Capture every enqueue in this process (any thread) while the block runs.

    Nothing is written to the database. Capture blocks nest: the innermost
    one records. Yields the :class:`CapturedJobs`, still readable afterwards.
    """
    interceptor = CaptureInterceptor()
    add_interceptor(interceptor)
    try:
        yield interceptor.jobs
    finally:
        remove_interceptor(interceptor)


# -- eager --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EagerRun:
    """One job run by eager mode: its synthetic job, what it returned, or how it failed.

    ``return_value`` is the handler's return value (for a Django Task, the
    task's JSON-normalised return value).
    """

    job: Job
    return_value: Any = None
    error: BaseException | None = None


class EagerJobs(_Recorded[EagerRun]):
    """The runs of eager mode so far, in order; thread-safe (reads are snapshots)."""

    @property
    def entrypoints(self) -> list[str]:
        """The entrypoint of each run, in order."""
        return [run.job.entrypoint for run in self.snapshot()]

    @property
    def errors(self) -> list[BaseException]:
        """The exceptions of the runs that failed."""
        return [run.error for run in self.snapshot() if run.error is not None]


class EagerInterceptor:
    """Runs each enqueued job's handler in the calling thread; records runs in :attr:`runs`.

    ``on_commit=True`` defers each run with ``transaction.on_commit`` on the
    request's alias (after the outermost ``atomic()`` commits; at once in
    autocommit; never after a rollback). ``propagate=True`` lets a handler's
    exception out of the ``enqueue()`` call (or, with ``on_commit``, out of
    the commit / ``captureOnCommitCallbacks``); ``False`` logs and records it.
    Each job runs **once**: a retry (``RetryRequested``, or a Django Task
    failing with attempts left) counts as a failure, and what propagates is
    the exception that caused it (the ``RetryRequested`` itself when it has
    no cause). Nothing is written to the queue's tables; the handler's own
    queries join the caller's transaction.
    """

    def __init__(
        self, *, on_commit: bool = False, propagate: bool = True,
        resources: MutableMapping[str, Any] | None = None, runs: EagerJobs | None = None,
    ) -> None:
        self.on_commit = on_commit
        self.propagate = propagate
        self.resources: MutableMapping[str, Any] = {} if resources is None else resources
        self.runs = runs if runs is not None else EagerJobs()
        self.worker_id = QueueManagerId(uuid.uuid4())

    def __call__(self, request: EnqueueRequest) -> list[JobId | None]:
        handlers = _Handlers(request.using, self.resources)
        jobs = [_synthetic_job(request, i, self.worker_id) for i in range(len(request.entrypoints))]
        for job in jobs:  # fail at enqueue, not later at commit
            handlers.require(job.entrypoint)
        if self.on_commit:
            from django.db import transaction

            for job in jobs:
                transaction.on_commit(functools.partial(self._run, handlers, job),
                                      using=request.using)
        else:
            for job in jobs:
                self._run(handlers, job)
        return [job.id for job in jobs]

    def _run(self, handlers: _Handlers, job: Job) -> None:
        value, error = _invoke(handlers, job)
        self.runs.add([EagerRun(job, handlers.return_value(job, value), error)])
        if error is None:
            return
        if not self.propagate:
            logger.error("eager job %d (%r) failed", job.id, job.entrypoint, exc_info=error)
            return
        cause = error.__cause__ if isinstance(error, RetryRequested) else None
        # Raised outside the except block that caught it: no extra chaining.
        raise cause or error


@contextlib.contextmanager
def eager_jobs(
    on_commit: bool = False, propagate: bool = True,
    resources: MutableMapping[str, Any] | None = None,
) -> Iterator[EagerJobs]:
    """Run every job enqueued in this process synchronously while the block runs.

    Each job's declared handler (or Django Task) runs in the thread that
    enqueues, with a synthetic :class:`~pgqueue_sync.Job` (fake negative id,
    ``attempts=0``) and a :class:`~pgqueue_sync.Context` over ``resources``.
    See :class:`EagerInterceptor` for ``on_commit`` and ``propagate``. An
    entrypoint without a handler raises :class:`UnknownEntrypointError` from
    the enqueue. Yields the :class:`EagerJobs` record of runs.
    """
    interceptor = EagerInterceptor(on_commit=on_commit, propagate=propagate, resources=resources)
    add_interceptor(interceptor)
    try:
        yield interceptor.runs
    finally:
        remove_interceptor(interceptor)


def _synthetic_job(request: EnqueueRequest, i: int, worker_id: QueueManagerId) -> Job:
    now = utc_now()
    after = request.execute_after[i]
    if isinstance(after, timedelta):
        due = now + after
    elif isinstance(after, datetime):
        due = after
    else:
        due = now
    headers = request.headers[i]
    return Job(
        id=_fake_id(), priority=request.priorities[i], created=now, updated=now, heartbeat=now,
        execute_after=due, status="picked", entrypoint=QueueEntrypoint(request.entrypoints[i]),
        payload=request.payloads[i], attempts=0, queue_manager_id=worker_id,
        headers=None if headers is None else dict(headers),
    )


# -- TEST_MODE setting ---------------------------------------------------------------------

_settings_lock = threading.Lock()
_settings_modes: dict[str, CaptureInterceptor | EagerInterceptor] = {}


def settings_interceptor(mode: str) -> CaptureInterceptor | EagerInterceptor:
    """The interceptor behind ``PGQUEUE_SYNC["TEST_MODE"] = mode``: one per mode and process.

    ``"capture"``: :class:`CaptureInterceptor` (read it with
    :func:`settings_captured_jobs`); ``"eager"`` / ``"eager_on_commit"``:
    :class:`EagerInterceptor` with ``propagate=True``. Interceptors installed
    by :func:`capture_jobs` / :func:`eager_jobs` take precedence. Raises
    :class:`DjangoConfigurationError` for another mode.
    """
    with _settings_lock:
        interceptor = _settings_modes.get(mode)
        if interceptor is None:
            interceptor = _settings_modes[mode] = _for_mode(mode)
        return interceptor


def settings_captured_jobs() -> CapturedJobs:
    """What ``TEST_MODE = "capture"`` has captured in this process (until reset)."""
    interceptor = settings_interceptor("capture")
    assert isinstance(interceptor, CaptureInterceptor)
    return interceptor.jobs


def reset_settings_modes() -> None:
    """Clear what the ``TEST_MODE`` interceptors recorded (the pytest plugin does, per test)."""
    with _settings_lock:
        modes = list(_settings_modes.values())
    for interceptor in modes:
        if isinstance(interceptor, CaptureInterceptor):
            interceptor.jobs.clear()
        else:
            interceptor.runs.clear()


def _for_mode(mode: str) -> CaptureInterceptor | EagerInterceptor:
    if mode == "capture":
        return CaptureInterceptor()
    if mode in ("eager", "eager_on_commit"):
        return EagerInterceptor(on_commit=mode == "eager_on_commit")
    raise DjangoConfigurationError(
        f"unknown PGQUEUE_SYNC['TEST_MODE'] {mode!r}; use one of {', '.join(TEST_MODES)}"
    )


# -- handlers -----------------------------------------------------------------------------


class _Handlers:
    """The declared entrypoints and Django Tasks queues, registered as the worker registers them.

    A throw-away :class:`PgQueuer` serves as the registry (option checks and
    executors as in the worker); it never runs.
    """

    def __init__(self, using: str | None, resources: MutableMapping[str, Any] | None) -> None:
        _import_declarations()
        conf = get_settings()
        self.alias = using or conf.database_alias
        self.queries: Queries = get_queries(self.alias)
        self.pgq = PgQueuer(self.queries.driver, queries=self.queries, resources=resources,
                            store_results=conf.store_results)
        for name, declared in registry.entrypoints().items():
            self.pgq.entrypoint(name, **declared.options)(declared.func)
        self.tasks = frozenset(_register_task_queues(self.pgq))
        self._registry = self.pgq.qm.entrypoint_registry

    @property
    def names(self) -> list[str]:
        return sorted(self._registry)

    def require(self, name: str) -> None:
        if name not in self._registry:
            raise UnknownEntrypointError(name, self.names)

    def claim_parameters(self, names: Iterable[str]) -> dict[str, EntrypointExecutionParameter]:
        return {name: self._registry[name].claim for name in names}

    def run(self, job: Job) -> Any:
        """Run one job in this thread; raises what the handler raises."""
        if job.entrypoint in self.tasks:
            from .task_runner import run_task_job

            # Not DjangoTaskExecutor.execute: its close_old_connections() would
            # close the test's connection inside its transaction.
            return run_task_job(job)
        executor = self._registry[job.entrypoint].executor
        context = Context(CancellationToken(), self.pgq.resources)
        value = executor.execute(job, context)
        return _await(value) if executor.is_async else value

    def return_value(self, job: Job, value: Any) -> Any:
        if job.entrypoint in self.tasks and isinstance(value, Mapping):
            return value.get(RETURN_KEY)
        return value

    def stores_result(self, name: str) -> bool:
        reg = self._registry[name]
        return self.pgq.qm.store_results if reg.store_result is None else reg.store_result

    def holds_failures(self, name: str) -> bool:
        return self._registry[name].on_failure == "hold"


def _register_task_queues(pgq: PgQueuer) -> list[str]:
    try:
        from .backend import register_task_entrypoints

        return register_task_entrypoints(pgq)
    except DjangoConfigurationError:  # no Tasks API, or no TASKS entry uses our backend
        return []


_imported_lock = threading.Lock()
_imported: set[tuple[str | None, tuple[str, ...]]] = set()


def _import_declarations() -> None:
    """Import the modules the worker imports (once per configuration and process)."""
    conf = get_settings()
    key = (conf.autodiscover, conf.task_modules)
    with _imported_lock:
        if key in _imported:
            return
    from .worker import import_task_modules

    import_task_modules(conf)
    with _imported_lock:
        _imported.add(key)


def _invoke(handlers: _Handlers, job: Job) -> tuple[Any, Exception | None]:
    try:
        return handlers.run(job), None
    except Exception as exc:  # the handler's failure is the job's outcome
        return None, exc


def _await(coroutine: Any) -> Any:
    from asgiref.sync import async_to_sync

    async def wait() -> Any:
        return await coroutine

    # async_to_sync runs thread-sensitive sync_to_async code (Django's async
    # ORM) back in this thread, on the test's connection.
    return async_to_sync(wait)()


# -- drain --------------------------------------------------------------------------------


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
    handlers = _Handlers(using, resources)
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
    def __init__(self, handlers: _Handlers, names: list[str], batch_size: int) -> None:
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
            return _invoke(self.handlers, job)
        from django.db import transaction

        outcome: tuple[Any, Exception | None] = (None, None)
        try:
            with transaction.atomic(using=self.alias):
                outcome = _invoke(self.handlers, job)
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
        # As the worker writes it: the class path (of the cause, for a retry)
        # lets the Django Tasks backend name the exception.
        cause = error.__cause__ if isinstance(error, RetryRequested) else None
        kind = type(cause or error)
        context = {
            "entrypoint": job.entrypoint,
            "queue_manager_id": str(self.worker_id),
            "exception_class_path": f"{kind.__module__}.{kind.__qualname__}",
        }
        return TracebackRecord.from_exception(error, job_id=job.id,
                                              additional_context={**context, **extra})

    def _in_atomic(self) -> bool:
        from django.db import connections

        return bool(connections[self.alias].in_atomic_block)

    def _broken(self) -> bool:
        from django.db import connections

        wrapper = connections[self.alias]
        raw = wrapper.connection
        failed = raw is not None and raw.info.transaction_status == pq.TransactionStatus.INERROR
        return bool(wrapper.needs_rollback or failed)
