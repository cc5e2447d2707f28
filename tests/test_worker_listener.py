"""The listener's self-probe: healthy workers echo it; a deaf listener can stop the worker."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgqueue_sync import options
from pgqueue_sync.app import PgQueuer
from pgqueue_sync.drivers import SyncPsycopgPoolDriver, connect
from pgqueue_sync.errors import FailingListenerError
from tests.worker_helpers import pool_for, running, wait_for


class DeafListenerDriver(SyncPsycopgPoolDriver):
    """Listens on another database, so the worker's own notifications never arrive."""

    def __init__(self, pool: Any, listen_dsn: str) -> None:
        super().__init__(pool)
        self.listen_dsn = listen_dsn

    def new_connection(self) -> psycopg.Connection[Any]:
        return connect(self.listen_dsn)


@pytest.fixture
def fast_health_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "HEALTH_CHECK_INTERVAL", 0.2)
    monkeypatch.setattr(options, "HEALTH_CHECK_TIMEOUT", timedelta(seconds=0.5))


def test_running_worker_answers_its_own_probe(dsn: str) -> None:
    with pool_for(dsn) as pool:
        pgq = PgQueuer.from_psycopg_pool(pool)
        pgq.entrypoint("noop")(lambda job: None)
        with running(pgq, dequeue_timeout=30):
            assert wait_for(lambda: pgq.qm.listener_healthy(timeout=2), timeout=10)


def test_deaf_listener_stops_the_worker_when_asked(
    dsn: str, server_dsn: str, fast_health_checks: None
) -> None:
    other = make_conninfo(dsn, dbname=conninfo_to_dict(server_dsn).get("dbname", "postgres"))
    errors: list[BaseException] = []
    with pool_for(dsn) as pool:
        pgq = PgQueuer(DeafListenerDriver(pool, other))
        pgq.entrypoint("noop")(lambda job: None)

        def target() -> None:
            try:
                pgq.run(dequeue_timeout=30, shutdown_on_listener_failure=True)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=target, name="test-deaf-worker", daemon=True)
        thread.start()
        try:
            thread.join(timeout=15)
            assert not thread.is_alive(), "worker kept running with a deaf listener"
        finally:
            pgq.shutdown.set()
            thread.join(timeout=15)
    assert len(errors) == 1 and isinstance(errors[0], FailingListenerError)


def test_deaf_listener_only_warns_by_default(
    dsn: str, server_dsn: str, fast_health_checks: None, caplog: pytest.LogCaptureFixture
) -> None:
    other = make_conninfo(dsn, dbname=conninfo_to_dict(server_dsn).get("dbname", "postgres"))
    with pool_for(dsn) as pool:
        pgq = PgQueuer(DeafListenerDriver(pool, other))
        pgq.entrypoint("noop")(lambda job: None)
        with running(pgq, dequeue_timeout=30) as thread:
            wait_for(lambda: "listener health check failed" in caplog.text, timeout=10)
            assert thread.is_alive()


def test_shutdown_set_from_another_thread_stops_an_idle_worker_at_once(dsn: str) -> None:
    with pool_for(dsn) as pool:
        pgq = PgQueuer.from_psycopg_pool(pool)
        pgq.entrypoint("noop")(lambda job: None)
        with running(pgq, dequeue_timeout=60) as thread:
            assert wait_for(lambda: pgq.qm.listener_healthy(timeout=2), timeout=10)  # idle now
            pgq.shutdown.set()
            thread.join(timeout=3)  # far below dequeue_timeout
            assert not thread.is_alive(), "run() waited for the poll interval"
