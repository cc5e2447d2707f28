"""The Django worker factory: a view's job run by a real worker on the test database."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection, connections
from django.test import override_settings
from psycopg import sql

from pgqueue_sync import launcher as supervisor
from pgqueue_sync.contrib.django import registry
from pgqueue_sync.contrib.django._compat import TaskResultStatus
from pgqueue_sync.contrib.django.conf import get_settings
from pgqueue_sync.contrib.django.errors import DjangoConfigurationError
from pgqueue_sync.contrib.django.registry import tidy_connections
from pgqueue_sync.contrib.django.worker import (
    POOL_NAME,
    POOL_SPARE_CONNECTIONS,
    create_worker,
)
from pgqueue_sync.errors import ConnectionFailed
from pgqueue_sync.options import CONCURRENCY

from .helpers import worker_connect
from .shop import tasks
from .shop.models import Order

DRAIN = {"mode": "drain", "dequeue_timeout": 0.5, "shutdown_timeout": 10.0}





@pytest.fixture
def declare() -> Iterator[Callable[..., Any]]:
    """Declare test-only entrypoints; the process-wide registry is restored afterwards."""
    saved_entrypoints, saved_schedules = registry.entrypoints(), registry.schedules()
    yield registry.entrypoint
    registry.clear()
    for name, declared in saved_entrypoints.items():
        registry.entrypoint(name, **declared.options)(declared.func)
    for (entrypoint, expression), declared in saved_schedules.items():
        registry.schedule(entrypoint, expression, **declared.options)(declared.func)


def drain(*args: str, **options: Any) -> None:
    """Run the factory under the supervisor until no work is left (blocks, bounded by drain)."""
    supervisor.run(create_worker, list(args), **{**DRAIN, **options})


def queue_rows(*columns: str) -> list[tuple[Any, ...]]:
    names = get_settings().db_settings
    query = sql.SQL("SELECT {} FROM {} ORDER BY id").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), names.ident("queue_table"))
    with worker_connect() as conn:
        return conn.execute(query).fetchall()


def log_statuses(job_id: int) -> list[str]:
    names = get_settings().db_settings
    query = sql.SQL("SELECT status::text FROM {} WHERE job_id = %s ORDER BY id").format(
        names.ident("queue_table_log"))
    with worker_connect() as conn:
        return [row[0] for row in conn.execute(query, (job_id,))]


@pytest.mark.django_db(transaction=True)
def test_a_job_enqueued_by_a_view_is_run_by_the_worker(client: Any, committed: None) -> None:
    response = client.get("/orders/?email=x@example.com")
    assert response.status_code == 200
    order_id, job_id = response.json()["order"], response.json()["job"]
    assert not Order.objects.get(pk=order_id).sent
    assert queue_rows("id", "entrypoint") == [(job_id, "shop.send_confirmation")]

    drain()

    assert Order.objects.get(pk=order_id).sent
    assert queue_rows("id") == []
    assert log_statuses(job_id)[-1] == "successful"


@pytest.mark.django_db(transaction=True)
def test_a_view_that_fails_leaves_neither_the_row_nor_the_job(
    client: Any, committed: None
) -> None:
    with pytest.raises(RuntimeError, match="failed after enqueueing"):
        client.get("/orders/?email=y@example.com&fail=1")
    assert not Order.objects.exists()
    assert queue_rows("id") == []

    drain()  # nothing to do: returns at once
    assert not Order.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_worker_connects_to_the_test_database() -> None:
    test_name = connection.settings_dict["NAME"]
    assert test_name.startswith("test_pgqs_django")
    with create_worker([]) as pgq:
        pool = pgq.connection.pool  # type: ignore[attr-defined]
        assert pool.name == POOL_NAME
        assert pool.kwargs["dbname"] == test_name
        assert pool.max_size == CONCURRENCY + POOL_SPARE_CONNECTIONS  # no WORKER concurrency
        with pool.connection() as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (test_name,)
        # The LISTEN connection: made from the pool's (Django-derived) keywords.
        listen = pgq.connection.new_connection()  # type: ignore[attr-defined]
        try:
            assert listen.autocommit
            assert listen.prepare_threshold is None  # as Django's: pooler-friendly
            assert listen.execute("SELECT current_database()").fetchone() == (test_name,)
            listen.execute("LISTEN ch_test")
        finally:
            listen.close()
    assert pool.closed


@pytest.mark.django_db(transaction=True)
def test_each_job_finds_the_connection_of_the_job_before_closed(
    committed: None, declare: Callable[..., Any]
) -> None:
    # CONN_MAX_AGE is 0 here: as after a request, the connection a job opened
    # is closed after it, and the next job in the same handler thread opens its own.
    seen: list[tuple[str, bool, str]] = []
    lock = threading.Lock()

    def probe(job: Any) -> None:
        wrapper = connections["default"]
        with lock:
            seen.append((threading.current_thread().name, wrapper.connection is None,
                         wrapper.settings_dict["NAME"]))
        Order.objects.filter(pk=int(job.payload)).update(sent=True)  # the ORM works here

    declare("tests.probe")(probe)
    orders = [Order.objects.create(email=f"p{i}@example.com") for i in range(3)]
    from pgqueue_sync.contrib.django import enqueue

    for order in orders:
        enqueue("tests.probe", str(order.pk).encode())

    drain("--entrypoint", "tests.probe", "--no-tasks", concurrency=1)

    assert Order.objects.filter(sent=True).count() == 3
    assert len(seen) == 3
    assert len({name for name, _, _ in seen}) == 1  # one handler thread ran them all
    assert seen[0][0] != threading.current_thread().name
    assert all(closed for _, closed, _ in seen)
    assert {database for _, _, database in seen} == {connection.settings_dict["NAME"]}


@pytest.mark.django_db(transaction=True)
def test_each_task_finds_the_connection_of_the_task_before_closed(committed: None) -> None:
    results = [tasks.connection_state.enqueue() for _ in range(3)]

    drain("--no-entrypoints", "--no-schedules", concurrency=1)

    values = []
    for result in results:
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL
        values.append(result.return_value)
    assert len({value["thread"] for value in values}) == 1
    assert all(value["closed_at_start"] for value in values)
    assert {value["database"] for value in values} == {connection.settings_dict["NAME"]}


def in_new_thread(body: Callable[[], Any]) -> Any:
    """``body()`` in a fresh thread (as a handler thread starts); its connections closed after."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = body()
        except BaseException as exc:
            box["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.mark.django_db(transaction=True)
def test_tidying_after_a_job_closes_its_connection_and_clears_the_query_log() -> None:
    def handler_thread() -> tuple[bool, int]:
        wrapper = connections["default"]
        tidy_connections()  # before the first job: nothing is open
        wrapper.force_debug_cursor = True
        Order.objects.exists()  # the job
        assert wrapper.connection is not None and len(wrapper.queries_log) == 1
        tidy_connections(after_job=True)  # CONN_MAX_AGE = 0: closed, as after a request
        return wrapper.connection is None, len(wrapper.queries_log)

    assert in_new_thread(handler_thread) == (True, 0)


@pytest.mark.django_db(transaction=True)
def test_a_connection_opened_between_jobs_is_checked_before_the_next_job() -> None:
    # The pass before a job is skipped while the thread has opened no connection
    # since the last pass found none: other code opening one must end that.
    def handler_thread() -> bool:
        wrapper = connections["default"]
        tidy_connections(after_job=True)  # the job before left nothing open
        tidy_connections()
        Order.objects.exists()  # between jobs, other code of the thread connects
        assert wrapper.connection is not None
        tidy_connections()  # before the next job: past CONN_MAX_AGE (0), so closed
        return wrapper.connection is None

    assert in_new_thread(handler_thread)


@pytest.mark.django_db(transaction=True)
def test_a_kept_connection_the_server_dropped_between_jobs_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if connection.settings_dict["OPTIONS"].get("pool"):
        pytest.skip("Django's pool allows no persistent connections (CONN_MAX_AGE must be 0)")
    # Persistent connections with health checks: the passes around each job
    # re-arm the check, so the next job's first query finds the dead connection
    # and reconnects instead of failing.
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", None)
    monkeypatch.setitem(connection.settings_dict, "CONN_HEALTH_CHECKS", True)

    def handler_thread() -> tuple[int, int]:
        wrapper = connections["default"]
        tidy_connections()
        Order.objects.exists()  # job 1: its connection is kept
        tidy_connections(after_job=True)
        assert wrapper.connection is not None
        dropped = wrapper.connection.info.backend_pid
        with worker_connect() as admin:
            # With a timeout, pg_terminate_backend waits until the backend is gone.
            gone = admin.execute("SELECT pg_terminate_backend(%s, 5000)", [dropped]).fetchone()
            assert gone == (True,), "the backend did not exit within 5 s"
        tidy_connections()
        Order.objects.exists()  # job 2 works
        replaced = wrapper.connection.info.backend_pid
        tidy_connections(after_job=True)
        return dropped, replaced

    dropped, replaced = in_new_thread(handler_thread)
    assert replaced != dropped


@pytest.mark.django_db(transaction=True)
def test_django_tasks_run_and_queues_can_be_selected(committed: None) -> None:
    default_result = tasks.add.enqueue(2, 3)
    emails_result = tasks.mark_sent.enqueue(Order.objects.create(email="t@example.com").pk)

    drain("-q", "emails", "--no-entrypoints")

    emails_result.refresh()
    default_result.refresh()
    assert emails_result.status == TaskResultStatus.SUCCESSFUL
    assert default_result.status == TaskResultStatus.READY

    drain()

    default_result.refresh()
    assert default_result.status == TaskResultStatus.SUCCESSFUL
    assert default_result.return_value == 5


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-tasks", "--no-entrypoints", "--no-schedules"], "nothing to run"),
        (["--entrypoint", "nope"], "no @entrypoint declaration named 'nope'"),
        (["-q", "nope"], "no TASKS backend has the queue(s) 'nope'"),
        (["-q", "emails", "--no-tasks"], "cannot go with --no-tasks"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--concurrency", "0"], "--concurrency must be >= 1"),
    ],
)
def test_bad_selections_are_configuration_errors(args: list[str], message: str) -> None:
    with pytest.raises(DjangoConfigurationError, match=re.escape(message)), create_worker(args):
        pass  # pragma: no cover - entering fails


