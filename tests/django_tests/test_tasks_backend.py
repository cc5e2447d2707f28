"""The Django Tasks backend end to end: enqueue in a transaction, a real worker, get_result."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.test import override_settings
from django.utils import timezone
from psycopg import sql

from pgqueue_sync.contrib.django._compat import (
    TASKS_MODULE,
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)
from pgqueue_sync.contrib.django.backend import (
    BackendOptions,
    PgQueueSyncBackend,
    load_task,
    register_task_entrypoints,
)
from pgqueue_sync.contrib.django.conf import get_settings
from pgqueue_sync.contrib.django.errors import DjangoConfigurationError
from pgqueue_sync.contrib.django.task_store import TaskRecord

from .helpers import drain_with_worker, worker_connect
from .shop import tasks


class Signals:
    """Receivers for the three Tasks signals (the worker sends from its threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, str]] = []

    def receiver(self, name: str) -> Any:
        def receive(sender: Any, task_result: Any, **kwargs: Any) -> None:
            with self.lock:
                self.seen.append((name, task_result.id, str(task_result.status)))
        return receive


@pytest.fixture
def signals() -> Iterator[Signals]:
    recorder = Signals()
    receivers = [(s, recorder.receiver(n)) for s, n in
                 ((task_enqueued, "enqueued"), (task_started, "started"),
                  (task_finished, "finished"))]
    for signal, receiver in receivers:
        signal.connect(receiver)
    try:
        yield recorder
    finally:
        for signal, receiver in receivers:
            signal.disconnect(receiver)


def run_worker(**options: Any) -> Any:
    return drain_with_worker(lambda pgq: register_task_entrypoints(pgq), **options)


def _job_row(job_id: str) -> dict[str, Any]:
    names = get_settings().db_settings
    query = sql.SQL("SELECT entrypoint, priority, execute_after FROM {} WHERE id = %s").format(
        names.ident("queue_table"))
    with worker_connect() as conn:
        row = conn.execute(query, [int(job_id)]).fetchone()
    assert row is not None
    return {"entrypoint": row[0], "priority": row[1], "execute_after": row[2]}


@pytest.mark.django_db
def test_enqueue_returns_a_ready_result_readable_at_once(signals: Signals) -> None:
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    assert result.id.isdigit()
    assert result.args == [2, 3]
    assert ("enqueued", result.id, "READY") in signals.seen
    again = tasks.add.get_result(result.id)
    assert again.status == TaskResultStatus.READY
    assert again.task.func is tasks.add.func
    assert again.enqueued_at is not None and again.started_at is None
    assert not again.is_finished


@pytest.mark.django_db
def test_unknown_ids_do_not_exist() -> None:
    backend = task_backends["default"]
    for bad in ("nope", "999999999"):
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(bad)


def test_backend_flags_are_honest() -> None:
    backend = task_backends["default"]
    assert isinstance(backend, PgQueueSyncBackend)
    assert backend.supports_defer and backend.supports_priority
    assert backend.supports_get_result and backend.supports_async_task


def test_invalid_tasks_are_refused() -> None:
    with pytest.raises(InvalidTask):
        tasks.add.using(priority=101)
    with pytest.raises(InvalidTask):
        tasks.add.using(queue_name="unknown-queue")


def test_bad_options_name_the_key() -> None:
    with pytest.raises(DjangoConfigurationError, match="MAX_ATTEMPTS"):
        BackendOptions.parse("default", {"MAX_ATTEMPTS": 0})
    with pytest.raises(DjangoConfigurationError, match="unknown"):
        BackendOptions.parse("default", {"RETRIES": 3})


@pytest.mark.django_db(transaction=True)
def test_priority_queue_and_run_after_reach_the_job(committed: None) -> None:
    later = timezone.now() + timedelta(hours=1)
    result = tasks.mark_sent.using(run_after=later).enqueue(1)
    row = _job_row(result.id)
    assert row["entrypoint"] == "django_tasks:emails"
    assert row["priority"] == 5
    if timezone.is_naive(later):  # USE_TZ=False: naive values are in TIME_ZONE
        later = timezone.make_aware(later)
    assert abs((row["execute_after"] - later).total_seconds()) < 1


