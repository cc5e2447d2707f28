"""Running one Django Task job in a worker: signals, context, retries, the result.

:class:`DjangoTaskExecutor` is the executor of every ``django_tasks:<queue>``
entrypoint. For each job, in the handler thread, it:

1. rebuilds the ``Task`` and a RUNNING ``TaskResult`` (earlier attempts and
   errors are read back from the database when the job ran before);
2. sends ``task_started``, calls the task (``async def`` tasks through
   ``async_to_sync``, so Django's sync ORM works in signal receivers), passing
   a ``TaskContext`` first when the task ``takes_context``;
3. on success stores the JSON-normalised return value and sends
   ``task_finished``; on failure retries while the record's ``max_attempts``
   allows (the result goes back to READY), else marks it FAILED, sends
   ``task_finished`` and lets the worker log the exception.

Django's stale connections are closed before and after every job
(:func:`~.registry.tidy_connections`).

A first run executes no statement of its own: the outcome, the return value
and the record ride in the worker's batched outcome write (a re-run reads
its history first). What does not change from job to job is resolved once:
the ``Task`` a record names, per task, queue, priority and backend
(:func:`~.backend.load_task`), and the ``TASKS`` backend, per thread as
Django keeps it; both are forgotten when ``TASKS`` changes.
"""

from __future__ import annotations

import functools
import logging
import threading
import traceback
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils import timezone

from ...errors import RetryRequested
from ...models import Job
from ...worker.cancellation import Context
from ...worker.executors import AbstractEntrypointExecutor
from ._compat import (
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultStatus,
    normalize_json,
    task_backends,
    task_finished,
    task_started,
)
from .backend import PgQueueSyncBackend, load_task
from .errors import DjangoConfigurationError
from .registry import tidy_connections
from .task_store import RECORD_KEY, RETURN_KEY, TaskRecord

logger = logging.getLogger(__name__)


def django_task(job: Job) -> None:
    """Placeholder handler of task entrypoints: :class:`DjangoTaskExecutor` runs the job."""
    raise RuntimeError("django task jobs run through DjangoTaskExecutor")


class DjangoTaskExecutor(AbstractEntrypointExecutor):
    """Runs Django-task jobs (sync: one handler thread per job). Thread-safe."""

    @property
    def is_async(self) -> bool:
        """Always False: ``async def`` tasks too run in a handler thread (``async_to_sync``)."""
        return False

    def timed_out(self, job: Job, error: TimeoutError) -> BaseException:
        """A task past its queue's ``QUEUE_TIMEOUT`` fails like one that raised
        ``error``: retried while its ``max_attempts`` allow, after its backoff.
        (Its thread may still run the task, so no ``task_finished`` is sent.)"""
        try:
            record = TaskRecord.from_payload(job.payload)
            backend = _backend_for(job, record)
        except Exception:  # not a task this worker can read: a plain failure
            return error
        runs = job.attempts + 1
        if runs >= record.max_attempts:
            return error
        delay = backend.backend_options.retry_delay_after(runs, record.retry_delay)
        logger.info("task job %d timed out (attempt %d of %d); retrying in %.1fs",
                    job.id, runs, record.max_attempts, delay)
        retry = RetryRequested(delay=delay, reason=f"TimeoutError: {error}")
        retry.__cause__ = error
        return retry

    def execute(self, job: Job, context: Context) -> Any:
        """Run the job's task; returns what the results table keeps (record and value)."""
        tidy_connections()
        try:
            return run_task_job(job)
        finally:
            tidy_connections(after_job=True)


def run_task_job(job: Job) -> dict[str, Any]:
    """Run one task job in this thread; see the module docstring.

    Returns ``{"task_record": ..., "return_value": ...}``. Raises the task's
    exception (or :class:`RetryRequested` for a retry). A payload that is not a
    task record, or a task that cannot be imported, fails the job at once.
    """
    record = TaskRecord.from_payload(job.payload)
    backend = _backend_for(job, record)
    result = _running_result(job, record, backend)
    task = result.task
    task_started.send(sender=type(backend), task_result=result)
    try:
        if task.takes_context:
            raw = task.call(TaskContext(task_result=result), *result.args, **result.kwargs)
        else:
            raw = task.call(*result.args, **result.kwargs)
        value = normalize_json(raw)
    except Exception as exc:
        retry = _failed(job, record, backend, result, exc)
        if retry is None:
            raise
        raise retry from exc
    object.__setattr__(result, "_return_value", value)
    _finish(result, TaskResultStatus.SUCCESSFUL)
    task_finished.send(sender=type(backend), task_result=result)
    return {RECORD_KEY: record.to_json(), RETURN_KEY: value}


