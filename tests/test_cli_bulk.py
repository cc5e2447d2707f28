"""Bulk operator actions (``requeue --all/--entrypoint``, ``cancel --entrypoint``,
``purge``) and ``failed`` with last errors, against real PostgreSQL; then the same
methods on the in-memory adapter.

Every database test builds a queue with queued, deferred, picked and held jobs
over several entrypoints and checks that exactly the intended rows changed and
exactly the intended log rows were written.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from pgqueue_sync import DBSettings, Job, JobId, Queries, SyncPsycopgDriver
from pgqueue_sync.cli import cli
from pgqueue_sync.errors import ConfigurationError
from pgqueue_sync.models import CancellationEvent, TracebackRecord, parse_event
from pgqueue_sync.queries import NOTIFY_PAYLOAD_LIMIT, BulkPlan
from pgqueue_sync.testing import InMemoryDriver, InMemoryQueries, ManualClock
from tests.test_cli import one_line_error
from tests.worker_helpers import make_pgq, pool_for, running, wait_for

HB = timedelta(seconds=30)
WORKER = uuid.UUID("0b5e3c7a-52f4-4b51-9d0e-6a1f2c3d4e5f")
SECRET = b"secret-payload-do-not-print"
ROOT = Path(__file__).resolve().parents[1]


def invoke(dsn: str, *args: str) -> Result:
    """``pgq-sync --dsn DSN ARGS`` in-process (stdin is not a terminal), 80 columns."""
    runner = CliRunner(env={"COLUMNS": "80"})
    return runner.invoke(cli, ["--dsn", dsn, *args], catch_exceptions=False)


def ok(dsn: str, *args: str) -> Result:
    result = invoke(dsn, *args)
    assert result.exit_code == 0, result.output
    return result


def pgq_sync(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m pgqueue_sync ARGS`` in a subprocess whose stdin is not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "pgqueue_sync", *args], stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout, env=_clean_env(), check=False,
    )


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGQUEUE", "PGQUEUER_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def record(job_id: int, exc: Exception) -> TracebackRecord:
    try:
        raise exc
    except Exception as raised:
        return TracebackRecord.from_exception(raised, job_id=job_id)  # type: ignore[arg-type]


def table_rows(conn: psycopg.Connection[Any]) -> dict[int, tuple[str, str, int]]:
    """Every queue row: id -> (status, entrypoint, attempts)."""
    rows = conn.execute("SELECT id, status::text, entrypoint, attempts FROM pgqueuer").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def last_log_id(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT COALESCE(max(id), 0) FROM pgqueuer_log").fetchone()
    assert row is not None
    return int(row[0])


def log_since(conn: psycopg.Connection[Any], after: int) -> list[tuple[int, str, str]]:
    """Log rows written after log id ``after``: (job_id, status, entrypoint), by job."""
    rows = conn.execute(
        "SELECT job_id, status::text, entrypoint FROM pgqueuer_log WHERE id > %s "
        "ORDER BY job_id, id", [after],
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


class Mix:
    """A queue over three entrypoints, made through the real operations.

    ``a``: 3 queued (one deferred by an hour), 2 picked, 3 held; ``b``: 2 queued
    (one deferred), 1 picked, 2 held; ``c``: 1 queued (deferred), 1 held. The
    first held job of each entrypoint was retried with a record, then held with
    a newer one; the second was held without a record; the third with one.
    """

    def __init__(self, queries: Queries) -> None:
        self.queued: dict[str, list[JobId]] = {}
        self.picked: dict[str, list[JobId]] = {}
        self.held: dict[str, list[JobId]] = {}
        plan = {"a": (3, 2, 3), "b": (2, 1, 2), "c": (1, 0, 1)}
        for ep, (queued, picked, held) in plan.items():
            ids = queries.enqueue([ep] * (picked + held), [SECRET] * (picked + held))
            jobs = queries.dequeue(picked + held, {ep: 0}, WORKER, None, HB)
            assert sorted(j.id for j in jobs) == sorted(ids)
            by_id = {j.id: j for j in sorted(jobs, key=lambda j: j.id)}
            self.picked[ep] = sorted(by_id)[:picked]
            self.held[ep] = sorted(by_id)[picked:]
            self._hold(queries, [by_id[i] for i in self.held[ep]])
            delays = [timedelta(hours=1)] + [timedelta(0)] * (queued - 1)
            self.queued[ep] = queries.enqueue([ep] * queued, [SECRET] * queued,
                                              execute_after=delays)

    def _hold(self, queries: Queries, jobs: list[Job]) -> None:
        for n, job in enumerate(jobs):
            if n == 0:
                # A retry with its record, then a hold with a newer one.
                queries.log_jobs((), retries=[(job, timedelta(0), record(job.id, KeyError("x")))])
                [again] = queries.dequeue(1, {job.entrypoint: 0}, WORKER, None, HB)
                assert again.id == job.id
                queries.log_jobs([(again, "failed", record(job.id, ValueError("bad image")))])
            elif n == 1:
                queries.log_jobs([(job, "failed", None)])  # no record at all
            else:
                queries.log_jobs([(job, "failed", record(job.id, OSError("disk full")))])


@pytest.fixture
def mix(queries: Queries) -> Mix:
    return Mix(queries)


# -- requeue --------------------------------------------------------------------------------


def test_requeue_entrypoint_moves_exactly_its_held_jobs(
    conn: psycopg.Connection[Any], dsn: str, mix: Mix
) -> None:
    before, mark = table_rows(conn), last_log_id(conn)
    result = ok(dsn, "requeue", "--entrypoint", "a")
    held = mix.held["a"]
    assert result.stdout == f"requeued {len(held)} job(s): {', '.join(map(str, held))}\n"
    after = table_rows(conn)
    assert {i: after[i] for i in held} == {i: ("queued", "a", 0) for i in held}
    assert {i: r for i, r in after.items() if i not in held} == {
        i: r for i, r in before.items() if i not in held
    }
    assert log_since(conn, mark) == [(i, "queued", "a") for i in held]


def test_requeue_all_in_small_batches_and_a_summary_when_many(
    conn: psycopg.Connection[Any], dsn: str, queries: Queries, mix: Mix
) -> None:
    extra = queries.enqueue(["d"] * 25, [None] * 25)
    jobs = queries.dequeue(25, {"d": 0}, WORKER, None, HB)
    queries.log_jobs([(j, "failed", None) for j in jobs])
    held = sorted([*extra, *(i for ids in mix.held.values() for i in ids)])
    before, mark = table_rows(conn), last_log_id(conn)
    result = ok(dsn, "requeue", "--all", "--batch-size", "7")
    # 31 jobs: too many to list, so a count per entrypoint; 31 / 7 -> 5 batches.
    assert result.stdout == "requeued 31 job(s) in 5 batch(es): a 3, b 2, c 1, d 25\n"
    after = table_rows(conn)
    assert all(after[i][0] == "queued" and after[i][2] == 0 for i in held)
    assert {i: r for i, r in after.items() if i not in held} == {
        i: r for i, r in before.items() if i not in held
    }
    assert [(j, s) for j, s, _ in log_since(conn, mark)] == [(i, "queued") for i in held]
    assert queries.list_failed_jobs() == []
    assert ok(dsn, "requeue", "--all").stdout == "requeued 0 job(s): no held jobs\n"


def test_requeue_keeps_a_held_job_whose_dedupe_key_is_taken(
    conn: psycopg.Connection[Any], dsn: str, queries: Queries
) -> None:
    # Two held jobs with key "k" (a hold frees the key), then an active one takes it;
    # one held job with key "solo" and nothing competing.
    held = []
    for key in ("k", "k", "solo"):
        [job_id] = queries.enqueue("a", None, dedupe_key=key)
        [job] = queries.dequeue(1, {"a": 0}, WORKER, None, HB)
        queries.log_jobs([(job, "failed", None)])
        held.append(job_id)
    result = ok(dsn, "requeue", "--entrypoint", "a")
    # Of the two "k" jobs only the lower id goes back: both would break the index.
    assert result.stdout == f"requeued 2 job(s): {held[0]}, {held[2]}\n"
    assert "kept 1 job(s) held: an active job holds their dedupe key" in result.stderr
    assert table_rows(conn)[held[1]][0] == "failed"
    [active] = queries.enqueue("a", None, dedupe_key="other")
    assert queries.log_jobs([(active, "failed", None)]) == [active]  # held, key "other"
    queries.enqueue("a", None, dedupe_key="other")  # an active job takes the key
    again = ok(dsn, "requeue", "--all")
    assert again.stdout == "requeued 0 job(s)\n"
    assert "kept 2 job(s) held" in again.stderr  # "k" (taken by held[0]) and "other"


def test_a_waiting_worker_runs_requeued_jobs_at_once(dsn: str, queries: Queries) -> None:
    runs: dict[int, int] = {}
    lock = threading.Lock()
    finished = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("flaky", on_failure="hold")
        def flaky(job: Job) -> None:
            with lock:
                runs[job.id] = runs.get(job.id, 0) + 1
                first, total = runs[job.id] == 1, sum(runs.values())
            if first:
                raise RuntimeError("first run fails")
            if total == 6:
                finished.set()

        ids = queries.enqueue(["flaky"] * 3, [None] * 3)
        with running(pgq, dequeue_timeout=30, log_aggregation_interval=0):
            wait_for(lambda: len(queries.list_failed_jobs()) == 3, what="three held jobs")
            # Idle in its 30 s wait and listening: only a NOTIFY can wake it in time.
            wait_for(lambda: pgq.qm.idle_waits > 0 and pgq.qm.listener_healthy(1.0),
                     what="an idle, listening worker")
            started = time.monotonic()
            result = ok(dsn, "requeue", "--entrypoint", "flaky")
            assert result.stdout == f"requeued 3 job(s): {', '.join(map(str, ids))}\n"
            assert finished.wait(10), f"requeued jobs did not run: {runs}"
            elapsed = time.monotonic() - started
    assert elapsed < 10 and runs == {i: 2 for i in ids}
    assert queries.queue_size() == []


# -- cancel ---------------------------------------------------------------------------------


class Listener:
    """The queue channel's payloads, collected on an extra connection."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.payloads: list[str] = []
        conn.execute("LISTEN ch_pgqueuer")

    def drain(self) -> list[str]:
        """Every payload delivered so far (waits half a second for stragglers)."""
        for note in self.conn.notifies(timeout=0.5, stop_after=None):
            self.payloads.append(note.payload)
        return self.payloads