@pytest.mark.django_db(transaction=True)
def test_rollback_discards_the_task(committed: None) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        result = tasks.add.enqueue(1, 1)
        raise RuntimeError("abort")
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(result.id)


@pytest.mark.django_db(transaction=True)
def test_the_worker_runs_tasks_and_results_come_back(committed: None, signals: Signals) -> None:
    added = tasks.add.enqueue(2, 3)
    failed = tasks.explode.enqueue("boom")
    contextual = tasks.with_context.enqueue("hello")
    awaited = tasks.async_add.enqueue(4, 5)
    pgq = run_worker()

    added.refresh()
    assert added.status == TaskResultStatus.SUCCESSFUL
    assert added.return_value == 5
    assert added.worker_ids == [str(pgq.qm.queue_manager_id)]
    assert added.attempts == 1
    assert added.started_at is not None and added.finished_at is not None
    assert added.enqueued_at <= added.started_at <= added.finished_at

    result = tasks.explode.get_result(failed.id)
    assert result.status == TaskResultStatus.FAILED
    [error] = result.errors
    assert error.exception_class_path == "builtins.ValueError"
    assert error.exception_class is ValueError
    assert "boom" in error.traceback
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value

    context_value = tasks.with_context.get_result(contextual.id).return_value
    assert context_value == {"label": "hello", "attempt": 1, "id": contextual.id}
    assert tasks.async_add.get_result(awaited.id).return_value == 9

    with signals.lock:
        seen = list(signals.seen)
    assert ("started", added.id, "RUNNING") in seen
    assert ("finished", added.id, "SUCCESSFUL") in seen
    assert ("finished", failed.id, "FAILED") in seen


@pytest.mark.django_db(transaction=True)
def test_retries_use_the_queue_and_count_attempts(committed: None, signals: Signals) -> None:
    flaky = tasks.flaky.enqueue()
    doomed = tasks.always_fails.enqueue()
    run_worker()

    result = tasks.flaky.get_result(flaky.id)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 2
    assert result.attempts == 2
    [error] = result.errors
    assert error.exception_class_path == "builtins.ConnectionError"

    result = tasks.always_fails.get_result(doomed.id)
    assert result.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in result.errors] == ["builtins.KeyError"] * 2
    with signals.lock:
        finished = [s for s in signals.seen if s[0] == "finished" and s[1] == doomed.id]
    assert finished == [("finished", doomed.id, "FAILED")]


@pytest.mark.django_db(transaction=True)
def test_results_are_readable_from_another_thread(committed: None) -> None:
    result = tasks.add.enqueue(20, 22)
    run_worker()
    seen: list[Any] = []

    def read() -> None:
        from django.db import connections

        try:
            seen.append(tasks.add.get_result(result.id).return_value)
        finally:
            connections.close_all()

    thread = threading.Thread(target=read, name="reader")
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert seen == [42]


@pytest.mark.django_db(transaction=True)
def test_a_worker_told_one_queue_leaves_the_others(committed: None) -> None:
    other = tasks.mark_sent.enqueue(1)
    mine = tasks.add.enqueue(1, 2)
    drain_with_worker(lambda pgq: register_task_entrypoints(pgq, queues=["default"]))
    assert tasks.add.get_result(mine.id).status == TaskResultStatus.SUCCESSFUL
    assert tasks.mark_sent.get_result(other.id).status == TaskResultStatus.READY


@pytest.mark.django_db
def test_a_cancelled_task_reads_as_failed() -> None:
    from pgqueue_sync.contrib.django import get_queries

    result = tasks.add.enqueue(1, 1)
    get_queries().mark_job_as_cancelled([int(result.id)])
    again = tasks.add.get_result(result.id)
    assert again.status == TaskResultStatus.FAILED
    assert again.errors == []


