"""The demo application behind ``pgq-sync demo``, and its database guard."""

from __future__ import annotations

import psycopg
import pytest
from click.testing import CliRunner

from pgqueue_sync.cli import cli, embedded
from pgqueue_sync.cli.demo import run_demo


def test_demo_installs_schema_then_processes_every_job(empty_dsn: str) -> None:
    lines: list[str] = []
    report = run_demo(empty_dsn, jobs=6, echo=lines.append)
    assert report.installed_schema is True
    assert lines[0] == "installed the queue schema"  # before anything else happens
    assert report.enqueued == 6
    assert report.outcomes == {"successful": 6}
    assert report.leftovers == 0
    assert any("retried handler ran" in line for line in lines)
    again = run_demo(empty_dsn, jobs=3, echo=lines.append)
    assert again.installed_schema is False and again.outcomes == {"successful": 3}


def test_the_summary_counts_its_own_jobs_and_names_leftovers(empty_dsn: str) -> None:
    run_demo(empty_dsn, jobs=1, echo=lambda line: None)  # installs
    with psycopg.connect(empty_dsn, autocommit=True) as conn:  # an interrupted earlier demo
        conn.execute("INSERT INTO pgqueuer (priority, status, entrypoint) "
                     "SELECT 0, 'queued', 'greet' FROM generate_series(1, 4)")
    result = CliRunner().invoke(cli, ["--dsn", empty_dsn, "demo", "-n", "3"])
    assert result.exit_code == 0, result.output
    assert "processed the 3 demo jobs" in result.output
    assert "also drained 4 leftover demo job(s)" in result.output


@pytest.mark.parametrize("command", [["demo"], ["install"]])
def test_no_configured_database_needs_yes_instead_of_libpq_defaults(
    monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    for name in ("PGQUEUE_SYNC_DSN", "DATABASE_URL", "PGQUEUER_DSN", "PGDSN", "PGHOST",
                 "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(embedded, "is_available", lambda: False)
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 2
    assert "no database configured" in result.output and "--yes" in result.output
    assert "Traceback" not in result.output


def test_a_worker_on_pure_python_psycopg_warns_once(
    dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from pgqueue_sync.drivers import psycopg as psycopg_driver

    from .worker_helpers import make_pgq, pool_for

    monkeypatch.setattr(psycopg.pq, "__impl__", "python")
    monkeypatch.setattr(psycopg_driver, "_warned_implementation", False)
    with pool_for(dsn) as pool, caplog.at_level(logging.WARNING, "pgqueue_sync"):
        pgq = make_pgq(pool)
        pgq.entrypoint("x")(lambda job: None)
        pgq.run(mode="drain", dequeue_timeout=0.5)
        pgq.run(mode="drain", dequeue_timeout=0.5)
    warnings = [r for r in caplog.records if "pure-Python" in r.getMessage()]
    assert len(warnings) == 1 and "pgqueue_sync[binary]" in warnings[0].getMessage()
