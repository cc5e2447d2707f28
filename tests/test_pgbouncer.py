"""Producers, workers and the scheduler through a real PgBouncer in transaction mode.

Each test starts PgBouncer (:mod:`tests.pgbouncer`; skipped without the
binary) in front of a fresh test database. Workers and the scheduler are real
``pgq-sync run`` processes (``tests.apps.pooled_worker``) whose factories build
their pools with ``prepare_threshold=None``, as docs/pgbouncer.md says; their
stderr goes to a file under ``tmp_path``. Statements are repeated well past
psycopg's prepare threshold (5), where PgBouncer 1.18 breaks prepared
statements. Every wait is on a condition with a deadline, and every process
and PgBouncer is stopped in ``finally``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from pgqueue_sync import DBSettings, PgQueuer, PoolerError, Queries, SyncPsycopgDriver, options

from .pgbouncer import Bouncer, pgbouncer
from .worker_helpers import running, wait_for

ROOT = Path(__file__).resolve().parent.parent
#: The line a worker logs once its threads are up.
STARTED = "started: entrypoints"
#: How long a ``pgq-sync run`` child may take to import, connect and start.
BOOT_TIMEOUT = 30.0
#: How long a child gets to exit after SIGTERM.
STOP_TIMEOUT = 20.0
#: More executions of each statement than psycopg's prepare threshold (5).
REPEAT = 12
#: The words of the one warning a deaf listener gets.
DEAF_WARNING = "use --listen-dsn"


@pytest.fixture
def bouncer(server_dsn: str) -> Iterator[Bouncer]:
    with pgbouncer(server_dsn) as running_bouncer:
        yield running_bouncer


@pytest.fixture
def pooled_dsn(bouncer: Bouncer, dsn: str) -> str:
    """The test database, through PgBouncer."""
    return bouncer.dsn(dsn)


def bouncer_pool(dsn: str, size: int = 3, **kwargs: Any) -> ConnectionPool[Any]:
    """A pool following the rule for poolers: ``prepare_threshold=None``."""
    return ConnectionPool(dsn, min_size=1, max_size=size, open=True,
                          kwargs={"autocommit": True, "prepare_threshold": None, **kwargs})


class RunProcess:
    """One ``pgq-sync --dsn DSN run tests.apps.pooled_worker:<app> [OPTIONS] -- --events F``."""

    def __init__(self, tmp_path: Path, name: str, dsn: str, app: str, *options: str,
                 env: dict[str, str] | None = None, app_args: tuple[str, ...] = ()) -> None:
        self.events = tmp_path / f"{name}.events"
        self.log_path = tmp_path / f"{name}.log"
        argv = [sys.executable, "-m", "pgqueue_sync", "--dsn", dsn, "run",
                f"tests.apps.pooled_worker:{app}", *options, "--",
                "--events", str(self.events), *app_args]
        environment = {k: v for k, v in os.environ.items() if k != "PGQUEUE_SYNC_LISTEN_DSN"}
        environment.update(env or {})
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=environment,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def runs(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        return [json.loads(line) for line in self.events.read_text().splitlines()]

    def wait_for_log(self, text: str, timeout: float = BOOT_TIMEOUT) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{self.log()}")
            return text in self.log()

        wait_for(seen, timeout=timeout, interval=0.05, what=f"{text!r} in the log")

    def stop(self) -> int:
        """SIGTERM, then the exit status (killed after STOP_TIMEOUT)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
            raise AssertionError(f"did not stop within {STOP_TIMEOUT}s:\n{self.log()}") from None


def handled(process: RunProcess) -> dict[int, float]:
    """Job id -> when its handler started."""
    return {run["job"]: run["t"] for run in process.runs() if "job" in run}


def assert_clean(log: str) -> None:
    for bad in ("Traceback", "prepared statement", "ERROR"):
        assert bad not in log, f"{bad!r} in the log:\n{log}"


# -- producers ------------------------------------------------------------------------------


def test_producers_enqueue_single_and_batch_past_the_prepare_threshold(
    pooled_dsn: str, conn: psycopg.Connection[Any]
) -> None:
    with bouncer_pool(pooled_dsn) as pool:
        queries = Queries.from_pool(pool, settings=DBSettings())
        for i in range(REPEAT):
            queries.enqueue("ping", f"single {i}".encode())
            queries.enqueue(["ping"] * 3, [f"batch {i}.{n}".encode() for n in range(3)])
            queries.enqueue("ping", None, dedupe_key=f"key-{i}", on_conflict="skip")
        queries.queue_size()
    # One connection of its own, as a script would open it.
    with psycopg.connect(pooled_dsn, autocommit=True, prepare_threshold=None) as own:
        single = Queries(SyncPsycopgDriver(own), settings=DBSettings())
        for i in range(REPEAT):
            single.enqueue("ping", f"own {i}".encode())
    count = conn.execute("SELECT count(*) FROM pgqueuer").fetchone()
    assert count is not None and count[0] == REPEAT * (1 + 3 + 1 + 1)