def cancelled_ids(payloads: Sequence[str]) -> list[int]:
    ids: list[int] = []
    for payload in payloads:
        event = parse_event(payload)
        if isinstance(event, CancellationEvent):
            ids += event.ids
    return ids


def test_cancel_entrypoint_removes_queued_and_running_jobs_and_notifies(
    conn: psycopg.Connection[Any], dsn: str, mix: Mix, connect: Any
) -> None:
    before, mark = table_rows(conn), last_log_id(conn)
    gone = sorted(mix.queued["a"] + mix.picked["a"])
    listener = Listener(connect())
    result = ok(dsn, "cancel", "--entrypoint", "a", "--batch-size", "2")
    payloads = listener.drain()
    assert result.stdout == f"canceled {len(gone)} job(s): {', '.join(map(str, gone))}\n"
    after = table_rows(conn)
    assert set(gone).isdisjoint(after)
    assert after == {i: r for i, r in before.items() if i not in gone}  # held 'a' jobs stay
    assert log_since(conn, mark) == [(i, "canceled", "a") for i in gone]
    # The running ones see their cancellation token: every id was announced.
    assert sorted(cancelled_ids(payloads)) == gone
    assert ok(dsn, "cancel", "--entrypoint", "a").stdout == (
        "canceled 0 job(s): no queued or running jobs of a\n")


