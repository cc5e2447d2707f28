"""Retention: the workers' pruner keeps the log, statistics and results within their windows.

Rows are written straight into the tables with back-dated ``created`` /
``finished`` (as weeks of traffic would leave them), then one pass of
:class:`~pgqueue_sync.worker.retention.Pruner` runs, or a real worker runs it on its
``pgqueue_sync-pruner`` thread.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from pgqueue_sync import DBSettings, Queries, SyncPsycopgDriver
from pgqueue_sync.cli import cli
from pgqueue_sync.errors import ConfigurationError
from pgqueue_sync.results import Results
from pgqueue_sync.sql.ops import retention_lock_key
from pgqueue_sync.testing.inmemory import InMemoryDriver, InMemoryQueries
from pgqueue_sync.worker import retention
from pgqueue_sync.worker.retention import Pruner

from .worker_helpers import make_pgq, pool_for, running, wait_for

DAY = timedelta(days=1)
WEEK = timedelta(days=7)


def pruner(queries: Any, **windows: Any) -> Pruner:
    keep = {"keep_log": WEEK, "keep_statistics": 30 * DAY, "keep_results": WEEK, **windows}
    return Pruner(queries, **keep)


def add_log(conn: psycopg.Connection[Any], job_id: int, *, age: timedelta,
            aggregated: bool = True, status: str = "successful", rows: int = 1) -> None:
    conn.execute(
        "INSERT INTO pgqueuer_log (created, job_id, status, priority, entrypoint, aggregated) "
        "SELECT NOW() - %s::interval, %s + g, %s, 0, 'ep', %s FROM generate_series(0, %s) g",
        (age, job_id, status, aggregated, rows - 1),
    )


def log_jobs(conn: psycopg.Connection[Any]) -> set[int]:
    return {row[0] for row in conn.execute("SELECT job_id FROM pgqueuer_log")}


def count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # test tables only
    assert row is not None
    return int(row[0])


def queued_jobs(queries: Queries, conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Three jobs still in the queue table: queued, picked and held (``failed``)."""
    ids = queries.enqueue(["ep", "ep", "ep"], [None, None, None], [0, 0, 0])
    conn.execute("UPDATE pgqueuer SET status = 'picked' WHERE id = %s", (ids[1],))
    conn.execute("UPDATE pgqueuer SET status = 'failed' WHERE id = %s", (ids[2],))
    conn.execute("DELETE FROM pgqueuer_log")  # only the rows written below
    return {"queued": ids[0], "picked": ids[1], "held": ids[2]}


# -- what a pass removes ----------------------------------------------------------------------