def test_prepared_statements_through_pgbouncer_raise_the_fix(pooled_dsn: str) -> None:
    """Without prepare_threshold=None, two connections through one PgBouncer server
    connection collide on psycopg's prepared statement names: the error says what
    to change instead of a bare 'prepared statement "_pg3_0" already exists'."""
    first = psycopg.connect(pooled_dsn, autocommit=True)
    second = psycopg.connect(pooled_dsn, autocommit=True)
    try:
        producers = [Queries(SyncPsycopgDriver(c), settings=DBSettings()) for c in (first, second)]
        with pytest.raises(PoolerError) as caught:
            for i in range(REPEAT):
                for queries in producers:
                    queries.enqueue("ping", f"{i}".encode())
    finally:
        first.close()
        second.close()
    message = str(caught.value)
    assert "prepare_threshold=None" in message and "docs/pgbouncer.md" in message
    assert caught.value.sqlstate in ("26000", "42P05")
    assert not caught.value.transient


# -- workers ----------------------------------------------------------------------------------


def start_of(process: RunProcess, job: int) -> float | None:
    """When the handler of ``job`` started, or None."""
    return handled(process).get(job)


def enqueue_one_by_one(queries: Queries, process: RunProcess, count: int,
                       timeout: float) -> list[float]:
    """Enqueue ``count`` jobs, each after the previous one was handled; the latencies."""
    latencies = []
    for i in range(count):
        sent = time.time()
        job = int(queries.enqueue("ping", f"{i}".encode())[0])
        started = wait_for(functools.partial(start_of, process, job), timeout=timeout,
                           what=f"job {job} handled")
        latencies.append(started - sent)
    return latencies


def test_worker_with_listen_dsn_wakes_on_notify(
    tmp_path: Path, pooled_dsn: str, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    # Polls every 30 s at most: only a notification can wake it within a second.
    worker = RunProcess(tmp_path, "listen", pooled_dsn, "worker", "--listen-dsn", dsn,
                        "--dequeue-timeout", "60", "--poll-interval", "30",
                        "--concurrency", "2")
    try:
        worker.wait_for_log(STARTED)
        # The listener's session is a direct one, named after the worker.
        wait_for(lambda: conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
            "'pgq-sync worker %%' AND datname = current_database()").fetchone() == (1,),
            timeout=BOOT_TIMEOUT, what="the listener's session")
        with bouncer_pool(pooled_dsn) as pool:
            queries = Queries.from_pool(pool, settings=DBSettings())
            latencies = enqueue_one_by_one(queries, worker, REPEAT, timeout=10)
            batch = queries.enqueue(["ping"] * 20, [None] * 20)
            wait_for(lambda: set(map(int, batch)) <= set(handled(worker)), timeout=10,
                     what="the batch handled")
        assert max(latencies) < 2.0, latencies
        assert worker.stop() == 0
    finally:
        worker.stop()
    log = worker.log()
    assert_clean(log)
    assert DEAF_WARNING not in log


