"""The test helpers: capture, eager, drain on the test's connection, and the pytest fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import override_settings
from psycopg import sql

from pgqueue_sync import Context, Job, RetryRequested
from pgqueue_sync.contrib.django import enqueue, get_queries, registry
from pgqueue_sync.contrib.django._compat import TaskResultStatus
from pgqueue_sync.contrib.django.conf import get_settings
from pgqueue_sync.contrib.django.pytest_plugin import truncate_queue_tables
from pgqueue_sync.contrib.django.testing import (
    CapturedJobs,
    DrainReport,
    EagerJobs,
    UnknownEntrypointError,
    capture_jobs,
    drain,
    eager_jobs,
    settings_captured_jobs,
    settings_interceptor,
)
from pgqueue_sync.results import Results

from .helpers import worker_connect
from .shop import tasks
from .shop.models import Order

SEND = "shop.send_confirmation"


# -- helpers --------------------------------------------------------------------------------


def _count(table: str, where: str = "TRUE", params: list[Any] | None = None) -> int:
    """Rows of a queue table, seen through the test's own connection (its transaction)."""
    ident = get_settings().db_settings.ident(table)
    query = sql.SQL("SELECT count(*) FROM {} WHERE " + where).format(ident)
    with connection.cursor() as cursor:
        cursor.execute(query.as_string(cursor.cursor), params or [])
        return int(cursor.fetchone()[0])


def _statuses(job_id: int) -> list[str]:
    ident = get_settings().db_settings.ident("queue_table_log")
    query = sql.SQL("SELECT status::text FROM {} WHERE job_id = %s ORDER BY id").format(ident)
    with connection.cursor() as cursor:
        cursor.execute(query.as_string(cursor.cursor), [job_id])
        return [row[0] for row in cursor.fetchall()]


def _queue_status(job_id: int) -> str | None:
    ident = get_settings().db_settings.ident("queue_table")
    query = sql.SQL("SELECT status::text FROM {} WHERE id = %s").format(ident)
    with connection.cursor() as cursor:
        cursor.execute(query.as_string(cursor.cursor), [job_id])
        row = cursor.fetchone()
    return None if row is None else str(row[0])