def test_cancel_of_thousands_splits_the_notification_under_the_payload_limit(
    conn: psycopg.Connection[Any], dsn: str, queries: Queries, connect: Any
) -> None:
    conn.execute("ALTER SEQUENCE pgqueuer_id_seq RESTART WITH 1000000000")  # long ids
    ids = queries.enqueue(["many"] * 1500, [None] * 1500)
    listener = Listener(connect())
    result = ok(dsn, "cancel", "--entrypoint", "many", "--batch-size", "1500")
    payloads = listener.drain()
    assert result.stdout == "canceled 1500 job(s) in 1 batch(es): many 1500\n"
    events = [p for p in payloads if '"cancellation_event"' in p]
    assert len(events) >= 2 and all(len(p.encode()) <= NOTIFY_PAYLOAD_LIMIT for p in events)
    assert sorted(cancelled_ids(payloads)) == ids
    assert table_rows(conn) == {}


# -- purge ----------------------------------------------------------------------------------


def test_purge_deletes_only_queued_jobs_of_the_entrypoint(
    conn: psycopg.Connection[Any], dsn: str, mix: Mix
) -> None:
    before, mark = table_rows(conn), last_log_id(conn)
    gone = sorted(mix.queued["a"] + mix.queued["c"])  # the deferred ones too
    result = ok(dsn, "purge", "a", "c", "--yes", "--batch-size", "2")
    assert result.stdout == "deleted 4 queued job(s) of a, c in 2 batch(es)\n"
    after = table_rows(conn)
    assert after == {i: r for i, r in before.items() if i not in gone}
    assert all(after[i][0] == "picked" for i in mix.picked["a"])
    assert all(after[i][0] == "failed" for i in mix.held["a"] + mix.held["c"])
    assert [(j, s) for j, s, _ in log_since(conn, mark)] == [(i, "deleted") for i in gone]
    assert ok(dsn, "purge", "a", "--yes").stdout == "no queued jobs of a\n"


