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
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

from ...errors import RetryRequested
from ...models import Job, utc_now
from ...queries import ExecuteAfter
from ...types import JobId, QueueEntrypoint, QueueManagerId
from ._handlers import Handlers, UnknownEntrypointError, invoke
from .conf import TEST_MODES
from .draining import DrainedJob, DrainError, DrainReport, drain
from .errors import DjangoConfigurationError
from .producer import EnqueueRequest, add_interceptor, remove_interceptor
from .task_store import TASK_ENTRYPOINT_PREFIX, TaskRecord

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


_T = TypeVar("_T")
_ANY: Any = object()  # "payload not given" (None is a payload)

_fake_ids = itertools.count(-1, -1)
_fake_ids_lock = threading.Lock()



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
        handlers = Handlers(request.using, self.resources)
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

    def _run(self, handlers: Handlers, job: Job) -> None:
        value, error = invoke(handlers, job)
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