class Calls:
    """Handlers declared for one test (restored afterwards); records what they saw."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.jobs: list[Job] = []
        self.lock = threading.Lock()

    def declare(self, name: str, func: Callable[..., Any], **options: Any) -> None:
        # Straight into the registry's table, so monkeypatch removes it again.
        self.monkeypatch.setitem(registry._entrypoints, name,
                                 registry.Declaration(func, options))

    def record(self, job: Job) -> None:
        with self.lock:
            self.jobs.append(job)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    return Calls(monkeypatch)


def _order() -> Any:
    return Order.objects.create(email="t@example.com")


# -- capture --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_capture_records_every_field_and_writes_nothing() -> None:
    with capture_jobs() as jobs:
        [first] = enqueue(SEND, b"1", priority=3, dedupe_key="k1", headers={"trace": "x"})
        second, third = enqueue(["a.b", "c.d"], [b"2", None])
    assert first is not None and first < 0 and second is not None and third is not None
    assert len({first, second, third}) == 3 and max(first, second, third) < 0
    assert _count("queue_table") == 0 and _count("queue_table_log") == 0
    assert jobs.entrypoints == [SEND, "a.b", "c.d"]
    job = jobs[0]
    assert (job.id, job.payload, job.priority, job.dedupe_key) == (first, b"1", 3, "k1")
    assert job.headers == {"trace": "x"} and job.using == "default"
    assert jobs[2].payload is None and jobs[2].headers is None
    # Outside the block enqueue writes again.
    enqueue(SEND, b"9")
    assert len(jobs) == 3 and _count("queue_table") == 1


@pytest.mark.django_db
def test_assert_enqueued_matches_and_explains_failures() -> None:
    with capture_jobs() as jobs:
        enqueue(SEND, b"1")
        enqueue(SEND, b"2")
        enqueue("other", None)
    assert [j.payload for j in jobs.assert_enqueued(SEND)] == [b"1", b"2"]
    assert len(jobs.assert_enqueued(SEND, payload=b"2", count=1)) == 1
    jobs.assert_enqueued("other", payload=None)
    jobs.assert_enqueued("never", count=0)
    assert [j.payload for j in jobs.for_entrypoint(SEND)] == [b"1", b"2"]
    with pytest.raises(AssertionError) as failure:
        jobs.assert_enqueued(SEND, payload=b"3")
    message = str(failure.value)
    assert "expected at least 1 job(s) of 'shop.send_confirmation' with payload b'3'" in message
    assert "found 0" in message
    assert "'shop.send_confirmation' payload=b'1'" in message and "'other' payload=None" in message
    with pytest.raises(AssertionError, match="expected 1 job"):
        jobs.assert_enqueued(SEND, count=1)
    jobs.clear()
    assert len(jobs) == 0
    with pytest.raises(AssertionError, match="captured: nothing"):
        jobs.assert_enqueued(SEND)


@pytest.mark.django_db
def test_capture_records_django_tasks_without_results() -> None:
    with capture_jobs() as jobs:
        result = tasks.add.enqueue(2, 3)
        tasks.mark_sent.enqueue(7)
    assert int(result.id) < 0 and result.status == TaskResultStatus.READY
    [job] = jobs.for_task(tasks.add)
    assert job.entrypoint == "django_tasks:default"
    record = job.task_record
    assert record is not None and record.args == [2, 3] and record.kwargs == {}
    [emails] = jobs.for_task(tasks.mark_sent)
    assert emails.entrypoint == "django_tasks:emails" and emails.priority == 5
    assert _count("queue_table") == 0 and _count("results_table") == 0


@pytest.mark.django_db
def test_innermost_capture_wins_and_threads_are_captured() -> None:
    with capture_jobs() as outer:
        with capture_jobs() as inner:
            thread = threading.Thread(target=lambda: enqueue("from.thread"))
            thread.start()
            thread.join(10)
            assert not thread.is_alive()
        enqueue("outer.only")
    assert inner.entrypoints == ["from.thread"]
    assert outer.entrypoints == ["outer.only"]


@pytest.mark.django_db
def test_pgqueue_jobs_fixture_captures_a_view(client: Any, pgqueue_jobs: CapturedJobs) -> None:
    response = client.get("/orders/", {"email": "f@example.com"})
    assert response.status_code == 200
    order = Order.objects.get()
    [job] = pgqueue_jobs.assert_enqueued(SEND, payload=str(order.pk).encode(), count=1)
    assert response.json()["job"] == job.id
    assert _count("queue_table") == 0


# -- eager ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_eager_runs_the_handler_at_enqueue() -> None:
    order = _order()
    with eager_jobs() as runs:
        [job_id] = enqueue(SEND, str(order.pk).encode(), priority=4, headers={"h": 1})
        order.refresh_from_db()
        assert order.sent
    assert job_id is not None and job_id < 0
    [run] = runs
    assert run.job.id == job_id and run.job.entrypoint == SEND and run.error is None
    assert run.job.priority == 4 and run.job.headers == {"h": 1} and run.job.attempts == 0
    assert runs.entrypoints == [SEND] and runs.errors == []
    assert _count("queue_table") == 0


@pytest.mark.django_db
def test_eager_passes_context_and_resources(calls: Calls) -> None:
    seen: list[Any] = []

    def handler(job: Job, context: Context) -> str:
        seen.append(context.resources["client"])
        return "done"

    calls.declare("testing.context", handler)
    with eager_jobs(resources={"client": "http"}) as runs:
        enqueue("testing.context")
    assert seen == ["http"] and runs[0].return_value == "done"


@pytest.mark.django_db
def test_eager_propagates_handler_exceptions_by_default(calls: Calls) -> None:
    def boom(job: Job) -> None:
        raise LookupError("handler failed")

    calls.declare("testing.boom", boom)
    with eager_jobs() as runs, pytest.raises(LookupError, match="handler failed"):
        enqueue("testing.boom")
    assert isinstance(runs[0].error, LookupError)


@pytest.mark.django_db
def test_eager_without_propagate_records_and_logs(
    calls: Calls, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(job: Job) -> None:
        raise LookupError("handler failed")

    calls.declare("testing.boom", boom)
    with eager_jobs(propagate=False) as runs:
        [job_id] = enqueue("testing.boom")
    assert job_id is not None and job_id < 0
    [error] = runs.errors
    assert isinstance(error, LookupError)
    assert "eager job" in caplog.text and "testing.boom" in caplog.text


@pytest.mark.django_db
def test_eager_retry_propagates_its_cause(calls: Calls) -> None:
    def retry(job: Job) -> None:
        raise RetryRequested(delay=5) from TimeoutError("upstream down")

    calls.declare("testing.retry", retry)
    with eager_jobs(), pytest.raises(TimeoutError, match="upstream down"):
        enqueue("testing.retry")


@pytest.mark.django_db
def test_eager_unknown_entrypoint_names_the_declared_ones() -> None:
    with eager_jobs() as runs, pytest.raises(UnknownEntrypointError) as failure:
        enqueue("no.such.handler")
    message = str(failure.value)
    assert "'no.such.handler'" in message and "'shop.send_confirmation'" in message
    assert "'django_tasks:default'" in message
    assert len(runs) == 0


@pytest.mark.django_db
def test_eager_on_commit_runs_when_the_commit_callbacks_run(
    django_capture_on_commit_callbacks: Any,
) -> None:
    order = _order()
    with eager_jobs(on_commit=True) as runs:
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            enqueue(SEND, str(order.pk).encode())
            order.refresh_from_db()
            assert not order.sent and len(runs) == 0  # not before the commit
        assert len(callbacks) == 1
        order.refresh_from_db()
        assert order.sent and len(runs) == 1
        # A rolled-back block leaves nothing to run.
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            with pytest.raises(RuntimeError), transaction.atomic():
                enqueue(SEND, str(order.pk).encode())
                raise RuntimeError("rolled back")
        assert callbacks == [] and len(runs) == 1


@pytest.mark.django_db
def test_eager_on_commit_exception_propagates_from_the_commit(
    calls: Calls, django_capture_on_commit_callbacks: Any
) -> None:
    def boom(job: Job) -> None:
        raise LookupError("at commit")

    calls.declare("testing.boom", boom)
    with eager_jobs(on_commit=True), pytest.raises(LookupError, match="at commit"):  # noqa: SIM117
        with django_capture_on_commit_callbacks(execute=True):
            enqueue("testing.boom")


@pytest.mark.django_db
def test_eager_runs_django_tasks() -> None:
    with eager_jobs() as runs:
        result = tasks.add.enqueue(2, 3)
        awaited = tasks.async_add.enqueue(4, 5)
        with pytest.raises(ValueError, match="boom"):
            tasks.explode.enqueue("boom")
        with pytest.raises(ConnectionError, match="first attempt"):
            tasks.flaky.enqueue()  # eager mode runs a job once: no retries
    assert int(result.id) < 0 and int(awaited.id) < 0
    assert [r.return_value for r in runs[:2]] == [5, 9]
    assert runs.entrypoints == ["django_tasks:default"] * 4
    assert _count("queue_table") == 0 and _count("results_table") == 0


@pytest.mark.django_db
@pytest.mark.pgqueue_eager(propagate=False)
def test_pgqueue_eager_fixture_takes_the_marker(calls: Calls, pgqueue_eager: EagerJobs) -> None:
    def boom(job: Job) -> None:
        raise LookupError("quiet")

    calls.declare("testing.boom", boom)
    enqueue("testing.boom")
    assert isinstance(pgqueue_eager.errors[0], LookupError)


# -- the TEST_MODE setting ------------------------------------------------------------------


def _test_mode(mode: str) -> Any:
    return override_settings(PGQUEUE_SYNC={**get_settings_raw(), "TEST_MODE": mode})


def get_settings_raw() -> dict[str, Any]:
    from django.conf import settings

    return dict(settings.PGQUEUE_SYNC)


@pytest.mark.django_db
def test_test_mode_capture_setting() -> None:
    with _test_mode("capture"):
        [job_id] = enqueue(SEND, b"1")
        tasks.add.enqueue(1, 2)
    assert job_id is not None and job_id < 0
    captured = settings_captured_jobs()
    assert captured.entrypoints == [SEND, "django_tasks:default"]
    assert _count("queue_table") == 0


def test_test_mode_recordings_are_reset_between_tests() -> None:
    assert len(settings_captured_jobs()) == 0  # the previous test's jobs are gone


@pytest.mark.django_db
def test_test_mode_eager_settings() -> None:
    order = _order()
    with _test_mode("eager"):
        enqueue(SEND, str(order.pk).encode())
    order.refresh_from_db()
    assert order.sent
    second = _order()
    with _test_mode("eager_on_commit"):
        with transaction.atomic():
            enqueue(SEND, str(second.pk).encode())
        second.refresh_from_db()
        assert not second.sent  # TestCase never commits: the callback never ran
    assert _count("queue_table") == 0


def test_settings_interceptor_is_one_per_mode() -> None:
    assert settings_interceptor("eager") is settings_interceptor("eager")
    assert settings_interceptor("eager") is not settings_interceptor("eager_on_commit")
    with pytest.raises(ValueError, match="TEST_MODE"):
        settings_interceptor("lazy")


@pytest.mark.django_db
def test_explicit_helpers_win_over_the_setting() -> None:
    with _test_mode("eager"), capture_jobs() as jobs:
        enqueue("not.declared")  # captured, so eager mode never looks for a handler
    assert jobs.entrypoints == ["not.declared"]


# -- drain ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_drain_runs_a_views_job_inside_the_test_transaction(
    client: Any, pgqueue_drain: Callable[..., DrainReport]
) -> None:
    response = client.get("/orders/", {"email": "d@example.com"})
    job_id = response.json()["job"]
    assert job_id > 0 and _count("queue_table") == 1
    with worker_connect() as other:  # the job is the test's, invisible elsewhere
        query = sql.SQL("SELECT count(*) FROM {}").format(
            get_settings().db_settings.ident("queue_table"))
        row = other.execute(query).fetchone()
        assert row is not None and row[0] == 0
    report = pgqueue_drain()
    assert report.counts == {"successful": 1} and report.total == 1 and report.errors == []
    assert report.jobs == [(job_id, SEND, "successful")]
    assert Order.objects.get().sent
    assert _count("queue_table") == 0
    assert _statuses(job_id) == ["queued", "picked", "successful"]
    assert connection.in_atomic_block  # never committed
    assert pgqueue_drain().total == 0  # nothing left


@pytest.mark.django_db
def test_drain_records_failures_and_held_jobs(calls: Calls) -> None:
    def boom(job: Job) -> None:
        Order.objects.create(email="written-before-failing")
        raise LookupError("handler failed")

    calls.declare("testing.boom", boom)
    calls.declare("testing.hold", boom, on_failure="hold")
    [failing] = enqueue("testing.boom")
    [held] = enqueue("testing.hold")
    report = drain()
    assert report.counts == {"exception": 1, "failed": 1}
    assert {(e.id, e.status, type(e.error)) for e in report.errors} == {
        (failing, "exception", LookupError), (held, "failed", LookupError)}
    assert _queue_status(failing) is None and _statuses(failing)[-1] == "exception"
    assert _queue_status(held) == "failed"
    # A failure that is not a database error keeps the handler's writes, as in production.
    assert Order.objects.filter(email="written-before-failing").count() == 2
    with pytest.raises(LookupError):
        report.raise_errors()


@pytest.mark.django_db
def test_a_database_error_in_a_handler_leaves_the_test_transaction_usable(calls: Calls) -> None:
    def bad_sql(job: Job) -> None:
        Order.objects.create(email="rolled-back")
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")

    calls.declare("testing.bad_sql", bad_sql)
    [job_id] = enqueue("testing.bad_sql")
    report = drain()
    assert report.counts == {"exception": 1}
    assert "no_such_table" in str(report.errors[0].error)
    assert not Order.objects.filter(email="rolled-back").exists()
    assert _statuses(job_id)[-1] == "exception"


@pytest.mark.django_db
def test_drain_retries_without_delay_in_the_same_drain(calls: Calls) -> None:
    def flaky(job: Job) -> str:
        calls.record(job)
        if job.attempts == 0:
            raise RetryRequested(delay=0, reason="try again")
        return "ok"

    calls.declare("testing.flaky", flaky)
    [job_id] = enqueue("testing.flaky")
    report = drain()
    assert report.jobs == [(job_id, "testing.flaky", "retried"),
                           (job_id, "testing.flaky", "successful")]
    assert [job.attempts for job in calls.jobs] == [0, 1]
    assert _statuses(job_id) == ["queued", "picked", "queued", "picked", "successful"]


@pytest.mark.django_db
def test_drain_bounds_runs_and_leaves_delayed_retries_queued(calls: Calls) -> None:
    def later(job: Job) -> None:
        raise RetryRequested(delay=60)

    calls.declare("testing.later", later)
    calls.declare("testing.ok", lambda job: None)
    [later_id] = enqueue("testing.later")
    enqueue(["testing.ok"] * 3)
    assert drain(max_jobs=2, batch_size=1).total == 2
    report = drain()
    assert report.total == 2  # the delayed retry never becomes due inside the test
    assert _queue_status(later_id) == "queued"
    assert _count("queue_table") == 1


@pytest.mark.django_db
def test_drain_can_select_entrypoints(calls: Calls) -> None:
    calls.declare("testing.a", lambda job: None)
    calls.declare("testing.b", lambda job: None)
    enqueue(["testing.a", "testing.b", "testing.b"])
    report = drain(entrypoints=["testing.b"])
    assert report.counts == {"successful": 2}
    assert {job.entrypoint for job in report.jobs} == {"testing.b"}
    assert _count("queue_table") == 1
    with pytest.raises(UnknownEntrypointError, match="'testing.a'"):
        drain(entrypoints=["testing.c"])


@pytest.mark.django_db
def test_async_handlers_run_on_the_test_connection(calls: Calls) -> None:
    async def send(job: Job) -> int:
        assert job.payload is not None
        return int(await Order.objects.filter(pk=int(job.payload)).aupdate(sent=True))

    calls.declare("testing.async", send)
    first, second = _order(), _order()
    with eager_jobs() as runs:
        enqueue("testing.async", str(first.pk).encode())
    assert runs[0].return_value == 1
    enqueue("testing.async", str(second.pk).encode())
    assert drain().counts == {"successful": 1}
    assert Order.objects.filter(sent=True).count() == 2


@pytest.mark.django_db
def test_drain_stores_results_of_entrypoints_that_ask(calls: Calls) -> None:
    calls.declare("testing.result", lambda job: {"doubled": int(job.payload or b"0") * 2},
                  store_result=True)
    [job_id] = enqueue("testing.result", b"21")
    assert drain().counts == {"successful": 1}
    assert job_id is not None
    stored = Results(get_queries()).get_result(job_id)
    assert stored is not None and stored.result == {"doubled": 42}


@pytest.mark.django_db
def test_drain_runs_django_tasks_and_results_refresh() -> None:
    added = tasks.add.enqueue(2, 3)
    awaited = tasks.async_add.enqueue(4, 5)
    failed = tasks.explode.enqueue("boom")
    contextual = tasks.with_context.enqueue("hi")
    report = drain()
    assert report.counts == {"successful": 3, "exception": 1}
    added.refresh()
    assert added.status == TaskResultStatus.SUCCESSFUL and added.return_value == 5
    assert added.worker_ids and added.finished_at is not None
    assert tasks.async_add.get_result(awaited.id).return_value == 9
    assert tasks.with_context.get_result(contextual.id).return_value == {
        "label": "hi", "attempt": 1, "id": contextual.id}
    failed.refresh()
    assert failed.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in failed.errors] == ["builtins.ValueError"]


@pytest.mark.django_db
def test_drain_retries_django_tasks() -> None:
    flaky = tasks.flaky.enqueue()
    doomed = tasks.always_fails.enqueue()
    report = drain()
    assert report.counts == {"retried": 2, "successful": 1, "exception": 1}
    flaky.refresh()
    assert flaky.status == TaskResultStatus.SUCCESSFUL and flaky.return_value == 2
    assert flaky.attempts == 2
    assert [e.exception_class_path for e in flaky.errors] == ["builtins.ConnectionError"]
    doomed.refresh()
    assert doomed.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in doomed.errors] == ["builtins.KeyError"] * 2


# -- transactional fixtures -----------------------------------------------------------------


def _committed_jobs() -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(
        get_settings().db_settings.ident("queue_table"))
    with worker_connect() as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.django_db(transaction=True)
def test_truncate_empties_every_queue_table(pgqueue_truncate: None) -> None:
    enqueue(SEND, b"1")
    tasks.add.enqueue(1, 1)
    assert _committed_jobs() == 2
    truncate_queue_tables()
    assert _committed_jobs() == 0
    for table in ("queue_table_log", "results_table", "statistics_table", "schedules_table"):
        assert _count(table) == 0, table


@pytest.mark.django_db(transaction=True)
def test_pgqueue_worker_runs_committed_jobs(
    client: Any, pgqueue_worker: Callable[..., Any]
) -> None:
    response = client.get("/orders/", {"email": "w@example.com"})
    assert response.status_code == 200
    added = tasks.add.enqueue(20, 22)
    pgq = pgqueue_worker()
    assert Order.objects.get().sent
    added.refresh()
    assert added.status == TaskResultStatus.SUCCESSFUL and added.return_value == 42
    assert added.worker_ids == [str(pgq.qm.queue_manager_id)]
    assert _committed_jobs() == 0


@pytest.mark.django_db(transaction=True)
def test_pgqueue_worker_times_out(calls: Calls, pgqueue_worker: Callable[..., Any]) -> None:
    release = threading.Event()

    def slow(job: Job) -> None:
        release.wait(10)

    calls.declare("testing.slow", slow)
    enqueue("testing.slow")
    # Still running at the timeout; released soon after, so the worker can stop.
    releaser = threading.Timer(1.0, release.set)
    releaser.start()
    try:
        with pytest.raises(TimeoutError, match="did not drain"):
            pgqueue_worker("--no-tasks", timeout=0.5, shutdown_timeout=5.0)
    finally:
        release.set()
        releaser.cancel()
        releaser.join(10)


# -- the plugin without Django ---------------------------------------------------------------


def test_the_plugin_loads_without_django(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_plain.py").write_text(textwrap.dedent("""
        import sys

        def test_nothing_imports_django():
            assert "django" not in sys.modules
    """))
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        # Blocking the entry point's name keeps the module from loading twice once installed.
        [sys.executable, "-m", "pytest", "-q", "-p", "no:django", "-p", "no:cacheprovider",
         "-p", "no:pgqueue_sync_django", "-p", "pgqueue_sync.contrib.django.pytest_plugin",
         "test_plain.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout

