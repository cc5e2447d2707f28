"""Prometheus metrics, the metrics/health endpoints and their CLI commands."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from pgqueue_sync import Queries
from pgqueue_sync.cli import cli
from pgqueue_sync.metrics import MetricsServer, collect_metrics
from pgqueue_sync.queries import EntrypointExecutionParameter

pytest.importorskip("prometheus_client")


def sample(text: str, line_start: str) -> float:
    """The value of the one exposition line starting with ``line_start``."""
    [line] = [line for line in text.splitlines() if line.startswith(line_start)]
    return float(line.rsplit(" ", 1)[1])


@pytest.fixture
def busy_queue(queries: Queries, conn: Any) -> Queries:
    """3 queued 'mail' jobs (one 2 minutes old), 1 picked 'report' job with a stale heartbeat."""
    queries.enqueue(["mail"] * 3 + ["report"], [None] * 4)
    conn.execute("UPDATE pgqueuer SET created = NOW() - interval '2 minutes' WHERE id = 1")
    params = {"report": EntrypointExecutionParameter()}
    queries.dequeue(10, params, uuid.uuid4(), None, timedelta(seconds=30))
    conn.execute("UPDATE pgqueuer SET heartbeat = NOW() - interval '1 minute' "
                 "WHERE status = 'picked'")
    return queries


def test_exposition_keeps_pgqueuers_names_and_adds_ours(busy_queue: Queries) -> None:
    text = collect_metrics(busy_queue)
    queue = 'pgqueuer_queue_count{aggregation="sum",'
    assert sample(text, queue + 'entrypoint="mail",status="queued"}') == 3
    assert sample(text, queue + 'entrypoint="report",status="picked"}') == 1
    assert sample(text, 'pgqueuer_logs_count{aggregation="sum",entrypoint="mail",'
                        'status="queued"}') == 3
    assert sample(text, 'pgqueue_sync_oldest_ready_job_age_seconds{entrypoint="mail"}') >= 119
    assert sample(text, "pgqueue_sync_active_workers ") == 1
    assert sample(text, "pgqueue_sync_stale_jobs ") == 1


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_server_serves_metrics_and_health(busy_queue: Queries) -> None:
    healthy = [True]
    server = MetricsServer(busy_queue, port=0, host="127.0.0.1", health=lambda: healthy[0])
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, body = get(base + "/metrics")
        assert status == 200 and "pgqueuer_queue_count" in body
        assert get(base + "/healthz") == (200, "ok\n")
        healthy[0] = False
        assert get(base + "/healthz")[0] == 503
        assert get(base + "/nope")[0] == 404
    finally:
        server.stop()


def test_metrics_command_prints_the_exposition(dsn: str, busy_queue: Queries) -> None:
    result = CliRunner().invoke(cli, ["--dsn", dsn, "metrics"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "pgqueue_sync_active_workers 1.0" in result.output


def test_health_command_for_liveness_probes(busy_queue: Queries) -> None:
    healthy = [True]
    server = MetricsServer(busy_queue, port=0, host="127.0.0.1", health=lambda: healthy[0])
    server.start()
    try:
        args = ["health", "--port", str(server.port)]
        ok = CliRunner().invoke(cli, args)
        assert ok.exit_code == 0 and ok.output.strip() == "ok"
        healthy[0] = False
        sick = CliRunner().invoke(cli, args)
        assert sick.exit_code == 1 and "worker unhealthy" in sick.output
    finally:
        server.stop()
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    gone = CliRunner().invoke(cli, ["health", "--port", str(free)])
    assert gone.exit_code == 1 and "no worker answering" in gone.output


WORKER = """
from __future__ import annotations
from psycopg_pool import ConnectionPool
from pgqueue_sync import PgQueuer
from pgqueue_sync.cli.dsn import resolve_dsn

def make():
    pool = ConnectionPool(resolve_dsn(allow_embedded=False).conninfo, min_size=1, max_size=4,
                          kwargs={"autocommit": True})
    pgq = PgQueuer.from_psycopg_pool(pool)
    pgq.entrypoint("noop")(lambda job: None)
    return pgq
"""


def test_worker_serves_metrics_and_a_liveness_probe(dsn: str, tmp_path: Any) -> None:
    (tmp_path / "metricsapp.py").write_text(WORKER)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGQUEUE", "PGQUEUER_"))}
    worker = subprocess.Popen(
        [sys.executable, "-m", "pgqueue_sync", "--dsn", dsn, "run", "metricsapp:make",
         "--metrics-port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # until the worker is up and its listener answers
            result = CliRunner().invoke(cli, ["health", "--port", str(port)])
            if result.exit_code == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert result.exit_code == 0, result.output
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "pgqueue_sync_active_workers" in body
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
    gone = CliRunner().invoke(cli, ["health", "--port", str(port)])
    assert gone.exit_code == 1