def test_worker_takes_the_listen_dsn_from_the_environment(
    tmp_path: Path, pooled_dsn: str, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    worker = RunProcess(tmp_path, "env", pooled_dsn, "worker", "--dequeue-timeout", "60",
                        "--poll-interval", "30", env={"PGQUEUE_SYNC_LISTEN_DSN": dsn})
    try:
        worker.wait_for_log(STARTED)
        with bouncer_pool(pooled_dsn) as pool:
            queries = Queries.from_pool(pool, settings=DBSettings())
            latencies = enqueue_one_by_one(queries, worker, 3, timeout=10)
        assert max(latencies) < 2.0, latencies
    finally:
        worker.stop()
    assert "listen_dsn" in worker.log()  # "listener: LISTEN on host:port/db (listen_dsn)"
    assert "password" not in worker.log()


def test_worker_with_poll_only_drains(tmp_path: Path, pooled_dsn: str) -> None:
    worker = RunProcess(tmp_path, "poll", pooled_dsn, "worker", "--poll-only",
                        "--poll-interval", "0.5", "--dequeue-timeout", "60")
    try:
        worker.wait_for_log(STARTED)
        with bouncer_pool(pooled_dsn) as pool:
            queries = Queries.from_pool(pool, settings=DBSettings())
            latencies = enqueue_one_by_one(queries, worker, REPEAT, timeout=10)
            batch = queries.enqueue(["ping"] * 50, [None] * 50)
            wait_for(lambda: set(map(int, batch)) <= set(handled(worker)), timeout=20,
                     what="the batch handled")
        # Each waited at most one poll interval (plus the claim and a loaded machine).
        assert max(latencies) < 0.5 + 1.5, latencies
        assert worker.stop() == 0
    finally:
        worker.stop()
    log = worker.log()
    assert "poll-only" in log
    assert_clean(log)
    assert "health check" not in log


def test_worker_behind_pgbouncer_without_either_warns_once_and_polls(
    tmp_path: Path, pooled_dsn: str
) -> None:
    """LISTEN through PgBouncer in transaction mode 'works' and hears nothing: the
    first probe fails, the worker says how to fix it and polls meanwhile."""
    worker = RunProcess(tmp_path, "deaf", pooled_dsn, "worker", "--poll-interval", "0.5",
                        "--dequeue-timeout", "60")
    try:
        worker.wait_for_log(STARTED)
        # The first probe is sent at start and waits HEALTH_CHECK_TIMEOUT for its echo.
        timeout = options.HEALTH_CHECK_TIMEOUT.total_seconds() + BOOT_TIMEOUT
        worker.wait_for_log(DEAF_WARNING, timeout=timeout)
        with bouncer_pool(pooled_dsn) as pool:
            queries = Queries.from_pool(pool, settings=DBSettings())
            latencies = enqueue_one_by_one(queries, worker, REPEAT, timeout=10)
        assert max(latencies) < 0.5 + 1.5, latencies  # polled, not dequeue_timeout
        assert worker.stop() == 0
    finally:
        worker.stop()
    log = worker.log()
    assert log.count(DEAF_WARNING) == 1, log
    assert "--poll-only" in log


def test_a_deaf_listener_warns_once_however_often_its_probe_fails(
    pooled_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(options, "HEALTH_CHECK_INTERVAL", 0.1)
    monkeypatch.setattr(options, "HEALTH_CHECK_TIMEOUT", timedelta(seconds=0.3))
    caplog.set_level(logging.INFO, logger="pgqueue_sync")
    done = threading.Event()
    with bouncer_pool(pooled_dsn) as pool:
        pgq = PgQueuer.from_psycopg_pool(pool, settings=DBSettings())
        pgq.entrypoint("ping")(lambda job: done.set())
        with running(pgq, dequeue_timeout=60, poll_interval=0.2, log_aggregation_interval=0):
            wait_for(lambda: pgq.qm._listening.failures >= 5, timeout=20,
                     what="five failed probes")
            pgq.queries.enqueue("ping", None)
            assert done.wait(5), "the worker did not poll"
    warnings = [r for r in caplog.records if DEAF_WARNING in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_worker_without_prepare_threshold_none_stops_with_the_fix(
    tmp_path: Path, server_dsn: str, dsn: str
) -> None:
    """A factory that forgot prepare_threshold=None: the worker stops with one line
    that says what to change, instead of retrying a broken statement forever."""
    with pgbouncer(server_dsn, pool_size=2) as narrow:
        through = narrow.dsn(dsn)
        worker = RunProcess(tmp_path, "prepared", through, "worker", "--poll-only",
                            "--poll-interval", "0.05", "--batch-size", "1",
                            app_args=("--prepare-threshold", "5"))
        try:
            worker.wait_for_log(STARTED)
            with bouncer_pool(through, size=1) as pool:
                queries = Queries.from_pool(pool, settings=DBSettings())
                deadline = time.monotonic() + 60
                while worker.proc.poll() is None and time.monotonic() < deadline:
                    queries.enqueue(["ping"] * 5, [None] * 5)
                    wait_exit(worker, 0.2)
            assert worker.proc.poll() is not None, "the worker kept running:\n" + worker.log()
        finally:
            worker.stop()
    log = worker.log()
    assert worker.proc.returncode == 2, log
    errors = [line for line in log.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "prepare_threshold=None" in errors[0], log
    assert "Traceback" not in log


def wait_exit(process: RunProcess, seconds: float) -> None:
    """Wait up to ``seconds`` for the process to exit."""
    try:
        process.proc.wait(seconds)
    except subprocess.TimeoutExpired:
        pass


# -- the scheduler ----------------------------------------------------------------------------


def test_scheduler_runs_a_schedule_through_pgbouncer(tmp_path: Path, pooled_dsn: str) -> None:
    scheduler = RunProcess(tmp_path, "sched", pooled_dsn, "scheduler")
    try:
        wait_for(lambda: len(scheduler.runs()) >= 7 or scheduler.proc.poll() is not None,
                 timeout=BOOT_TIMEOUT, what="seven runs of the every-second schedule")
        assert scheduler.proc.poll() is None, scheduler.log()
        assert scheduler.stop() == 0
    finally:
        scheduler.stop()
    assert_clean(scheduler.log())
