"""The Django Tasks backend: ``django.tasks`` on Django 6, the ``django_tasks`` backport before.

Configure it in ``settings.py``::

    TASKS = {
        "default": {
            "BACKEND": "pgqueue_sync.contrib.django.PgQueueSyncBackend",
            "QUEUES": ["default", "emails"],
            "OPTIONS": {"MAX_ATTEMPTS": 3},
        },
    }

``enqueue`` writes the job on Django's connection, inside the caller's
``transaction.atomic()`` (commit makes it durable and wakes the workers,
rollback leaves nothing). ``manage.py pgq_sync worker`` runs the tasks; the
results (status, return value, errors, attempts, timestamps, worker ids) are
read back from the queue's tables by :meth:`PgQueueSyncBackend.get_result`, from
any process. See :mod:`.task_store` for the layout and :mod:`.task_runner` for
execution.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils import timezone
from django.utils.module_loading import import_string

from ...tracing import get_tracer, is_active, merge_publish_headers
from ._compat import (
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    require_tasks,
    task_backends,
    task_enqueued,
)
from .conf import SETTING as SETTING_NAME
from .conf import get_settings
from .errors import DjangoConfigurationError
from .task_store import TASK_ENTRYPOINT_PREFIX, TaskRecord, TaskState, TaskStore, task_entrypoint

if TYPE_CHECKING:
    from ...app import PgQueuer
    from ...queries import Queries

require_tasks()

__all__ = [
    "TASK_ENTRYPOINT_PREFIX",
    "PgQueueSyncBackend",
    "PgQueueSyncTask",
    "register_task_entrypoints",
    "task_entrypoint",
]

#: Defaults of the backend's ``OPTIONS``.
DEFAULT_MAX_ATTEMPTS = 1
DEFAULT_RETRY_DELAY = 1.0
DEFAULT_RETRY_BACKOFF = 2.0
DEFAULT_MAX_RETRY_DELAY = 300.0
_stores: weakref.WeakKeyDictionary[Queries, TaskStore] = weakref.WeakKeyDictionary()
_OPTIONS = ("DATABASE_ALIAS", "MAX_ATTEMPTS", "RETRY_DELAY", "RETRY_BACKOFF", "MAX_RETRY_DELAY",
            "QUEUE_CONCURRENCY", "QUEUE_TIMEOUT")


# The backport's Task has slots only on Python 3.11+; a slotted subclass of it
# is fine either way, and keeps Django 6's memory layout.
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PgQueueSyncTask(Task):
    """A ``Task`` with a retry policy: ``max_attempts`` runs in all, ``retry_delay`` seconds first.

    ``None`` takes the backend's ``MAX_ATTEMPTS`` / ``RETRY_DELAY``. On Django
    6.1 and the backport, ``@task(max_attempts=3)`` sets it; on Django 6.0
    ``@task`` takes no extra options, so use the backend's ``OPTIONS``.
    """

    max_attempts: int | None = None
    retry_delay: float | None = None


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    """The validated ``OPTIONS`` of one ``TASKS`` entry."""

    database_alias: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_delay: float = DEFAULT_RETRY_DELAY
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    max_retry_delay: float = DEFAULT_MAX_RETRY_DELAY
    queue_concurrency: Mapping[str, int] = dataclasses.field(default_factory=dict)
    queue_timeout: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, alias: str, raw: Mapping[str, Any]) -> BackendOptions:
        """Validate; raises :class:`DjangoConfigurationError` naming the bad key."""
        where = f"TASKS[{alias!r}]['OPTIONS']"
        unknown = sorted(set(raw) - set(_OPTIONS))
        if unknown:
            raise DjangoConfigurationError(
                f"unknown {where} key(s) {', '.join(map(repr, unknown))}; valid: "
                f"{', '.join(_OPTIONS)}"
            )
        options = cls(
            database_alias=raw.get("DATABASE_ALIAS"),
            max_attempts=raw.get("MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS),
            retry_delay=raw.get("RETRY_DELAY", DEFAULT_RETRY_DELAY),
            retry_backoff=raw.get("RETRY_BACKOFF", DEFAULT_RETRY_BACKOFF),
            max_retry_delay=raw.get("MAX_RETRY_DELAY", DEFAULT_MAX_RETRY_DELAY),
            queue_concurrency=dict(raw.get("QUEUE_CONCURRENCY") or {}),
            queue_timeout=dict(raw.get("QUEUE_TIMEOUT") or {}),
        )
        options._check(where)
        return options

    def _check(self, where: str) -> None:
        _require(_is_int(self.max_attempts) and self.max_attempts >= 1,
                 f"{where}['MAX_ATTEMPTS'] must be an int >= 1, got {self.max_attempts!r}")
        for key, value in (("RETRY_DELAY", self.retry_delay),
                           ("MAX_RETRY_DELAY", self.max_retry_delay)):
            _require(_is_number(value) and value >= 0,
                     f"{where}[{key!r}] must be seconds >= 0, got {value!r}")
        _require(_is_number(self.retry_backoff) and self.retry_backoff >= 1,
                 f"{where}['RETRY_BACKOFF'] must be a number >= 1, got {self.retry_backoff!r}")
        for queue, limit in self.queue_concurrency.items():
            _require(isinstance(queue, str) and _is_int(limit) and limit >= 0,
                     f"{where}['QUEUE_CONCURRENCY'] maps queue names to ints >= 0 "
                     f"(0: no limit), got {queue!r}: {limit!r}")
        for queue, seconds in self.queue_timeout.items():
            _require(isinstance(queue, str) and _is_number(seconds) and seconds > 0,
                     f"{where}['QUEUE_TIMEOUT'] maps queue names to seconds > 0 (a task "
                     f"running longer fails with TimeoutError), got {queue!r}: {seconds!r}")
        _require(self.database_alias is None or isinstance(self.database_alias, str),
                 f"{where}['DATABASE_ALIAS'] must be a DATABASES alias")

    def retry_delay_after(self, runs: int, first_delay: float) -> float:
        """Seconds before the run after ``runs`` failed runs (exponential, capped)."""
        return min(first_delay * self.retry_backoff ** max(runs - 1, 0), self.max_retry_delay)


class PgQueueSyncBackend(BaseTaskBackend):
    """Runs Django Tasks on pgqueue_sync (PgQueuer's tables), with results from any process.

    Thread-safe to use from any thread (Django makes one instance per thread);
    constructing it touches neither the database nor the app registry.
    ``enqueue``/``get_result`` block for one or two statements on the
    calling thread's Django connection.
    """

    task_class = PgQueueSyncTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: Mapping[str, Any]) -> None:
        super().__init__(alias, params)
        self.backend_options = BackendOptions.parse(alias, self.options)

    @property
    def database_alias(self) -> str:
        """The ``DATABASES`` alias jobs go to (``OPTIONS`` or ``PGQUEUE_SYNC``)."""
        return self.backend_options.database_alias or get_settings().database_alias

    def validate_task(self, task: Any) -> None:
        """Django's checks, plus the retry options of a :class:`PgQueueSyncTask`."""
        super().validate_task(task)
        attempts = getattr(task, "max_attempts", None)
        if attempts is not None and not (_is_int(attempts) and attempts >= 1):
            raise InvalidTask(f"max_attempts must be an int >= 1, got {attempts!r}")
        delay = getattr(task, "retry_delay", None)
        if delay is not None and not (_is_number(delay) and delay >= 0):
            raise InvalidTask(f"retry_delay must be seconds >= 0, got {delay!r}")

    def enqueue(self, task: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Write the task's job in the caller's transaction and send ``task_enqueued``.

        Returns a READY ``TaskResult`` whose ``id`` is the job id. Raises
        ``InvalidTask`` for a task this backend cannot run, and
        :mod:`pgqueue_sync.errors` exceptions for database failures (inside
        ``atomic()`` such a failure aborts the caller's transaction).
        """
        self.validate_task(task)
        result = TaskResult(
            task=task, id="", status=TaskResultStatus.READY, enqueued_at=None,
            started_at=None, finished_at=None, last_attempted_at=None, args=list(args),
            kwargs=dict(kwargs), backend=self.alias, errors=[], worker_ids=[],
        )
        record = self.task_record(task, result.args, result.kwargs)
        job_id, enqueued_at = self._write(task, record)
        object.__setattr__(result, "id", str(job_id))
        # The stored time, so this result equals get_result(id) (not this host's clock).
        object.__setattr__(result, "enqueued_at", enqueued_at)
        task_enqueued.send(type(self), task_result=result)
        return result

    def task_record(self, task: Any, args: list[Any], kwargs: dict[str, Any]) -> TaskRecord:
        """The record a job of ``task`` carries (arguments already JSON-normalised)."""
        options = self.backend_options
        attempts = getattr(task, "max_attempts", None)
        delay = getattr(task, "retry_delay", None)
        return TaskRecord(
            task_path=task.module_path, args=args, kwargs=kwargs, backend=self.alias,
            queue_name=task.queue_name, priority=task.priority,
            max_attempts=options.max_attempts if attempts is None else attempts,
            retry_delay=options.retry_delay if delay is None else float(delay),
        )

    def _write(self, task: Any, record: TaskRecord) -> tuple[int, datetime]:
        from . import producer

        run_after = _aware(task.run_after)
        alias = self.database_alias
        if producer.intercepting():
            # A test mode (capture or eager) answers instead of the database.
            [job_id] = producer.enqueue(task_entrypoint(task.queue_name), record.to_payload(),
                                        task.priority, run_after, using=alias)
            assert job_id is not None
            return job_id, timezone.now()
        store = self._store(alias)
        return store.enqueue(record, run_after=run_after,
                             headers=_traced_headers(store, record))

    def get_result(self, result_id: str) -> Any:
        """The task's current ``TaskResult``, read from the database (any process).

        Raises ``TaskResultDoesNotExist`` for an id that is not a task of this
        database (or whose results were pruned).
        """
        try:
            job_id = int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        state = self._store(self.database_alias).load(job_id)
        if state is None:
            raise TaskResultDoesNotExist(result_id)
        return self.result_from_state(state)

    def result_from_state(self, state: TaskState) -> Any:
        """Build a ``TaskResult`` from what the tables hold."""
        record = state.record
        task = load_task(record, self.alias)
        attempts = state.attempts
        result = TaskResult(
            task=task, id=str(state.job_id), status=TaskResultStatus[state.status],
            enqueued_at=state.enqueued_at,
            started_at=attempts[0].started if attempts else None,
            finished_at=state.finished_at,
            last_attempted_at=attempts[-1].started if attempts else None,
            args=record.args, kwargs=record.kwargs, backend=self.alias,
            errors=[TaskError(exception_class_path=e.exception_class_path, traceback=e.traceback)
                    for e in state.errors],
            worker_ids=[a.worker_id or "unknown" for a in attempts],
        )
        if state.status == "SUCCESSFUL":
            object.__setattr__(result, "_return_value", state.return_value)
        return result

    def _store(self, alias: str) -> TaskStore:
        from . import producer

        queries = producer.get_queries(alias)
        # One store (its statements composed once) per shared Queries object.
        store = _stores.get(queries)
        if store is None:
            store = _stores[queries] = TaskStore(queries.driver, queries.settings,
                                                 tracer=queries.tracer)
        return store

    def check(self, **kwargs: Any) -> list[Any]:
        """Configuration checks (no database access): the alias and the app."""
        from django.apps import apps
        from django.core import checks

        messages: list[Any] = list(super().check(**kwargs))
        try:
            from .db import check_backend

            check_backend(self.database_alias)
        except DjangoConfigurationError as exc:
            messages.append(checks.Error(str(exc), obj=f"TASKS[{self.alias!r}]",
                                         id="pgqueue_sync.E101"))
        if not apps.is_installed("pgqueue_sync.contrib.django"):
            messages.append(checks.Error(
                "the pgqueue_sync Tasks backend needs its app",
                hint="add 'pgqueue_sync.contrib.django' to INSTALLED_APPS",
                obj=f"TASKS[{self.alias!r}]", id="pgqueue_sync.E102",
            ))
        messages += self._check_served()
        return messages

    def _check_served(self) -> list[Any]:
        """W101: the worker (``manage.py pgq_sync worker``) reads jobs from
        ``PGQUEUE_SYNC['DATABASE_ALIAS']``; tasks written to another database wait forever."""
        from django.core import checks

        worker_alias = get_settings().database_alias
        if self.database_alias == worker_alias:
            return []
        return [checks.Warning(
            f"TASKS[{self.alias!r}] writes its jobs to database {self.database_alias!r}, but "
            f"the worker reads {worker_alias!r} ({SETTING_NAME}['DATABASE_ALIAS']): no worker "
            "started with these settings runs them",
            hint=f"point OPTIONS['DATABASE_ALIAS'] at {worker_alias!r}, or run a worker whose "
                 f"{SETTING_NAME}['DATABASE_ALIAS'] is {self.database_alias!r}",
            obj=f"TASKS[{self.alias!r}]", id="pgqueue_sync.W101",
        )]


#: How many built tasks :func:`load_task` keeps before it starts over.
TASK_CACHE_SIZE = 1024
# (path, priority, queue, backend alias) -> (the imported Task, the Task .using() them)
_tasks: dict[tuple[str, int, str, str], tuple[Any, Any]] = {}
_tasks_lock = threading.Lock()


def load_task(record: TaskRecord, backend_alias: str | None = None) -> Any:
    """Import the ``Task`` a record names, with the record's queue, priority and backend.

    Raises ``ImportError`` or ``TypeError`` (not a ``Task``) with the path.
    Each distinct (path, queue, priority, backend) is built once:
    ``Task.using()`` copies and validates the task against its backend, which
    is the bulk of the cost. The path is still imported on every call (a
    module-cache lookup) and an entry serves only while it was built from that
    very object, so a replaced or reloaded task is rebuilt; a change of
    ``TASKS`` empties the cache.
    """
    task = import_string(record.task_path)
    backend = backend_alias or record.backend
    key = (record.task_path, record.priority, record.queue_name, backend)
    cached = _tasks.get(key)
    if cached is not None and cached[0] is task:
        return cached[1]
    if not isinstance(task, Task):
        raise TypeError(f"{record.task_path} is a {type(task).__name__}, not a Django Task")
    used = task.using(priority=record.priority, queue_name=record.queue_name, backend=backend)
    with _tasks_lock:
        if len(_tasks) >= TASK_CACHE_SIZE:
            _tasks.clear()  # records vary by priority: keep the cache bounded
        _tasks[key] = (task, used)
    return used


@receiver(setting_changed, dispatch_uid="pgqueue_sync.contrib.django.forget_tasks")
def forget_tasks(*, setting: str, **kwargs: Any) -> None:
    """Empty :func:`load_task`'s cache when ``TASKS`` changes (its tasks were
    validated against the backends it configured)."""
    if setting == "TASKS":
        with _tasks_lock:
            _tasks.clear()


def our_backends() -> dict[str, PgQueueSyncBackend]:
    """The ``TASKS`` aliases configured with this backend, with their instances."""
    found = {}
    for alias, params in (getattr(django_settings, "TASKS", None) or {}).items():
        if _is_ours(params.get("BACKEND", "")):
            backend = task_backends[alias]
            if isinstance(backend, PgQueueSyncBackend):
                found[alias] = backend
    return found


def _is_ours(path: str) -> bool:
    """Whether a ``BACKEND`` path names this backend or a subclass of it.

    Checked on the class, so other aliases' backends are not instantiated here
    (Django reports their own errors); a path that does not import is not ours.
    """
    try:
        backend_class = import_string(path)
    except ImportError:
        return False
    return isinstance(backend_class, type) and issubclass(backend_class, PgQueueSyncBackend)


def task_queues(backends: Mapping[str, PgQueueSyncBackend]) -> list[str]:
    """The queue names those backends accept (``QUEUES=[]`` counts as ``["default"]``)."""
    names: set[str] = set()
    for backend in backends.values():
        names.update(backend.queues or {"default"})
    return sorted(names)


def register_task_entrypoints(pgq: PgQueuer, *, queues: Sequence[str] | None = None) -> list[str]:
    """Register one entrypoint per Django Tasks queue on ``pgq``; returns their names.

    ``queues`` defaults to every queue of every ``TASKS`` entry using this
    backend on the worker's database. ``QUEUE_CONCURRENCY`` becomes the
    entrypoint's fleet-wide ``concurrency_limit``, ``QUEUE_TIMEOUT`` its per-job
    ``timeout`` (a task running longer fails with :class:`TimeoutError`, or is
    retried while its ``max_attempts`` allow). Results are always stored
    (the backend reads them back). Raises :class:`DjangoConfigurationError`
    when no backend is configured.
    """
    from .task_runner import DjangoTaskExecutor, django_task

    backends = our_backends()
    if not backends:
        raise DjangoConfigurationError(
            "no TASKS entry uses pgqueue_sync.contrib.django.PgQueueSyncBackend; "
            "configure one, or start the worker with --no-tasks"
        )
    limits: dict[str, int] = {}
    timeouts: dict[str, float] = {}
    for backend in backends.values():
        limits.update(backend.backend_options.queue_concurrency)
        timeouts.update(backend.backend_options.queue_timeout)
    names = []
    for queue in queues or task_queues(backends):
        name = task_entrypoint(queue)
        if name in pgq.qm.entrypoint_registry:
            continue
        pgq.entrypoint(name, executor_factory=DjangoTaskExecutor, store_result=True,
                       concurrency_limit=limits.get(queue, 0),
                       timeout=timeouts.get(queue))(django_task)
        names.append(name)
    return names


def _traced_headers(store: TaskStore, record: TaskRecord) -> dict[str, Any] | None:
    """The job headers an installed tracer adds (``None`` without one), as every enqueue does."""
    tracer = get_tracer(store.tracer)
    if not is_active(tracer):
        return None
    [headers] = merge_publish_headers(tracer, [task_entrypoint(record.queue_name)], [None])
    return headers


def _aware(value: datetime | None) -> datetime | None:
    if value is None or timezone.is_aware(value):
        return value
    # USE_TZ=False: Django's naive datetimes are in TIME_ZONE.
    return timezone.make_aware(value, timezone.get_default_timezone())


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise DjangoConfigurationError(message)