def test_log_rows_go_only_when_old_aggregated_and_their_job_has_left(
    queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    jobs = queued_jobs(queries, conn)
    for job_id in jobs.values():
        add_log(conn, job_id, age=30 * DAY)  # old and aggregated, but the job is still here
    add_log(conn, 1_000, age=8 * DAY)  # old, aggregated, job gone: goes
    add_log(conn, 2_000, age=8 * DAY, aggregated=False)  # not folded into statistics yet
    add_log(conn, 3_000, age=6 * DAY)  # inside the window
    add_log(conn, 4_000, age=30 * DAY, status="exception")  # old failure: goes

    report = pruner(queries).run_pass()

    assert report.deleted["log"] == 2
    assert log_jobs(conn) == {*jobs.values(), 2_000, 3_000}
    # job_status still answers for every job of the queue table.
    assert {job_id for job_id, _ in queries.job_status(jobs.values())} == set(jobs.values())


def test_statistics_and_results_windows(queries: Queries, conn: psycopg.Connection[Any]) -> None:
    for days in (40, 31, 29, 1):
        conn.execute(
            "INSERT INTO pgqueuer_statistics (count, created, entrypoint, priority, status) "
            "VALUES (1, NOW() - %s::interval, 'ep', 0, 'successful')", (days * DAY,))
    Results(queries).install()
    [held] = queries.enqueue(["ep"], [None], [0])
    for job_id, days in ((10, 8), (11, 6), (held, 30)):
        conn.execute(
            "INSERT INTO pgqueue_sync_results (job_id, entrypoint, status, finished) "
            "VALUES (%s, 'ep', 'successful', NOW() - %s::interval)", (job_id, days * DAY))

    report = pruner(queries).run_pass()

    assert report.deleted == {"log": 0, "statistics": 2, "results": 1}
    ages = [r[0] for r in conn.execute(
        "SELECT extract(day FROM NOW() - created)::int FROM pgqueuer_statistics ORDER BY 1")]
    assert ages == [1, 29]
    kept = {r[0] for r in conn.execute("SELECT job_id FROM pgqueue_sync_results")}
    assert kept == {11, held}


def test_disabled_windows_prune_nothing(queries: Queries, conn: psycopg.Connection[Any]) -> None:
    add_log(conn, 1, age=400 * DAY, rows=10)
    conn.execute("INSERT INTO pgqueuer_statistics (count, created, entrypoint, priority, status) "
                 "VALUES (1, NOW() - interval '400 days', 'ep', 0, 'successful')")
    off = pruner(queries, keep_log=None, keep_statistics=None, keep_results=None)
    assert not off.enabled
    assert off.run_pass().total == 0
    assert pruner(queries, keep_log=None).run_pass().deleted == {"statistics": 1, "results": 0}
    assert count(conn, "pgqueuer_log") == 10


def test_missing_results_table_is_not_an_error(queries: Queries) -> None:
    assert pruner(queries).run_pass().deleted["results"] == 0


def test_a_pass_walks_many_batches_within_its_budget(
    queries: Queries, conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    add_log(conn, 1, age=10 * DAY, rows=2_500)
    add_log(conn, 1, age=10 * DAY, rows=5, aggregated=False)  # interleaved rows that stay
    add_log(conn, 10_000, age=10 * DAY, rows=2_500)
    small = Pruner(queries, keep_log=WEEK, keep_statistics=None, keep_results=None,
                   batch_size=1_000, max_batches=3)
    with caplog.at_level(logging.INFO, logger="pgqueue_sync.worker.retention"):
        first = small.run_pass()
    # A step looks at 1,000 rows by id; the 5 that stay are among the third thousand.
    assert (first.deleted["log"], first.complete) == (2_995, False)
    assert "more left for the next pass" in caplog.text
    while not small.run_pass().complete:
        pass
    assert count(conn, "pgqueuer_log") == 5
    assert small.totals["log"] == 5_000
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pgqueue_sync.worker.retention"):
        assert small.run_pass().total == 0
    assert caplog.records == []  # nothing removed: nothing at INFO


def test_young_rows_among_old_ones_do_not_stop_the_walk(
    queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    add_log(conn, 1, age=timedelta(0), rows=10)  # recent rows with the lowest ids
    add_log(conn, 100, age=10 * DAY, rows=3_000)  # then old ones (a back-dated import)
    small = Pruner(queries, keep_log=WEEK, keep_statistics=None, keep_results=None,
                   batch_size=1_000)
    assert small.run_pass().deleted["log"] == 3_000
    assert count(conn, "pgqueuer_log") == 10


def test_worker_metric_counts_pruned_rows(queries: Queries) -> None:
    pytest.importorskip("prometheus_client")
    from pgqueue_sync.metrics import collect_metrics

    text = collect_metrics(queries, pruned=lambda: {"log": 7, "statistics": 0})
    assert 'pgqueue_sync_pruned_rows_total{table="log"} 7.0' in text
    assert "pgqueue_sync_pruned_rows" not in collect_metrics(queries)


def test_worker_with_every_window_off_runs_no_pruner(dsn: str) -> None:
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("ping")
        def ping(job: Any) -> None:
            pass

        pgq.run(mode="drain", keep_log=None, keep_statistics=None, keep_results=None)
        assert pgq.qm.pruner is None
        pgq.run(mode="drain")
        assert pgq.qm.pruner is not None and pgq.qm.pruner.enabled


# -- one pruner at a time ---------------------------------------------------------------------


def hold_retention_lock(dsn: str, settings: DBSettings) -> psycopg.Connection[Any]:
    holder = psycopg.connect(dsn)  # not autocommit: the transaction keeps the lock
    key = retention_lock_key(settings.qualified_text("queue_table_log"))
    holder.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))
    return holder


def test_a_pass_is_skipped_while_another_session_holds_the_lock(
    dsn: str, queries: Queries, conn: psycopg.Connection[Any], settings: DBSettings
) -> None:
    add_log(conn, 1, age=10 * DAY, rows=100)
    holder = hold_retention_lock(dsn, settings)
    try:
        started = time.monotonic()
        report = pruner(queries).run_pass()
        assert time.monotonic() - started < 2.0  # tried, not waited for
        assert report.skipped and report.total == 0
        assert count(conn, "pgqueuer_log") == 100
    finally:
        holder.rollback()
        holder.close()
    assert pruner(queries).run_pass().deleted["log"] == 100


def test_two_pruners_share_the_work_without_errors(dsn: str, conn: psycopg.Connection[Any]) -> None:
    add_log(conn, 1, age=10 * DAY, rows=20_000)
    reports: list[Any] = []
    errors: list[BaseException] = []

    def prune() -> None:
        with psycopg.connect(dsn, autocommit=True) as own:
            queries = Queries(SyncPsycopgDriver(own), settings=DBSettings())
            try:
                for _ in range(20):
                    reports.append(Pruner(queries, keep_log=WEEK, keep_statistics=None,
                                          keep_results=None, batch_size=500).run_pass())
            except BaseException as exc:  # re-raised below
                errors.append(exc)

    threads = [threading.Thread(target=prune, name=f"test-pruner-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sum(r.total for r in reports) == 20_000
    assert count(conn, "pgqueuer_log") == 0


# -- a worker prunes, and claims do not wait for it -------------------------------------------


@pytest.fixture
def fast_pruner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "INTERVAL", 0.3)


def claim_latencies(
    dsn: str, conn: psycopg.Connection[Any], rows: int
) -> tuple[list[float], float]:
    """Enqueue one job every 50 ms while a worker prunes ``rows`` old log rows; the
    enqueue-to-start latencies and how long the prune took."""
    add_log(conn, 10_000_000, age=30 * DAY, rows=rows)
    started: dict[int, float] = {}
    enqueued: dict[int, float] = {}
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("ping")
        def ping(job: Any) -> None:
            started[job.id] = time.monotonic()

        with running(pgq, keep_log=WEEK):
            wait_for(lambda: pgq.qm.pruner is not None, what="the pruner started")
            assert "pgqueue_sync-pruner" in {t.name for t in threading.enumerate()}
            begin = time.monotonic()
            while count(conn, "pgqueuer_log WHERE created < NOW() - interval '7 days'"):
                [job_id] = pgq.queries.enqueue(["ping"], [None], [0])
                enqueued[job_id] = time.monotonic()
                time.sleep(0.05)
                assert time.monotonic() - begin < 300, "the prune did not finish"
            took = time.monotonic() - begin
            wait_for(lambda: len(started) == len(enqueued), what="every ping ran")
    return [started[i] - enqueued[i] for i in enqueued], took


@pytest.mark.parametrize("rows", [
    200_000, pytest.param(1_000_000, marks=pytest.mark.slow),
])
def test_claims_are_not_delayed_by_a_large_prune(
    dsn: str, conn: psycopg.Connection[Any], fast_pruner: None, rows: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="pgqueue_sync.worker.retention"):
        latencies, took = claim_latencies(dsn, conn, rows)
    assert len(latencies) >= 5, f"the prune took only {took:.1f}s"
    worst = max(latencies)
    # Generous for a 2-core machine under load: a claim blocked behind the prune
    # would wait for the whole of it (seconds).
    assert worst < 1.0, (worst, statistics.median(latencies), took)
    assert f"removed {min(rows, retention.MAX_BATCHES * retention.BATCH_SIZE)} log rows" \
        in caplog.text


def test_in_memory_adapter_prunes_alike() -> None:
    driver = InMemoryDriver()
    queries = InMemoryQueries(driver, settings=DBSettings())
    finished, waiting = queries.enqueue(["ep", "ep"], [None, None], [0, 0])
    del driver.jobs[finished]  # as if it had run (its log row stays)
    queries.aggregate_logs()
    for row in driver.log_rows:
        row.created -= 8 * DAY
    report = pruner(queries).run_pass()
    assert report.deleted == {"log": 1, "statistics": 0, "results": 0}
    assert [row.job_id for row in driver.log_rows] == [waiting]
    assert pruner(queries, keep_statistics=timedelta(minutes=1)).run_pass().total == 0
    for row in driver.statistics.values():
        row.created -= 2 * DAY
    assert pruner(queries, keep_statistics=DAY).run_pass().deleted["statistics"] == 1


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "message"), [
    (30, "keep_log must be at least 60 seconds"),
    (timedelta(seconds=-1), "keep_log must not be negative"),
    ("7d", "keep_log must be a timedelta or seconds"),
    (True, "keep_log must be a timedelta or seconds"),
])
def test_bad_run_options_are_refused_before_anything_runs(value: Any, message: str) -> None:
    from pgqueue_sync.options import RunOptions

    with pytest.raises(ConfigurationError, match=message):
        RunOptions.build(dequeue_timeout=30, batch_size=10, mode="continuous",
                         max_concurrent_tasks=None, shutdown_on_listener_failure=False,
                         heartbeat_timeout=30, log_aggregation_interval=30, concurrency=None,
                         shutdown_timeout=None, keep_log=value)


