"""Real worker processes: signals, crashes, heartbeats, fleet-wide limits, reconnects.

Each test starts ``python -m tests.apps.process_worker`` children (the app runs
through :func:`pgqueue_sync.launcher.run`, as ``pgq-sync run`` does) against a
fresh database. Handlers report ``start``/``end`` lines to a JSON-lines file under
``tmp_path``; "hold" jobs run until the test creates their release file, so every
wait is on a real condition with a deadline. The thread-level behaviour of the
same features is covered in ``test_worker.py``; here the point is what only a
process shows: exit codes, signal delivery, ``SIGKILL``, several workers at once
and connections cut by the server.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgqueue_sync import Queries

from .process_helpers import BOOT_TIMEOUT, ROOT, WorkerProcess
from .worker_helpers import wait_for

#: Short heartbeat timeout for the stale-job tests (seconds).
T = 1.0


class Fleet:
    """Starts workers on one database and reads what their handlers reported."""

    def __init__(self, dsn: str, tmp_path: Path) -> None:
        self.dsn = dsn
        self.tmp_path = tmp_path
        self.events_path = tmp_path / "events.jsonl"
        self.workers: list[WorkerProcess] = []
        paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}

    def start(self, name: str, **run_options: Any) -> WorkerProcess:
        """Start a worker; ``run_options`` become ``--option value`` flags."""
        argv = [sys.executable, "-u", "-m", "tests.apps.process_worker",
                "--dsn", self.dsn, "--events", str(self.events_path)]
        for key, value in run_options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        worker = WorkerProcess(name, argv, self.tmp_path / f"{name}.log", self.env)
        self.workers.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()

    def events(self, event: str | None = None, job: int | None = None) -> list[dict[str, Any]]:
        """Handler events in file order, optionally filtered."""
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines()
        found = [json.loads(line) for line in lines if line]
        return [
            e for e in found
            if (event is None or e["event"] == event) and (job is None or e["job"] == job)
        ]

    def hold(self, key: str, max_seconds: float = 60) -> bytes:
        """A payload that keeps its handler running until :meth:`release` of ``key``."""
        path = self.tmp_path / f"release-{key}"
        return json.dumps({"release": str(path), "max": max_seconds}).encode()

    def release(self, key: str) -> None:
        (self.tmp_path / f"release-{key}").touch()


@pytest.fixture
def fleet(dsn: str, tmp_path: Path) -> Iterator[Fleet]:
    """A :class:`Fleet`; every worker is stopped afterwards and its log printed
    (pytest shows it when the test fails)."""
    workers = Fleet(dsn, tmp_path)
    try:
        yield workers
    finally:
        workers.stop_all()
        for worker in workers.workers:
            print(f"----- {worker.name} (pid {worker.pid}, exit {worker.proc.returncode}) -----")
            print(worker.log())


def wait_until(what: str, predicate: Callable[[], object], timeout: float) -> Any:
    """:func:`wait_for`, failing with a description of the awaited condition."""
    try:
        return wait_for(predicate, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


def sleep_payload(seconds: float) -> bytes:
    return json.dumps({"seconds": seconds}).encode()


def log_statuses(queries: Queries, job_id: int) -> list[str]:
    return [e.status for e in queries.queue_log() if e.job_id == job_id]


def one(conn: psycopg.Connection[Any], query: str, params: list[Any] | None = None) -> Any:
    """The single row of ``query``; fails if there is none."""
    found = conn.execute(query, params).fetchone()
    assert found is not None, f"no row for {query!r} {params!r}"
    return found


def row(conn: psycopg.Connection[Any], job_id: int) -> tuple[Any, ...]:
    """(status, queue_manager_id, attempts) of a job that is still in the queue table."""
    return tuple(one(
        conn, "SELECT status::text, queue_manager_id, attempts FROM pgqueuer WHERE id = %s",
        [job_id],
    ))


def status_of(queries: Queries, job_id: int) -> str | None:
    """The latest logged status of a job."""
    for _, status in queries.job_status([job_id]):
        return status
    return None


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant (an end at t closes before a start at t)."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    current = peak = 0
    for _, step in points:
        current += step
        peak = max(peak, current)
    return peak


def intervals_by_job(fleet: Fleet, entrypoint: str) -> dict[int, tuple[float, float, int]]:
    """job id -> (start, end, pid) of the handler runs of ``entrypoint`` that ended."""
    starts = {e["job"]: e for e in fleet.events("start") if e["entrypoint"] == entrypoint}
    ends = {e["job"]: e for e in fleet.events("end") if e["entrypoint"] == entrypoint}
    return {j: (starts[j]["t"], ends[j]["t"], starts[j]["pid"]) for j in ends}


# -- 1. graceful SIGTERM ---------------------------------------------------------------------


def test_sigterm_waits_for_the_running_job_and_leaves_queued_jobs(
    fleet: Fleet, queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    """SIGTERM while a sync job runs: the process keeps running until the job
    returns, records it ``successful``, exits 0, and never claims the jobs still
    waiting in the queue."""
    running, *waiting = queries.enqueue(
        ["hold"] * 3, [fleet.hold("first"), sleep_payload(0), sleep_payload(0)], [10, 0, 0]
    )
    worker = fleet.start("worker", concurrency=1, batch_size=1)
    wait_until("the held job started", lambda: fleet.events("start", running), BOOT_TIMEOUT)

    worker.send(signal.SIGTERM)
    worker.assert_running_for(0.5)  # the job still runs, so the worker must wait
    assert row(conn, running)[0] == "picked"
    fleet.release("first")
    assert worker.wait_exit(10) == 0

    assert fleet.events("end", running), "the running job should have completed"
    assert log_statuses(queries, running) == ["queued", "picked", "successful"]
    for job_id in waiting:
        assert row(conn, job_id) == ("queued", None, 0)
        assert log_statuses(queries, job_id) == ["queued"]
    assert [e["job"] for e in fleet.events("start")] == [running]


# -- 2. bounded shutdown ---------------------------------------------------------------------


def test_job_outlasting_shutdown_timeout_is_handed_back_and_rerun(
    fleet: Fleet, queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    """With ``shutdown_timeout`` a job that will not finish does not keep the
    process alive: it exits promptly and cleanly, the job is ``queued`` again at
    once (not left ``picked`` until its heartbeat goes stale) with a log row that
    says why, and another worker later runs it to completion."""
    [job_id] = queries.enqueue("hold", fleet.hold("stuck"))
    first = fleet.start("first", concurrency=1, shutdown_timeout=0.5)
    wait_until("the held job started", lambda: fleet.events("start", job_id), BOOT_TIMEOUT)

    signalled = time.monotonic()
    first.send(signal.SIGTERM)
    assert first.wait_exit(8) == 0
    assert time.monotonic() - signalled < 8

    assert row(conn, job_id) == ("queued", None, 0)
    log = [e for e in queries.queue_log() if e.job_id == job_id]
    assert [e.status for e in log] == ["queued", "picked", "queued"]
    why = log[-1].traceback
    assert why is not None
    assert why.exception_type == "PgqException"
    assert "shut down before the job finished" in why.exception_message
    assert why.additional_context is not None
    assert why.additional_context["reason"] == "shutdown"

    fleet.release("stuck")  # the second run may finish
    second = fleet.start("second", concurrency=1)
    wait_until(
        "the second worker completed the job",
        lambda: status_of(queries, job_id) == "successful", BOOT_TIMEOUT,
    )
    assert [e["pid"] for e in fleet.events("start", job_id)] == [first.pid, second.pid]
    assert log_statuses(queries, job_id) == ["queued", "picked", "queued", "picked", "successful"]


# -- 3. second signal ------------------------------------------------------------------------


def test_second_signal_ends_the_graceful_wait_at_once(
    fleet: Fleet, queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    """Without ``shutdown_timeout`` the first SIGTERM waits for running jobs
    indefinitely; a second signal (here SIGINT) ends the wait at once, and the
    unfinished job is still handed back to the queue rather than lost."""
    [job_id] = queries.enqueue("hold", fleet.hold("forever"))
    worker = fleet.start("worker", concurrency=1)
    wait_until("the held job started", lambda: fleet.events("start", job_id), BOOT_TIMEOUT)

    worker.send(signal.SIGTERM)
    worker.assert_running_for(0.5)  # graceful: waiting for the job
    signalled = time.monotonic()
    worker.send(signal.SIGINT)
    assert worker.wait_exit(5) == 0
    assert time.monotonic() - signalled < 5

    assert not fleet.events("end", job_id)
    assert row(conn, job_id) == ("queued", None, 0)
    last = [e for e in queries.queue_log() if e.job_id == job_id][-1]
    assert last.status == "queued"
    assert last.traceback is not None and last.traceback.additional_context is not None
    assert last.traceback.additional_context["reason"] == "shutdown"


def test_signal_during_blocked_final_writes_exits_cleanly_without_losing_the_job(
    fleet: Fleet, queries: Queries, conn: psycopg.Connection[Any], connect: Any
) -> None:
    """A second signal while the final outcome write is stuck on a row lock ends
    the process at once with exit 0 (no traceback); the job is not lost."""
    [job_id] = queries.enqueue("hold", fleet.hold("release-me"))
    worker = fleet.start("worker", concurrency=1)
    wait_until("the held job started", lambda: fleet.events("start", job_id), BOOT_TIMEOUT)
    locker = connect(autocommit=False)
    locker.execute("SELECT 1 FROM pgqueuer WHERE id = %s FOR UPDATE", [job_id])
    try:
        worker.send(signal.SIGTERM)
        fleet.release("release-me")
        wait_until("the job ended", lambda: fleet.events("end", job_id), BOOT_TIMEOUT)
        worker.assert_running_for(0.5)  # its final write waits for our lock
        worker.send(signal.SIGINT)
        assert worker.wait_exit(5) == 0
        assert "Traceback" not in worker.log()
    finally:
        locker.rollback()
    # The blocked statement was already on the server: it completes once the
    # lock goes, so the outcome is recorded, not lost.
    wait_until("the outcome is written", lambda: status_of(queries, job_id) == "successful", 5)
    assert one(conn, "SELECT count(*) FROM pgqueuer WHERE id = %s", [job_id]) == (0,)


# -- 4. SIGKILL ------------------------------------------------------------------------------


def test_job_of_a_killed_worker_is_repicked_once_its_heartbeat_is_stale(
    fleet: Fleet, queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    """A worker killed with SIGKILL cannot hand its job back: the row stays
    ``picked`` until its heartbeat is older than ``heartbeat_timeout``, then
    another worker re-picks it (``attempts`` unchanged, a second ``picked`` log
    row) and completes it."""
    [job_id] = queries.enqueue("hold", fleet.hold("crash"))
    doomed = fleet.start("doomed", concurrency=1, heartbeat_timeout=T)
    wait_until("the held job started", lambda: fleet.events("start", job_id), BOOT_TIMEOUT)
    owner = row(conn, job_id)
    assert owner[0] == "picked"

    doomed.send(signal.SIGKILL)
    assert doomed.wait_exit(5) == -signal.SIGKILL
    assert row(conn, job_id) == owner  # nobody cleaned up after the crash

    fleet.release("crash")
    rescuer = fleet.start("rescuer", concurrency=1, heartbeat_timeout=T, dequeue_timeout=0.2)
    wait_until(
        "the second worker completed the job",
        lambda: status_of(queries, job_id) == "successful", BOOT_TIMEOUT,
    )

    runs = fleet.events("start", job_id)
    assert [e["pid"] for e in runs] == [doomed.pid, rescuer.pid]
    assert [e["attempts"] for e in runs] == [0, 0]  # a stale re-pick is not a retry
    assert log_statuses(queries, job_id) == ["queued", "picked", "picked", "successful"]


# -- 5. heartbeats ---------------------------------------------------------------------------


def test_heartbeats_keep_a_long_job_from_being_repicked(
    fleet: Fleet, queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    """A job running for several ``heartbeat_timeout`` periods in one worker is
    never stale: its heartbeat stays fresh, and a second worker polling all the
    while (same timeout) does not take it. The handler runs exactly once."""
    left = fleet.start("left", concurrency=1, heartbeat_timeout=T, dequeue_timeout=0.2)
    right = fleet.start("right", concurrency=1, heartbeat_timeout=T, dequeue_timeout=0.2)
    left.wait_started()
    right.wait_started()
    [job_id] = queries.enqueue("hold", fleet.hold("long"))
    wait_until("the long job started", lambda: fleet.events("start", job_id), 10)
    picked = row(conn, job_id)

    # Watch for 3 T: the row keeps its owner and a heartbeat younger than T.
    watch_until = time.monotonic() + 3 * T
    while time.monotonic() < watch_until:
        status, owner, age = one(
            conn,
            "SELECT status::text, queue_manager_id, extract(epoch FROM NOW() - heartbeat) "
            "FROM pgqueuer WHERE id = %s", [job_id],
        )
        assert (status, owner) == ("picked", picked[1])
        assert age < T, f"heartbeat {age:.2f}s old; the job could be re-picked"
        time.sleep(0.05)  # sampling interval of the watch, not a wait for a condition

    fleet.release("long")
    wait_until("the long job completed", lambda: status_of(queries, job_id) == "successful", 10)
    assert len(fleet.events("start", job_id)) == 1
    assert log_statuses(queries, job_id) == ["queued", "picked", "successful"]
    assert left.proc.poll() is None and right.proc.poll() is None


# -- 6. fleet-wide concurrency_limit ---------------------------------------------------------


def test_concurrency_limit_holds_across_worker_processes(
    fleet: Fleet, queries: Queries
) -> None:
    """``concurrency_limit=2`` caps running jobs of the entrypoint across the
    fleet, not per process: while worker A holds one seat, worker B (4 threads,
    plenty of queued jobs) runs at most one job at a time; over all 20 jobs the
    handler intervals, compared on one monotonic clock, never overlap more than 2
    and do reach 2 (seats are not wasted)."""
    a = fleet.start("a", concurrency=4, dequeue_timeout=0.2)
    [held] = queries.enqueue("limited", fleet.hold("a"), priority=10)
    fillers = queries.enqueue(["filler"] * 3, [fleet.hold("a")] * 3)
    # A holds one seat of 'limited' and all four of its threads.
    wait_until("A runs its 4 held jobs", lambda: len(fleet.events("start")) == 4, BOOT_TIMEOUT)
    assert {e["pid"] for e in fleet.events("start")} == {a.pid}

    b = fleet.start("b", concurrency=4, dequeue_timeout=0.2)
    b.wait_started()
    short = queries.enqueue(["limited"] * 19, [sleep_payload(0.1)] * 19)

    def done_by_b() -> int:
        return sum(1 for _, _, pid in intervals_by_job(fleet, "limited").values() if pid == b.pid)

    wait_until("B completed 5 limited jobs", lambda: done_by_b() >= 5, 10)
    fleet.release("a")  # A's seat and threads free up: both workers compete now
    everything = [held, *fillers, *short]
    wait_until(
        "all 23 jobs successful",
        lambda: [s for _, s in queries.job_status(everything)] == ["successful"] * len(everything),
        15,
    )

    runs = intervals_by_job(fleet, "limited")
    assert sorted(runs) == sorted([held, *short])
    assert len(fleet.events("start")) == len(everything)  # each job ran once
    spans = [(start, end) for start, end, _ in runs.values()]
    assert max_overlap(spans) == 2
    # While A held its seat, B never ran two 'limited' jobs at once.
    held_start, held_end, held_pid = runs[held]
    assert held_pid == a.pid
    b_during_hold = [
        (max(s, held_start), min(e, held_end))
        for s, e, pid in runs.values()
        if pid == b.pid and s < held_end and e > held_start
    ]
    assert len(b_during_hold) >= 5
    assert max_overlap(b_during_hold) == 1


# -- 7. listener reconnect -------------------------------------------------------------------


LISTENERS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN %'"
)


def test_worker_survives_terminated_backends_and_listens_again(
    fleet: Fleet, queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    """``pg_terminate_backend`` on every connection of a pool-driver worker
    (its LISTEN connection and its pooled ones): the worker reconnects, runs
    the jobs enqueued while its listener was down (their NOTIFYs were lost), and
    a job enqueued afterwards starts within a second or two although
    ``dequeue_timeout`` is 30 s, so the LISTEN connection itself is back."""
    worker = fleet.start("worker", concurrency=2, dequeue_timeout=30)
    worker.wait_started()
    old = {pid for (pid,) in conn.execute(LISTENERS).fetchall()}
    assert len(old) == 1

    [(killed,)] = conn.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    assert killed >= 2  # the listener and at least one pooled connection
    during = queries.enqueue(["hold"] * 3, [sleep_payload(0)] * 3)

    wait_until(
        "a new LISTEN connection",
        lambda: {pid for (pid,) in conn.execute(LISTENERS).fetchall()} - old, 10,
    )
    wait_until(
        "the jobs enqueued while disconnected were run",
        lambda: [s for _, s in queries.job_status(during)] == ["successful"] * 3, 10,
    )

    # Let the dispatcher settle into its 30 s idle wait: no worker statement running.
    wait_until(
        "no worker statement running",
        lambda: one(
            conn,
            "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state = 'active' AND backend_type = 'client backend'",
        )[0],
        5,
    )
    enqueued = time.monotonic()
    [after] = queries.enqueue("hold", sleep_payload(0))
    wait_until(
        "the job enqueued after reconnecting ran",
        lambda: status_of(queries, after) == "successful", 10,
    )
    latency = time.monotonic() - enqueued
    assert latency < 3, f"job took {latency:.1f}s: woken by polling, not by NOTIFY"
    assert worker.proc.poll() is None
    assert len(fleet.events("start")) == 4
