"""The Django worker factory: a view's job run by a real worker on the test database."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import django.db
import pytest
from django.db import connection, connections
from django.test import override_settings
from psycopg import sql

from pgqueue_sync import supervisor
from pgqueue_sync.contrib.django import registry
from pgqueue_sync.contrib.django._compat import TaskResultStatus
from pgqueue_sync.contrib.django.conf import get_settings
from pgqueue_sync.contrib.django.errors import DjangoConfigurationError
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
def test_handler_threads_close_stale_connections_around_each_job(
    client: Any, committed: None, declare: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    original = django.db.close_old_connections

    def recording_close(**kwargs: Any) -> None:
        with lock:
            events.append(("close", threading.current_thread().name))
        original(**kwargs)

    def probe(job: Any) -> None:
        with lock:
            events.append(("probe", threading.current_thread().name))
            events.append(("database", connections["default"].settings_dict["NAME"]))
        Order.objects.filter(pk=int(job.payload)).update(sent=True)  # the ORM works here

    monkeypatch.setattr(django.db, "close_old_connections", recording_close)
    declare("tests.probe")(probe)
    order = Order.objects.create(email="p@example.com")
    from pgqueue_sync.contrib.django import enqueue

    enqueue("tests.probe", str(order.pk).encode())

    drain("--entrypoint", "tests.probe", "--no-tasks")

    order.refresh_from_db()
    assert order.sent
    handler = next(name for kind, name in events if kind == "probe")
    assert handler != threading.current_thread().name
    in_handler = [kind for kind, name in events if name == handler]
    assert in_handler == ["close", "probe", "close"]
    assert ("database", connection.settings_dict["NAME"]) in events


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
