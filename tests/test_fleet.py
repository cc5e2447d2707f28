"""A fleet: 32 worker processes through PgBouncer to a server of 100 connections.

Four ``pgq-sync run --processes 8`` groups (two with ``--listen-dsn`` straight
to the server, two with ``--poll-only``) reach a private cluster limited to
``max_connections = 100`` through one PgBouncer in transaction mode. They
drain a queue filled through PgBouncer: every job runs exactly once, nothing
is left, no process logs a connection error, and the server never sees more
than its limit. Real processes, a real PgBouncer, a real server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgqueue_sync import DBSettings, Queries, SyncPsycopgDriver
from pgqueue_sync.schema import Schema

from .conftest import create_database
from .pgbouncer import pgbouncer

GROUPS = 4
PROCESSES = 8
JOBS = 3_000
MAX_CONNECTIONS = 100
#: Server connections PgBouncer may open for the fleet's database.
BOUNCER_POOL = 20
#: Each worker process's own pool, through PgBouncer.
WORKER_POOL = 2
#: Start-up of 32 interpreters on 2 cores, then the drain (not a timing assertion).
DRAIN_DEADLINE = 240.0
STOP_DEADLINE = 60.0
SAMPLE_INTERVAL = 0.5
#: What no process of a healthy fleet logs.
TROUBLE = ("Traceback", "too many clients", "remaining connection slots", "ERROR",
           "could not connect", "connection failed")


@pytest.fixture(scope="module")
def small_server() -> Iterator[str]:
    """The admin DSN of a private cluster with ``max_connections = 100``."""
    from tests.faults import PrivateCluster

    reason = PrivateCluster.available()
    if reason is not None:
        pytest.skip(reason)
    cluster = PrivateCluster.create(
        config={**PrivateCluster.CONFIG, "max_connections": str(MAX_CONNECTIONS)})
    try:
        yield cluster.dsn
    finally:
        cluster.remove()


@pytest.fixture
def fleet_dsn(small_server: str) -> str:
    target = create_database(small_server, f"pgqs_fleet_{uuid.uuid4().hex[:10]}")
    with psycopg.connect(target, autocommit=True) as conn:
        Schema(SyncPsycopgDriver(conn), DBSettings()).install()
    return target


class Sampler:
    """Samples the server's client backends every :data:`SAMPLE_INTERVAL` seconds."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-fleet-sampler")

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.wait(SAMPLE_INTERVAL):
                [(count,)] = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                ).fetchall()
                self.peak = max(self.peak, int(count))


@contextlib.contextmanager
def group(index: int, tmp_path: Path, pooled: str, events: Path, *mode: str) -> Iterator[
        subprocess.Popen[bytes]]:
    """One ``pgq-sync run --processes 8`` supervisor, stopped (SIGTERM, then SIGKILL of
    its process group) on the way out."""
    log = (tmp_path / f"group{index}.log").open("wb")
    command = [sys.executable, "-m", "pgqueue_sync", "--dsn", pooled, "run",
               "tests.apps.pooled_worker:worker", "--processes", str(PROCESSES),
               "--dequeue-timeout", "5", *mode,
               "--", "--events", str(events), "--pool-size", str(WORKER_POOL)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True, cwd=Path(__file__).parent.parent)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(STOP_DEADLINE)
        log.close()


def handled(events: Path) -> Counter[int]:
    if not events.exists():
        return Counter()
    return Counter(json.loads(line)["job"] for line in events.read_text().splitlines() if line)


def test_32_worker_processes_through_pgbouncer_drain_exactly_once(
    tmp_path: Path, fleet_dsn: str, small_server: str
) -> None:
    events = tmp_path / "events.jsonl"
    sampler = Sampler(small_server)
    with pgbouncer(fleet_dsn, pool_size=BOUNCER_POOL) as bouncer, contextlib.ExitStack() as stack:
        pooled = bouncer.dsn(fleet_dsn)
        sampler.thread.start()
        stack.callback(sampler.thread.join, STOP_DEADLINE)
        stack.callback(sampler.stop.set)
        modes: list[tuple[str, ...]] = [("--listen-dsn", fleet_dsn), ("--poll-only",)] * 2
        groups = [stack.enter_context(group(i, tmp_path, pooled, events, *modes[i]))
                  for i in range(GROUPS)]
        with psycopg.connect(pooled, autocommit=True, prepare_threshold=None) as conn:
            queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
            ids: list[int] = []
            for _ in range(0, JOBS, 500):
                ids += queries.enqueue(["ping"] * 500, [None] * 500)
            deadline = time.monotonic() + DRAIN_DEADLINE
            while time.monotonic() < deadline:
                if len(handled(events)) >= JOBS and not queries.queue_size():
                    break
                assert all(g.poll() is None for g in groups), "a supervisor exited early"
                time.sleep(SAMPLE_INTERVAL)  # polling real processes: no event to wait on
            terminal = Counter(
                row.status for row in queries.queue_log() if row.status != "queued"
                and row.status != "picked")
        for supervisor in groups:
            supervisor.send_signal(signal.SIGTERM)
        codes = [supervisor.wait(STOP_DEADLINE) for supervisor in groups]
    runs = handled(events)
    assert set(runs) == set(ids), f"{len(set(ids) - set(runs))} jobs never ran"
    assert [job for job, count in runs.items() if count > 1] == []
    assert terminal == Counter({"successful": JOBS})
    assert codes == [0] * GROUPS
    assert 0 < sampler.peak <= MAX_CONNECTIONS
    for index in range(GROUPS):
        text = (tmp_path / f"group{index}.log").read_text(errors="replace")
        assert not [word for word in TROUBLE if word in text], text[-3000:]
    per_process = Counter(json.loads(line)["pid"] for line in events.read_text().splitlines())
    print(f"peak client backends on the server: {sampler.peak}; "
          f"{len(per_process)} processes ran jobs, {min(per_process.values())} to "
          f"{max(per_process.values())} each")