def test_run_options_default_and_disable() -> None:
    from pgqueue_sync.options import RunOptions

    base: dict[str, Any] = dict(dequeue_timeout=30, batch_size=10, mode="continuous",
                                max_concurrent_tasks=None, shutdown_on_listener_failure=False,
                                heartbeat_timeout=30, log_aggregation_interval=30,
                                concurrency=None, shutdown_timeout=None)
    opts = RunOptions.build(**base)
    assert (opts.keep_log, opts.keep_statistics, opts.keep_results) == (WEEK, 30 * DAY, WEEK)
    opts = RunOptions.build(**base, keep_log=None, keep_statistics=3600, keep_results=None)
    assert (opts.keep_log, opts.keep_statistics, opts.keep_results) == (
        None, timedelta(hours=1), None)


@pytest.fixture
def captured_run(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    seen: dict[str, Any] = {}
    monkeypatch.setattr("pgqueue_sync.cli.worker.launcher.run",
                        lambda factory, args, **options: seen.update(options))
    yield seen


def test_cli_retention_options(captured_run: dict[str, Any],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGQUEUE_SYNC_KEEP_RESULTS", "off")
    result = CliRunner().invoke(cli, ["run", "m:f", "--keep-log", "12h",
                                      "--keep-statistics", "90d"])
    assert result.exit_code == 0, result.output
    assert captured_run["keep_log"] == timedelta(hours=12)
    assert captured_run["keep_statistics"] == timedelta(days=90)
    assert captured_run["keep_results"] is None  # 'off' from the environment
    captured_run.clear()
    monkeypatch.delenv("PGQUEUE_SYNC_KEEP_RESULTS")
    assert CliRunner().invoke(cli, ["run", "m:f", "--keep-log", "OFF"]).exit_code == 0
    assert captured_run["keep_log"] is None
    assert "keep_statistics" not in captured_run  # unset: run()'s default


@pytest.mark.parametrize(("value", "message"), [
    ("7 days", "must be seconds or a number ending in ms/s/m/h/d"),
    ("30s", "must be at least 60s"),
    ("-1d", "must be seconds or a number ending in ms/s/m/h/d"),
    ("99999d", "too long"),
])
def test_cli_rejects_bad_windows_in_one_line(
    captured_run: dict[str, Any], value: str, message: str
) -> None:
    result = CliRunner().invoke(cli, ["run", "m:f", "--keep-log", value])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "--keep-log" in lines[0] and message in lines[0] and "'off'" in lines[0]
    assert not captured_run


def test_django_worker_setting_is_checked() -> None:
    from pgqueue_sync.contrib.django.conf import parse
    from pgqueue_sync.contrib.django.errors import DjangoConfigurationError

    worker = {"keep_log": "14d", "keep_statistics": "off", "keep_results": 86400.0}
    assert parse({"WORKER": worker}).worker == worker
    with pytest.raises(DjangoConfigurationError, match=r"keep_log.*at least 60 seconds.*'off'"):
        parse({"WORKER": {"keep_log": 5}})
    with pytest.raises(DjangoConfigurationError, match="keep_results"):
        parse({"WORKER": {"keep_results": "a week"}})