def test_no_backend_configured_is_a_clear_error() -> None:
    with override_settings(TASKS={"default": {
            "BACKEND": TASKS_MODULE + ".backends.dummy.DummyBackend"}}):
        with pytest.raises(DjangoConfigurationError, match="--no-tasks"):
            register_task_entrypoints(object())  # type: ignore[arg-type]


@pytest.mark.django_db
def test_an_installed_tracer_gets_its_headers_into_task_jobs() -> None:
    from pgqueue_sync.contrib.django import DjangoDriver
    from pgqueue_sync.tracing import set_tracing_class

    from ..test_tracing import RecordingTracer

    tracer = RecordingTracer()
    set_tracing_class(tracer)
    try:
        result = tasks.add.enqueue(1, 2)
    finally:
        set_tracing_class(None)
    query = sql.SQL("SELECT headers FROM {} WHERE id = %(id)s").format(
        get_settings().db_settings.ident("queue_table"))
    [row] = DjangoDriver().fetch(query, {"id": int(result.id)})
    assert row["headers"] == {"trace": "t-django_tasks:default", "who": "tracer"}
    assert tracer.published == [["django_tasks:default"]]


# -- issue 12: subclasses, stored times, unknown aliases, quiet logs -------------------------

SUBCLASS_TASKS = {"default": {"BACKEND": "tests.django_tests.shop.backends.ShopBackend",
                              "QUEUES": ["default", "emails"]}}


@pytest.mark.django_db(transaction=True)
def test_a_subclass_of_the_backend_is_served_by_the_worker(committed: None) -> None:
    with override_settings(TASKS=SUBCLASS_TASKS):
        result = tasks.add.enqueue(20, 1)
        assert type(task_backends["default"]).__name__ == "ShopBackend"
        names = []
        drain_with_worker(lambda pgq: names.extend(register_task_entrypoints(pgq)))
        assert "django_tasks:default" in names
        assert tasks.add.get_result(result.id).return_value == 21


@pytest.mark.django_db
def test_the_enqueue_result_equals_get_result() -> None:
    result = tasks.add.enqueue(1, 2)
    stored = tasks.add.get_result(result.id)
    assert result.enqueued_at == stored.enqueued_at  # the stored time, not this clock
    assert result.status == stored.status and result.args == stored.args


@pytest.mark.django_db(transaction=True)
def test_a_job_of_an_alias_the_worker_does_not_know_fails_naming_it(committed: None) -> None:
    two = {**settings_tasks(), "reports": {
        "BACKEND": "pgqueue_sync.contrib.django.PgQueueSyncBackend", "QUEUES": ["default"]}}
    with override_settings(TASKS=two):
        result = tasks.add.using(backend="reports").enqueue(1, 1)
    drain_with_worker(lambda pgq: register_task_entrypoints(pgq))
    names = get_settings().db_settings
    query = sql.SQL("SELECT status::text, traceback->>'exception_message' FROM {} "
                    "WHERE job_id = %s ORDER BY id DESC LIMIT 1").format(
        names.ident("queue_table_log"))
    with worker_connect() as conn:
        row = conn.execute(query, [int(result.id)]).fetchone()
    assert row is not None and row[0] == "exception"
    assert "TASKS alias 'reports'" in row[1] and "do not define" in row[1]


def settings_tasks() -> dict[str, Any]:
    from django.conf import settings

    return dict(settings.TASKS)