def _backend_for(job: Job, record: TaskRecord) -> Any:
    """The ``TASKS`` backend the job was enqueued through; a clear error if this
    worker does not have it (the job fails at once: no retry can add an alias).

    Django keeps one backend instance per alias and thread; so does this
    thread's cache of them, emptied when ``TASKS`` changes (as Django's is).
    """
    cached: tuple[int, dict[str, Any]] | None = getattr(_thread, "backends", None)
    if cached is not None and cached[0] == _generation:
        backend = cached[1].get(record.backend)
        if backend is not None:
            return backend
    else:
        cached = _thread.backends = (_generation, {})
    backend = cached[1][record.backend] = _configured_backend(job, record)
    return backend


def _configured_backend(job: Job, record: TaskRecord) -> Any:
    configured = getattr(settings, "TASKS", None) or {}
    if record.backend not in configured:
        known = ", ".join(sorted(configured)) or "none"
        raise DjangoConfigurationError(
            f"task job {job.id} was enqueued through TASKS alias {record.backend!r}, which "
            f"this worker's settings do not define (they have: {known}); "
            "run the worker with the settings of the project that enqueued it"
        )
    backend = task_backends[record.backend]
    if not isinstance(backend, PgQueueSyncBackend):
        raise DjangoConfigurationError(
            f"task job {job.id} was enqueued through TASKS alias {record.backend!r}, which "
            f"this worker's settings give to {type(backend).__name__}, not PgQueueSyncBackend"
        )
    return backend


# Per thread: ``backends``, (the TASKS generation, {alias: backend instance}).
_thread = threading.local()
_generation = 0


@receiver(setting_changed, dispatch_uid="pgqueue_sync.contrib.django.task_backends")
def _tasks_changed(*, setting: str, **kwargs: Any) -> None:
    global _generation
    if setting == "TASKS":
        _generation += 1


def _running_result(job: Job, record: TaskRecord, backend: Any) -> Any:
    now = timezone.now()
    earlier = _earlier(job, backend)
    worker = _worker_id(job.queue_manager_id)
    return TaskResult(
        task=load_task(record, backend.alias), id=str(job.id), status=TaskResultStatus.RUNNING,
        enqueued_at=earlier.enqueued_at if earlier else job.created,
        started_at=earlier.started_at if earlier and earlier.started_at else now,
        finished_at=None, last_attempted_at=now, args=record.args, kwargs=record.kwargs,
        backend=backend.alias, errors=list(earlier.errors) if earlier else [],
        # The tables already count this run's pick among the earlier result's attempts.
        worker_ids=[*(earlier.worker_ids[:-1] if earlier else []), worker],
    )


@functools.lru_cache(maxsize=16)
def _worker_id(queue_manager_id: Any) -> str:
    # One worker id per process, as text: computed once, not per job.
    return str(queue_manager_id) if queue_manager_id else "unknown"


def _earlier(job: Job, backend: Any) -> Any:
    """The stored result of a job that ran before (retry or re-pick), else ``None``."""
    if job.attempts == 0:
        return None
    try:
        return backend.get_result(str(job.id))
    except Exception:  # history is a nicety; never fail the run for it
        logger.warning("could not read the history of task job %d", job.id, exc_info=True)
        return None


def _failed(
    job: Job, record: TaskRecord, backend: Any, result: Any, exc: Exception
) -> RetryRequested | None:
    """Record a failed run on ``result``; a retry to raise, or ``None`` to re-raise ``exc``."""
    if isinstance(exc, RetryRequested):  # the task asked for a retry itself
        _reset(result)
        return None
    result.errors.append(_task_error(exc))
    runs = job.attempts + 1
    if runs < record.max_attempts:
        delay = backend.backend_options.retry_delay_after(runs, record.retry_delay)
        logger.info("task job %d failed (attempt %d of %d); retrying in %.1fs",
                    job.id, runs, record.max_attempts, delay)
        _reset(result)
        return RetryRequested(delay=delay, reason=f"{type(exc).__name__}: {exc}")
    _finish(result, TaskResultStatus.FAILED)
    task_finished.send(sender=type(backend), task_result=result)
    return None


def _task_error(exc: BaseException) -> Any:
    kind = type(exc)
    return TaskError(
        exception_class_path=f"{kind.__module__}.{kind.__qualname__}",
        traceback="".join(traceback.format_exception(kind, exc, exc.__traceback__)),
    )


def _finish(result: Any, status: Any) -> None:
    object.__setattr__(result, "status", status)
    object.__setattr__(result, "finished_at", timezone.now())


def _reset(result: Any) -> None:
    object.__setattr__(result, "status", TaskResultStatus.READY)