@pytest.mark.django_db
def test_a_missing_task_module_is_named() -> None:
    settings = {**get_settings_dict(), "TASK_MODULES": ["tests.django_tests.shop.nonexistent"]}
    with override_settings(PGQUEUE_SYNC=settings), pytest.raises(
        DjangoConfigurationError, match=r"TASK_MODULES'\] entry 'tests.django_tests.shop.nonex"
    ), create_worker([]):
        pass  # pragma: no cover


@pytest.mark.django_db
def test_pool_sizes_come_from_the_settings() -> None:
    settings = {**get_settings_dict(), "POOL": {"min_size": 1, "max_size": 3}}
    with override_settings(PGQUEUE_SYNC=settings), create_worker(["--concurrency", "20"]) as pgq:
        pool = pgq.connection.pool  # type: ignore[attr-defined]
        assert (pool.min_size, pool.max_size) == (1, 3)
    with create_worker(["--concurrency", "20"]) as pgq:
        assert pgq.connection.pool.max_size == 20 + POOL_SPARE_CONNECTIONS  # type: ignore[attr-defined]


@pytest.mark.django_db
def test_an_unreachable_database_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(connection.settings_dict, "PORT", "1")
    monkeypatch.setitem(connection.settings_dict, "PASSWORD", "s3cret-pw")
    settings = {**get_settings_dict(), "POOL": {"timeout": 1}}
    with override_settings(PGQUEUE_SYNC=settings), pytest.raises(ConnectionFailed) as failed, \
            create_worker([]):
        pass  # pragma: no cover
    message = str(failed.value)
    assert "\n" not in message
    assert ":1/test_pgqs_django" in message
    assert "s3cret" not in message and "s3cret" not in caplog.text


def get_settings_dict() -> dict[str, Any]:
    from django.conf import settings

    return dict(settings.PGQUEUE_SYNC)
