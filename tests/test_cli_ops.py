"""Operator commands of ``pgq-sync`` (listen, dashboard, schedules, stale, workers, backlog,
log, prune) against real PostgreSQL.

Tables are checked at 80 columns (``COLUMNS=80``, output not a terminal). The
long-running commands (``listen``, live ``dashboard``) run as subprocesses that
each test stops in ``finally``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from pgqueue_sync import Queries, SyncPsycopgDriver
from pgqueue_sync.cli import cli
from pgqueue_sync.models import TracebackRecord
from pgqueue_sync.ops import OpsQueries
from tests.test_cli import one_line_error, pgq_sync

WORKER_A = uuid.UUID("3f2b9c1e-8d4a-4c55-9a07-2b1e6f0d9a11")
WORKER_B = uuid.UUID("5c9e4a20-1b7f-4d8e-b2a6-0f3c8d7e1a94")
SECRET = b"secret-payload-do-not-print"
OPERATOR_COMMANDS = ("listen", "dashboard", "schedules", "stale", "workers", "backlog", "log",
                     "prune")


def invoke(dsn: str, *args: str) -> Result:
    """``pgq-sync --dsn DSN ARGS`` in-process, as if on an 80-column pipe."""
    runner = CliRunner(env={"COLUMNS": "80"})
    return runner.invoke(cli, ["--dsn", dsn, *args], catch_exceptions=False)


def ok(dsn: str, *args: str) -> str:
    result = invoke(dsn, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


def assert_fits(text: str, width: int = 80) -> None:
    too_wide = [line for line in text.splitlines() if len(line) > width]
    assert not too_wide, too_wide


def body(text: str) -> list[list[str]]:
    """The rows of a table (after the header and rule), split on runs of spaces."""
    return [line.split() for line in text.splitlines()[2:]]


@dataclasses.dataclass
class Prepared:
    ready: Sequence[int]
    picked_a: Sequence[int]
    stale_b: int
    deferred: Sequence[int]
    held: int
    crashed: int


def prepare(queries: Queries, conn: psycopg.Connection[Any]) -> Prepared:
    """A queue in several states, made through the real operations.

    send_email: 3 ready, 2 picked by worker A (fresh), 1 picked by worker B
    with a 10-minute-old heartbeat; resize_image: 2 deferred by an hour, 1 held
    (failed); sync_crm: 1 finished with an exception.
    """
    stale_id, *picked_ids = queries.enqueue(["send_email"] * 3, [SECRET] * 3)
    ready = queries.enqueue(["send_email"] * 3, [SECRET] * 3)
    [stale_job] = queries.dequeue(1, {"send_email": 0}, WORKER_B, None, timedelta(seconds=30))
    picked = queries.dequeue(2, {"send_email": 0}, WORKER_A, None, timedelta(seconds=30))
    assert stale_job.id == stale_id and sorted(j.id for j in picked) == sorted(picked_ids)
    conn.execute("UPDATE pgqueuer SET heartbeat = NOW() - interval '10 minutes' WHERE id = %s",
                 [stale_id])
    deferred = queries.enqueue(["resize_image"] * 2, [SECRET] * 2,
                               execute_after=[timedelta(hours=1)] * 2)
    [held_id] = queries.enqueue("resize_image", SECRET)
    [crashed_id] = queries.enqueue("sync_crm", SECRET)
    jobs = {j.id: j for j in queries.dequeue(5, {"resize_image": 0, "sync_crm": 0}, WORKER_A,
                                             None, timedelta(seconds=30))}
    queries.log_jobs([
        (jobs[held_id], "failed", _record(held_id, ValueError("unsupported image format"))),
        (jobs[crashed_id], "exception", _record(crashed_id, ConnectionError("crm: 503"))),
    ])
    return Prepared(ready, sorted(picked_ids), stale_id, deferred, held_id, crashed_id)


def _record(job_id: int, exc: Exception) -> TracebackRecord:
    try:
        raise exc
    except Exception as raised:
        return TracebackRecord.from_exception(raised, job_id=job_id)  # type: ignore[arg-type]


@pytest.fixture
def prepared(queries: Queries, conn: psycopg.Connection[Any]) -> Prepared:
    return prepare(queries, conn)


# -- help and errors ------------------------------------------------------------------------


def test_operator_commands_are_listed_and_have_help() -> None:
    listing = CliRunner().invoke(cli, ["--help"]).output
    for name in OPERATOR_COMMANDS:
        assert name in listing
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, name


@pytest.mark.parametrize("args", [("workers",), ("prune", "--older-than", "7d", "--yes")])
def test_missing_schema_is_one_line_exit_1(empty_dsn: str, args: tuple[str, ...]) -> None:
    result = pgq_sync("--dsn", empty_dsn, *args)
    assert result.returncode == 1
    assert "pgq-sync install" in one_line_error(result)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("stale", "-t", "soon"), "--threshold must be seconds"),
        (("prune", "--older-than", "a week"), "--older-than must be seconds"),
        (("prune", "--older-than", "7d", "--no-log", "--no-statistics"), "nothing to prune"),
        (("listen", "--channel", "bad channel!"), "invalid channel"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(dsn: str, args: tuple[str, ...], fragment: str) -> None:
    result = pgq_sync("--dsn", dsn, *args)
    assert result.returncode == 2
    assert fragment in one_line_error(result)


# -- backlog, workers, stale ------------------------------------------------------------------


def test_backlog_counts_each_state_per_entrypoint(dsn: str, prepared: Prepared) -> None:
    text = ok(dsn, "backlog")
    assert text.splitlines()[0].split() == ["entrypoint", "ready", "deferred", "picked", "held",
                                            "oldest", "ready"]
    rows = {row[0]: row[1:] for row in body(text)}
    assert rows["send_email"][:4] == ["3", "0", "3", "0"]
    assert rows["resize_image"] == ["0", "2", "0", "1", "-"]  # nothing ready: no age
    assert "sync_crm" not in rows  # its only job left the queue
    assert_fits(text)
    data = {item["entrypoint"]: item for item in json.loads(ok(dsn, "backlog", "--json"))}
    assert set(data["send_email"]) == {"entrypoint", "queued_count", "ready", "deferred",
                                       "picked", "held", "oldest_created", "oldest_age_seconds"}
    assert (data["resize_image"]["queued_count"], data["resize_image"]["deferred"]) == (2, 2)
    assert data["resize_image"]["oldest_age_seconds"] is None
    assert 0 <= data["send_email"]["oldest_age_seconds"] < 60


def test_workers_groups_picked_jobs_by_queue_manager(dsn: str, prepared: Prepared) -> None:
    text = ok(dsn, "workers")
    rows = {row[0]: row for row in body(text)}
    assert set(rows) == {str(WORKER_A)[:8], str(WORKER_B)[:8]}
    assert rows[str(WORKER_A)[:8]][1] == "2" and rows[str(WORKER_B)[:8]][1] == "1"
    assert "10m0" in " ".join(rows[str(WORKER_B)[:8]])  # "10m00s ago" (or 10m01s)
    assert_fits(text)
    data = {w["queue_manager_id"]: w for w in json.loads(ok(dsn, "workers", "--json"))}
    b = data[str(WORKER_B)]
    assert (b["active_jobs"], b["entrypoints"]) == (1, ["send_email"])
    assert 595 < b["seconds_since_newest_heartbeat"] < 660
    assert data[str(WORKER_A)]["seconds_since_oldest_heartbeat"] < 60


def test_workers_and_backlog_say_so_when_nothing_is_there(dsn: str) -> None:
    assert ok(dsn, "workers").strip() == "no worker is connected and none holds picked jobs"
    assert ok(dsn, "backlog").strip() == "the queue is empty"
    assert json.loads(ok(dsn, "workers", "--json")) == []


def test_stale_lists_only_jobs_past_the_threshold(dsn: str, prepared: Prepared) -> None:
    text = ok(dsn, "stale")  # default 300s
    assert [row[:5] for row in body(text)] == [
        [str(prepared.stale_b), "send_email", "0", "0", str(WORKER_B)[:8]]
    ]
    assert_fits(text)
    [job] = json.loads(ok(dsn, "stale", "--json"))
    assert job["id"] == prepared.stale_b and job["queue_manager_id"] == str(WORKER_B)
    assert job["status"] == "picked" and 595 < job["seconds_since_heartbeat"] < 660
    assert "payload" not in job
    wider = json.loads(ok(dsn, "stale", "-t", "0", "--json"))
    assert [j["id"] for j in wider][0] == prepared.stale_b  # stalest first
    assert sorted(j["id"] for j in wider) == sorted([prepared.stale_b, *prepared.picked_a])
    assert len(json.loads(ok(dsn, "stale", "-t", "0", "-n", "1", "--json"))) == 1
    assert "no picked job has a heartbeat older than 1h" in ok(dsn, "stale", "-t", "1h")


# -- log ------------------------------------------------------------------------------------


def test_log_lists_newest_first_with_filters(dsn: str, prepared: Prepared) -> None:
    text = ok(dsn, "log")
    rows = body(text)
    # The newest transitions are the two completions; 'queued' rows are older.
    assert {row[2] for row in rows[:2]} == {str(prepared.held), str(prepared.crashed)}
    assert_fits(text)
    failed = ok(dsn, "log", "--status", "failed")
    assert [row[2:5] for row in body(failed)] == [
        [str(prepared.held), "resize_image", "failed"]
    ]
    assert "ValueError: unsupported image" in failed  # clipped to fit 80 columns
    history = json.loads(ok(dsn, "log", "--job-id", str(prepared.crashed), "--json"))
    assert [e["status"] for e in history] == ["exception", "picked", "queued"]
    assert history[0]["traceback"]["exception_type"] == "ConnectionError"
    assert set(history[0]) == {"id", "created", "job_id", "status", "priority", "entrypoint",
                               "traceback", "aggregated"}
    by_entrypoint = json.loads(ok(dsn, "log", "--entrypoint", "sync_crm", "-n", "2", "--json"))
    assert [e["status"] for e in by_entrypoint] == ["exception", "picked"]
    assert ok(dsn, "log", "--job-id", "999999").strip() == "no log rows match"


def test_no_command_prints_a_payload(dsn: str, prepared: Prepared) -> None:
    commands = [(c,) for c in ("backlog", "workers", "log", "schedules")] + [
        ("stale", "-t", "0"), ("dashboard", "--once")]
    for args in commands:
        for extra in ((), ("--json",)):
            assert SECRET.decode() not in ok(dsn, *args, *extra), args


# -- schedules ------------------------------------------------------------------------------


@pytest.fixture
def three_schedules(queries: Queries) -> list[int]:
    queries.insert_schedule({
        ("nightly_report", "0 2 * * *"): timedelta(hours=3),
        ("cleanup", "*/15 * * * *"): timedelta(minutes=5),
        ("cleanup", "0 * * * *"): timedelta(minutes=40),
    })
    return sorted(s.id for s in queries.peek_schedule())


def test_schedules_lists_rows_with_relative_times(dsn: str, three_schedules: list[int]) -> None:
    text = ok(dsn, "schedules")
    assert text.splitlines()[0].split() == ["id", "entrypoint", "expression", "status", "next",
                                            "run", "last", "run", "heartbeat"]
    first = text.splitlines()[2]
    assert "nightly_report" in first and "0 2 * * *" in first and "in 2h59m" in first
    assert_fits(text)
    data = json.loads(ok(dsn, "schedules", "--json"))
    assert [s["id"] for s in data] == three_schedules
    assert set(data[0]) == {"id", "entrypoint", "expression", "status", "next_run", "last_run",
                            "heartbeat", "created", "updated"}
    assert data[0]["last_run"] is None


def test_schedules_remove_by_id_and_by_entrypoint(
    dsn: str, queries: Queries, three_schedules: list[int]
) -> None:
    nightly = three_schedules[0]
    result = invoke(dsn, "schedules", "--remove", str(nightly), "-r", "cleanup",
                    "-r", "nosuch", "-r", "4242")
    assert result.exit_code == 0
    assert "removed 3 schedule(s)" in result.stdout and "no schedules" in result.stdout
    assert "no schedule matched: 4242, nosuch" in result.stderr
    assert queries.peek_schedule() == []


def test_schedules_remove_with_json_keeps_stdout_pure(
    dsn: str, queries: Queries, three_schedules: list[int]
) -> None:
    result = invoke(dsn, "schedules", "--remove", "cleanup", "--json")
    assert result.exit_code == 0
    assert [s["entrypoint"] for s in json.loads(result.stdout)] == ["nightly_report"]
    assert "removed 2 schedule(s)" in result.stderr


# -- widths ---------------------------------------------------------------------------------


def test_tables_fit_80_columns_with_long_names(
    dsn: str, queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    long_name = "billing.invoices.generate_monthly_statement_pdf_for_enterprise_customers"
    prepare(queries, conn)
    queries.enqueue([long_name] * 2, [SECRET] * 2)
    failing, _running = queries.dequeue(2, {long_name: 0}, WORKER_B, None, timedelta(seconds=30))
    queries.log_jobs([(failing, "exception", _record(failing.id, RuntimeError("x" * 200)))])
    queries.enqueue(long_name, SECRET)
    queries.insert_schedule({(long_name, "*/5 * * * *"): timedelta(minutes=1)})
    for args in (("backlog",), ("workers",), ("stale", "-t", "0"), ("log",), ("schedules",),
                 ("dashboard", "--once")):
        text = ok(dsn, *args)
        assert_fits(text)
        assert "…" in text, args  # the long name (or message) was clipped, not wrapped
    full = json.loads(ok(dsn, "log", "--entrypoint", long_name, "--status", "exception",
                         "--json"))
    assert full[0]["traceback"]["exception_message"] == "x" * 200  # JSON keeps everything


# -- dashboard ------------------------------------------------------------------------------


def test_dashboard_once_prints_one_plain_frame(dsn: str, prepared: Prepared) -> None:
    text = ok(dsn, "dashboard", "--once")
    assert "\x1b" not in text  # no ANSI codes unless refreshing a terminal
    assert text.startswith("pgq-sync dashboard")
    for heading in ("Queue", "Throughput", "Workers (connected, or holding jobs)",
                    "Recent failures"):
        assert f"\n{heading}" in text
    queue = text.split("\nQueue\n")[1].split("\n\n")[0]
    assert [row[0] for row in body(queue)] == ["resize_image", "send_email"]
    throughput = text.split("\nThroughput")[1].split("\n\n")[0]
    rows = {row[0]: row[1:] for row in body(throughput.split("\n", 1)[1])}
    # send_email: 6 enqueued, nothing finished; resize_image: 3 enqueued, 1 error
    assert rows["send_email"][:3] == ["6", "0", "0"]
    assert rows["resize_image"][:3] == ["3", "0", "1"]
    assert str(WORKER_B)[:8] in text and str(WORKER_A)[:8] in text
    failures = text.split("\nRecent failures\n")[1]
    assert "ConnectionError: crm: 503" in failures and "ValueError: unsupported" in failures
    assert_fits(text)


def test_dashboard_on_an_empty_queue_and_json_snapshot(dsn: str) -> None:
    text = ok(dsn, "dashboard", "--once")
    assert text.count("(none)") == 4
    snapshot = json.loads(ok(dsn, "dashboard", "--once", "--json"))
    assert set(snapshot) == {"taken_at", "backlog", "throughput", "workers", "failures",
                             "latency", "unserved"}
    assert set(snapshot["throughput"]) == {"60", "300"}


def test_dashboard_limit_caps_every_section(dsn: str, prepared: Prepared) -> None:
    snapshot = json.loads(ok(dsn, "dashboard", "--once", "--json", "-n", "1"))
    assert len(snapshot["backlog"]) == 1 and len(snapshot["workers"]) == 1
    assert len(snapshot["failures"]) == 1 and len(snapshot["throughput"]["60"]) == 1


# -- long-running commands in subprocesses ------------------------------------------------------


def _spawn(dsn: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGQUEUE", "PGQUEUER_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    env["COLUMNS"] = "80"
    return subprocess.Popen([sys.executable, "-m", "pgqueue_sync", "--dsn", dsn, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_line(stream: Any, fragment: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=deadline - time.monotonic()):
                line = stream.readline()
                if fragment in line:
                    return str(line)
                if not line:
                    break
    raise AssertionError(f"no line with {fragment!r} within {timeout}s")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def test_listen_count_prints_events_sent_by_another_connection(
    dsn: str, queries: Queries
) -> None:
    proc = _spawn(dsn, "listen", "--count", "4", "--json")
    try:
        _wait_for_line(proc.stderr, "listening on channel 'ch_pgqueuer'")
        [job_id] = queries.enqueue("send_email", SECRET)  # insert -> table_changed
        queries.driver.execute(queries.statements.notify,
                               {"channel": "ch_pgqueuer", "payload": "not json at all"})
        queries.mark_job_as_cancelled([job_id])  # delete + cancellation_event
        out, err = proc.communicate(timeout=20)
    finally:
        _stop(proc)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["type"] for e in events] == ["table_changed_event", "unknown",
                                           "table_changed_event", "cancellation_event"]
    assert (events[0]["operation"], events[0]["table"]) == ("insert", "pgqueuer")
    assert events[1] == {"type": "unknown", "channel": "ch_pgqueuer",
                         "payload": "not json at all", "received_at": events[1]["received_at"]}
    assert events[2]["operation"] == "delete" and events[3]["ids"] == [job_id]
    assert SECRET.decode() not in out


def test_listen_text_lines_and_custom_channel(dsn: str, queries: Queries) -> None:
    proc = _spawn(dsn, "listen", "--channel", "ops_test", "--count", "2")
    try:
        _wait_for_line(proc.stderr, "listening on channel 'ops_test'")
        probe = uuid.uuid4()
        other = Queries(queries.driver, settings=queries.settings.with_overrides(
            channel="ops_test"))
        other.notify_health_check(probe)
        other.notify_job_cancellation([7, 8])
        out, err = proc.communicate(timeout=20)
    finally:
        _stop(proc)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].split()[1:] == ["health_check", "id", str(probe)]
    assert lines[1].split()[1:] == ["cancellation", "ids", "7,", "8"]


@pytest.mark.parametrize("args", [("listen",), ("dashboard", "-i", "0.2")])
def test_ctrl_c_stops_quietly_with_exit_0(dsn: str, args: tuple[str, ...]) -> None:
    proc = _spawn(dsn, *args)
    try:
        expected = "listening" if args[0] == "listen" else "pgq-sync dashboard"
        stream = proc.stderr if args[0] == "listen" else proc.stdout
        _wait_for_line(stream, expected)
        if args[0] == "dashboard":
            _wait_for_line(proc.stdout, "pgq-sync dashboard")  # a second frame: it refreshes
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        _stop(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


# -- prune ----------------------------------------------------------------------------------


@pytest.fixture
def aged(queries: Queries, conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """25 log rows and 3 statistics rows aged 10 days; newer rows of each; old queue rows."""
    ids = queries.enqueue(["report"] * 25, [SECRET] * 25)
    conn.execute("UPDATE pgqueuer_log SET created = NOW() - interval '10 days'")
    conn.execute("UPDATE pgqueuer SET created = NOW() - interval '30 days'")  # queue: untouched
    queries.aggregate_logs()
    conn.execute(
        "INSERT INTO pgqueuer_statistics (created, count, priority, status, entrypoint) "
        "SELECT NOW() - g * interval '1 day', 1, 0, 'successful', 'report' "
        "FROM generate_series(8, 9) g"
    )
    queries.enqueue(["report"] * 2, [SECRET] * 2)  # two fresh log rows
    queries.aggregate_logs()  # and a fresh statistics bucket
    queue = conn.execute("SELECT * FROM pgqueuer ORDER BY id").fetchall()
    return {"ids": ids, "queue": queue}


def _counts(conn: psycopg.Connection[Any], table: str) -> tuple[int, int]:
    row = conn.execute(
        f"SELECT count(*) FILTER (WHERE created < NOW() - interval '7 days'), "
        f"count(*) FILTER (WHERE created >= NOW() - interval '7 days') FROM {table}"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_prune_deletes_only_old_log_and_statistics_rows_in_batches(
    dsn: str, conn: psycopg.Connection[Any], aged: dict[str, Any]
) -> None:
    assert _counts(conn, "pgqueuer_log") == (25, 2)
    assert _counts(conn, "pgqueuer_statistics") == (3, 1)
    result = invoke(dsn, "prune", "--older-than", "7d", "--batch-size", "10", "--yes")
    assert result.exit_code == 0, result.output
    assert "pgqueuer_log: deleted 25 row(s) in 3 batch(es)" in result.stdout
    assert "pgqueuer_statistics: deleted 3 row(s) in 1 batch(es)" in result.stdout
    assert "pruning pgqueuer_log" in result.stderr  # the progress bar's label
    assert _counts(conn, "pgqueuer_log") == (0, 2)
    assert _counts(conn, "pgqueuer_statistics") == (0, 1)
    assert conn.execute("SELECT * FROM pgqueuer ORDER BY id").fetchall() == aged["queue"]
    again = ok(dsn, "prune", "--older-than", "7d", "--yes")
    assert "pgqueuer_log: nothing to delete" in again


def test_prune_dry_run_and_table_choice(
    dsn: str, conn: psycopg.Connection[Any], aged: dict[str, Any]
) -> None:
    dry = ok(dsn, "prune", "--older-than", "7d", "--dry-run")
    assert "would delete 25 log row(s) and 3 statistics row(s)" in dry and "cutoff: " in dry
    assert _counts(conn, "pgqueuer_log") == (25, 2)
    stats_only = ok(dsn, "prune", "--older-than", "7d", "--no-log", "--yes")
    assert "pgqueuer_log" not in stats_only
    assert _counts(conn, "pgqueuer_log") == (25, 2)
    assert _counts(conn, "pgqueuer_statistics") == (0, 1)
    ok(dsn, "prune", "--older-than", "7d", "--no-statistics", "--yes")
    assert _counts(conn, "pgqueuer_log") == (0, 2)


def test_prune_skips_rows_locked_by_another_session_instead_of_waiting(
    dsn: str, conn: psycopg.Connection[Any], connect: Any, aged: dict[str, Any]
) -> None:
    locker = connect(autocommit=False)
    [locked_id] = conn.execute(
        "SELECT id FROM pgqueuer_log ORDER BY id LIMIT 1 OFFSET 12").fetchone() or [None]
    locker.execute("SELECT 1 FROM pgqueuer_log WHERE id = %s FOR UPDATE", [locked_id])
    started = time.monotonic()
    result = invoke(dsn, "prune", "--older-than", "7d", "--batch-size", "10", "--no-statistics",
                    "--yes")
    assert time.monotonic() - started < 10
    assert result.exit_code == 0
    assert "deleted 24 row(s)" in result.stdout
    assert "1 old row(s) were locked by another session" in result.stderr
    assert conn.execute("SELECT array_agg(id) FROM pgqueuer_log WHERE created < NOW() - "
                        "interval '7 days'").fetchone() == ([locked_id],)
    locker.rollback()
    assert "deleted 1 row(s)" in ok(dsn, "prune", "--older-than", "7d", "--yes")


def test_ops_prune_commits_each_batch_on_its_own(
    conn: psycopg.Connection[Any], queries: Queries, connect: Any, aged: dict[str, Any]
) -> None:
    ops = OpsQueries(queries.driver, queries.settings)
    plan = ops.prune_plan("log", ops.cutoff(timedelta(days=7)))
    assert plan.count == 25
    observer = connect()
    seen: list[tuple[int, int]] = []

    def on_batch(deleted: int) -> None:
        # Another session already sees the batch gone: it was committed, not held open.
        left = observer.execute("SELECT count(*) FROM pgqueuer_log WHERE created < %s",
                                [plan.cutoff]).fetchone()[0]
        seen.append((deleted, left))

    result = ops.prune(plan, batch_size=10, on_batch=on_batch)
    assert seen == [(10, 15), (10, 5), (5, 0)]
    assert (result.deleted, result.batches, result.left) == (25, 3, 0)
    assert conn.execute("SELECT count(*) FROM pgqueuer").fetchone() == (27,)


def test_ops_prune_batch_methods_walk_ids_forward(
    queries: Queries, aged: dict[str, Any]
) -> None:
    ops = OpsQueries(SyncPsycopgDriver(queries.driver.connection), queries.settings)  # type: ignore[attr-defined]
    cutoff = ops.cutoff(timedelta(days=7))
    plan = ops.prune_plan("stats", cutoff)
    assert plan.count == 3 and plan.last_id is not None
    first = ops.prune_statistics_batch(cutoff, after=-1, last_id=plan.last_id, batch_size=2)
    assert first.deleted == 2 and first.last_id is not None
    rest = ops.prune_statistics_batch(cutoff, after=first.last_id, last_id=plan.last_id,
                                      batch_size=2)
    assert rest.deleted == 1
    assert ops.prune_statistics_batch(cutoff, after=-1, last_id=plan.last_id,
                                      batch_size=2).deleted == 0
    log_plan = ops.prune_plan("log", cutoff)
    batch = ops.prune_log_batch(cutoff, after=-1, last_id=log_plan.last_id or 0, batch_size=100)
    assert batch.deleted == 25


# -- names and formatting ---------------------------------------------------------------------


def test_prefixed_objects_are_used_throughout(empty_dsn: str) -> None:
    assert invoke(empty_dsn, "--prefix", "ops_", "install").exit_code == 0
    ok(empty_dsn, "--prefix", "ops_", "enqueue", "mail")
    rows = body(ok(empty_dsn, "--prefix", "ops_", "backlog"))
    assert rows[0][:2] == ["mail", "1"]
    assert [e["status"] for e in json.loads(ok(empty_dsn, "--prefix", "ops_", "log", "--json"))
            ] == ["queued"]
    pruned = ok(empty_dsn, "--prefix", "ops_", "prune", "--older-than", "0", "--yes")
    assert "ops_pgqueuer_log: deleted 1 row(s)" in pruned
    assert body(ok(empty_dsn, "--prefix", "ops_", "backlog"))[0][:2] == ["mail", "1"]


def test_age_and_fit_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgqueue_sync.cli import display

    monkeypatch.setattr(display, "terminal_width", lambda: 80)  # whatever terminal runs the tests

    assert [display.age_text(s) for s in (None, -3, 0, 59.9, 61, 3600 * 2 + 300, 86400 * 3 + 7200)
            ] == ["-", "0s", "0s", "59s", "1m01s", "2h05m", "3d02h"]
    rows = [(1, "x" * 100, "short"), (22, "y", "z" * 50)]
    text = display.fit_table(("id", "name", "note"), rows, flex=(1, 2))
    assert_fits(text)
    # 80 columns leave 74 for the two clipped columns: the widest shrinks first, to 37 each.
    assert body(text) == [["1", "x" * 36 + "…", "short"], ["22", "y", "z" * 36 + "…"]]
    assert max(len(line) for line in text.splitlines()) == 80