def test_purge_dry_run_counts_and_changes_nothing(
    conn: psycopg.Connection[Any], dsn: str, mix: Mix
) -> None:
    before, mark = table_rows(conn), last_log_id(conn)
    assert ok(dsn, "purge", "b", "--dry-run").stdout == "would delete 2 queued job(s) of b\n"
    assert table_rows(conn) == before and last_log_id(conn) == mark


def test_purge_without_yes_and_no_terminal_refuses_before_touching_anything(
    conn: psycopg.Connection[Any], dsn: str, mix: Mix
) -> None:
    before = table_rows(conn)
    result = pgq_sync("--dsn", dsn, "purge", "a")
    assert result.returncode == 2
    assert "pass --yes" in one_line_error(result) and result.stdout == ""
    assert table_rows(conn) == before


def _on_a_terminal(args: Sequence[str], answer: bytes) -> str:
    """Run ``pgq-sync ARGS`` with a pseudo-terminal for stdin and stdout, type ``answer``
    at its prompt, and return everything it wrote."""
    main, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "pgqueue_sync", *args], stdin=child, stdout=child,
        stderr=child, env=_clean_env(), close_fds=True,
    )
    os.close(child)
    output = b""
    try:
        deadline = time.monotonic() + 60
        answered = False
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(main, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            if not answered and b"[y/N]" in output:
                os.write(main, answer)
                answered = True
            if process.poll() is not None and not ready:
                break
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(main)
    return output.decode(errors="replace")


def test_purge_on_a_terminal_asks_first(
    conn: psycopg.Connection[Any], dsn: str, mix: Mix
) -> None:
    before = table_rows(conn)
    refused = _on_a_terminal(["--dsn", dsn, "purge", "b"], b"n\n")
    assert "delete 2 queued job(s) of b? [y/N]" in refused and "Aborted" in refused
    assert table_rows(conn) == before
    accepted = _on_a_terminal(["--dsn", dsn, "purge", "b"], b"y\n")
    assert "deleted 2 queued job(s) of b in 1 batch(es)" in accepted
    assert set(table_rows(conn)) == set(before) - set(mix.queued["b"])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["requeue"], "which jobs? give job IDS, --all or --entrypoint"),
        (["requeue", "1", "--all"], "IDS and --all exclude each other"),
        (["requeue", "1", "--entrypoint", "a"], "IDS and --entrypoint exclude each other"),
        (["requeue", "--all", "--entrypoint", "a"], "--all and --entrypoint exclude each other"),
        (["cancel"], "which jobs? give job IDS or --entrypoint"),
        (["cancel", "7", "--entrypoint", "a"], "IDS and --entrypoint exclude each other"),
        (["cancel", "--all"], "--all"),
        (["purge"], "Missing argument"),
        (["purge", "a", "--batch-size", "0"], "--batch-size"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_usage_errors_are_one_line_exit_2(
    conn: psycopg.Connection[Any], dsn: str, mix: Mix, args: list[str], fragment: str
) -> None:
    before, mark = table_rows(conn), last_log_id(conn)
    result = pgq_sync("--dsn", dsn, *args)
    assert result.returncode == 2, result.stderr
    line = one_line_error(result)
    assert fragment in line and f"pgq-sync {args[0]} --help" in line
    assert table_rows(conn) == before and last_log_id(conn) == mark


def test_large_purge_never_blocks_a_concurrent_claim(
    conn: psycopg.Connection[Any], dsn: str, queries: Queries, connect: Any
) -> None:
    total = 20_000
    queries.enqueue(["bulk"] * total, [None] * total)
    queries.enqueue(["other"] * 200, [None] * 200)
    claimer = Queries(SyncPsycopgDriver(connect()), settings=DBSettings())
    claimed: list[int] = []
    waits: list[float] = []
    started = time.monotonic()
    purge = subprocess.Popen(
        [sys.executable, "-m", "pgqueue_sync", "--dsn", dsn, "purge", "bulk", "--yes"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_clean_env(),
    )
    try:
        # Claim while the purge runs: from the purged entrypoint and from another.
        while purge.poll() is None:
            for ep in ("bulk", "other"):
                t0 = time.monotonic()
                jobs = claimer.dequeue(5, {ep: 0}, WORKER, None, HB)
                waits.append(time.monotonic() - t0)
                claimed += [j.id for j in jobs if j.entrypoint == "bulk"]
        out, err = purge.communicate(timeout=120)
    finally:
        if purge.poll() is None:
            purge.kill()
            purge.wait()
    seconds = time.monotonic() - started
    assert purge.returncode == 0, err
    deleted = total - len(claimed)
    assert out.startswith(f"deleted {deleted} queued job(s) of bulk in "), out
    # The claimed (picked) jobs are still there; no queued 'bulk' job is left.
    counts = dict(conn.execute(
        "SELECT status::text, count(*) FROM pgqueuer WHERE entrypoint = 'bulk' GROUP BY 1"
    ).fetchall())
    assert counts == ({"picked": len(claimed)} if claimed else {})
    [logged] = conn.execute(
        "SELECT count(*) FROM pgqueuer_log WHERE status = 'deleted' AND entrypoint = 'bulk'"
    ).fetchone() or [None]
    assert logged == deleted
    print(f"\npurge of {total} jobs: {seconds:.2f}s; {len(waits)} concurrent claims, "
          f"longest {max(waits) * 1000:.0f} ms, {len(claimed)} of them took purged-entrypoint "
          "jobs")
    assert waits and max(waits) < 2.0, max(waits)  # loose: a batch lock is never waited for
    assert seconds < 90


# -- failed ---------------------------------------------------------------------------------


def test_failed_shows_each_jobs_last_error(conn: psycopg.Connection[Any], dsn: str,
                                           mix: Mix) -> None:
    text = ok(dsn, "failed").stdout
    assert SECRET.decode() not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    lines = {int(line.split()[0]): line for line in text.splitlines()[2:]}
    retried_then_held, bare, plain = mix.held["a"]
    assert lines[retried_then_held].endswith("ValueError: bad image")  # newer than the retry
    assert lines[bare].endswith(" -")  # no row of it carries a record
    assert lines[plain].endswith("OSError: disk full")
    items = {item["id"]: item for item in json.loads(ok(dsn, "failed", "--json").stdout)}
    assert items[retried_then_held]["last_error"]["exception_type"] == "ValueError"
    assert items[retried_then_held]["last_error"]["exception_message"] == "bad image"
    assert items[retried_then_held]["last_error"]["status"] == "failed"
    assert items[bare]["last_error"] is None
    assert items[plain]["payload_bytes"] == len(SECRET)
    assert SECRET.decode() not in json.dumps(items)


def test_last_errors_ignores_log_rows_of_an_earlier_job_with_the_same_id(
    conn: psycopg.Connection[Any], queries: Queries
) -> None:
    [job_id] = queries.enqueue("a", None)
    [job] = queries.dequeue(1, {"a": 0}, WORKER, None, HB)
    queries.log_jobs([(job, "failed", None)])
    conn.execute(
        "INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority, traceback, created) "
        "VALUES (%s, 'exception', 'a', 0, %s, NOW() - interval '1 day')",
        [job_id, json.dumps(record(job_id, ValueError("old job")).to_json())],
    )
    assert queries.last_errors([job_id]) == {}


# -- the in-memory adapter --------------------------------------------------------------------


@pytest.fixture
def mem() -> InMemoryQueries:
    clock = ManualClock(datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc))
    return InMemoryQueries(InMemoryDriver(clock=clock), settings=DBSettings())


def test_in_memory_bulk_actions_match_postgresql(queries: Queries, mem: InMemoryQueries) -> None:
    outcomes = []
    for q in (queries, mem):
        mix = Mix(q)  # type: ignore[arg-type]
        before = q.queue_size()
        requeued = q.run_bulk(q.plan_bulk("requeue", entrypoints="a"), batch_size=2)
        canceled = q.run_bulk(q.plan_bulk("cancel", entrypoints=["b"]), batch_size=2)
        purged = q.run_bulk(q.plan_bulk("purge", entrypoints=("a", "c")), batch_size=2)
        errors = q.last_errors(mix.held["c"] + mix.held["b"])
        log = sorted((e.job_id, e.status) for e in q.queue_log())
        outcomes.append((before, requeued, canceled, purged, q.queue_size(), log,
                         {i: (e.status, e.summary) for i, e in errors.items()}))
    assert outcomes[0] == outcomes[1]


def test_in_memory_plan_and_run(mem: InMemoryQueries) -> None:
    mix = Mix(mem)  # type: ignore[arg-type]
    plan = mem.plan_bulk("purge", entrypoints="a")
    assert plan == BulkPlan("purge", ("a",), 3, max(mix.queued["a"]))
    late = mem.enqueue("a", None)  # after the plan: not purged
    batches: list[int] = []
    result = mem.run_bulk(plan, batch_size=2, on_batch=batches.append)
    assert (result.done, result.batches, result.ids) == (3, 2, tuple(mix.queued["a"]))
    assert batches == [2, 1] and dict(result.by_entrypoint) == {"a": 3}
    assert [j.id for j in mem.dequeue(10, {"a": 0}, WORKER, None, HB)] == late
    assert mem.plan_bulk("requeue").count == 6
    assert mem.plan_bulk("cancel", entrypoints=["b", "c"]).count == 4


def test_in_memory_cancel_announces_every_id_within_the_payload_limit(
    mem: InMemoryQueries,
) -> None:
    payloads: list[str] = []
    mem.driver.add_listener(payloads.append)
    ids = mem.enqueue(["many"] * 3000, [None] * 3000)
    result = mem.run_bulk(mem.plan_bulk("cancel", entrypoints="many"), batch_size=3000)
    assert result.done == 3000 and mem.queue_size() == []
    events = [p for p in payloads if '"cancellation_event"' in p]
    assert len(events) >= 2 and all(len(p.encode()) <= NOTIFY_PAYLOAD_LIMIT for p in events)
    assert sorted(cancelled_ids(payloads)) == ids


def test_bulk_arguments_are_checked_alike(queries: Queries, mem: InMemoryQueries) -> None:
    for q in (queries, mem):
        with pytest.raises(ConfigurationError, match="needs the entrypoints"):
            q.plan_bulk("purge")
        with pytest.raises(ConfigurationError, match="at least one entrypoint"):
            q.plan_bulk("cancel", entrypoints=[])
        with pytest.raises(ConfigurationError, match="bulk action"):
            q.plan_bulk("delete", entrypoints="a")  # type: ignore[arg-type]
        plan = q.plan_bulk("requeue")
        with pytest.raises(ConfigurationError, match="batch_size"):
            q.run_bulk(plan, batch_size=0)
        assert q.run_bulk(plan).done == 0