def test_per_task_info_lines_are_quieted_unless_configured_or_debugging() -> None:
    import logging

    from pgqueue_sync.contrib.django.worker import TASK_LOGGERS, quiet_per_task_logging

    loggers = [logging.getLogger(name) for name in TASK_LOGGERS]
    root = logging.getLogger()
    saved = [(lg, lg.level) for lg in [*loggers, root]]
    try:
        for lg in loggers:
            lg.setLevel(logging.NOTSET)
        root.setLevel(logging.INFO)
        quiet_per_task_logging()
        assert all(lg.level == logging.WARNING for lg in loggers)
        loggers[0].setLevel(logging.INFO)  # the project's LOGGING chose a level
        loggers[1].setLevel(logging.NOTSET)
        root.setLevel(logging.DEBUG)  # a worker started with --log-level DEBUG
        quiet_per_task_logging()
        assert loggers[0].level == logging.INFO and loggers[1].level == logging.NOTSET
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def test_a_backend_on_a_database_the_worker_does_not_read_is_w101() -> None:
    elsewhere = {"default": {"BACKEND": "tests.django_tests.shop.backends.ShopBackend",
                             "OPTIONS": {"DATABASE_ALIAS": "reports_db"}}}
    with override_settings(TASKS=elsewhere):
        messages = task_backends["default"].check()
    [warning] = [m for m in messages if m.id == "pgqueue_sync.W101"]
    assert "'reports_db'" in warning.msg and "'default'" in warning.msg
    assert not [m for m in task_backends["default"].check() if m.id == "pgqueue_sync.W101"]


# -- issue 13: what the worker resolves once per task ----------------------------------------


def multiply(a: int, b: int) -> int:
    return a * b


@pytest.mark.django_db(transaction=True)
def test_a_task_replaced_in_its_module_is_the_one_the_worker_runs(
    committed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker builds each task once (its Task.using() copy); a module
    # attribute replaced since (a reload) must be rebuilt, not served stale.
    original = tasks.add
    first = original.enqueue(2, 3)
    run_worker()
    assert original.get_result(first.id).return_value == 5

    monkeypatch.setattr(tasks, "add", dataclasses.replace(original, func=multiply))
    second = original.enqueue(2, 3)  # the same task path
    run_worker()
    assert task_backends["default"].get_result(second.id).return_value == 6


def test_the_built_tasks_are_forgotten_when_tasks_settings_change() -> None:
    record = TaskRecord(task_path="tests.django_tests.shop.tasks.add", args=[], kwargs={},
                        backend="default", queue_name="default", priority=0, max_attempts=1,
                        retry_delay=0.0)
    built = load_task(record)
    assert load_task(record) is built  # built once
    # Task.using() validated it against the backend; new TASKS validate it anew.
    emails_only = {"default": {"BACKEND": "pgqueue_sync.contrib.django.PgQueueSyncBackend",
                               "QUEUES": ["emails"]}}
    with override_settings(TASKS=emails_only), pytest.raises(InvalidTask, match="default"):
        load_task(record)
    assert load_task(record) == built


@pytest.mark.django_db(transaction=True)
def test_queue_timeout_fails_a_hung_task_after_its_attempts(committed: None) -> None:
    """QUEUE_TIMEOUT becomes the queue entrypoint's timeout: a hung task is retried
    while its max_attempts allow, then FAILED with a TimeoutError; its late return
    changes nothing."""
    configured = {**settings_tasks(), "default": {
        **settings_tasks()["default"], "OPTIONS": {"QUEUE_TIMEOUT": {"default": 0.5}}}}
    tasks.RELEASE_STUCK.clear()
    tasks.STUCK_RETURNED.clear()
    try:
        with override_settings(TASKS=configured):
            hung = tasks.stuck.enqueue(30)
            quick = tasks.add.enqueue(1, 2)
            run_worker()
            result = tasks.stuck.get_result(hung.id)
            assert result.status == TaskResultStatus.FAILED
            assert result.attempts == 2
            assert result.errors[-1].exception_class_path == "builtins.TimeoutError"
            assert tasks.add.get_result(quick.id).status == TaskResultStatus.SUCCESSFUL
    finally:
        tasks.RELEASE_STUCK.set()
        assert tasks.STUCK_RETURNED.wait(10)


def test_queue_timeout_must_be_positive_seconds() -> None:
    with pytest.raises(DjangoConfigurationError, match="QUEUE_TIMEOUT"):
        BackendOptions.parse("default", {"QUEUE_TIMEOUT": {"default": 0}})
    with pytest.raises(DjangoConfigurationError, match="QUEUE_TIMEOUT"):
        BackendOptions.parse("default", {"QUEUE_TIMEOUT": {"default": "30s"}})

