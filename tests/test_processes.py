"""``pgq-sync run FACTORY --processes N``: a supervisor and real worker processes.

Each test starts ``python -m pgqueue_sync run tests.apps.process_group_app:factory``
in a session of its own, against a fresh database; its children write their
handler ``start``/``end`` lines to a JSON-lines file (see
:mod:`tests.apps.process_worker`), and "hold" jobs run until the test creates
their release file. Every wait polls a condition (the database, the events, the
supervisor's log) with a deadline; every process started is killed in
``finally`` (the supervisor's process group, and each child, which runs in a
session of its own).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgqueue_sync import Queries, processes
from pgqueue_sync.errors import ConfigurationError

from .process_helpers import ROOT, WorkerProcess
from .worker_helpers import wait_for

APP = "tests.apps.process_group_app:factory"
#: The line each child's worker logs once it runs (qm.QueueManager._run).
STARTED = re.compile(r"worker [0-9a-f-]{36} started")
CHILD_STARTED = re.compile(r"started worker process (\d+)/\d+: pid (\d+)")
#: How long the supervisor and its children may take to import, connect and start.
BOOT_TIMEOUT = 30.0
#: Short heartbeat timeout, so a killed child's jobs go stale quickly (seconds).
T = 1.0


class Group(WorkerProcess):
    """One supervisor (``pgq-sync run --processes``); its log is a file under tmp_path."""

    def __init__(self, dsn: str, tmp_path: Path, *options: str, factory: str = APP) -> None:
        self.tmp_path = tmp_path
        self.events_path = tmp_path / "events.jsonl"
        paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        argv = [sys.executable, "-m", "pgqueue_sync", "--dsn", dsn, "run", factory, *options,
                "--", "--dsn", dsn, "--events", str(self.events_path)]
        super().__init__("the supervisor", argv, tmp_path / "supervisor.log", env,
                         new_session=True)

    def started_workers(self) -> int:
        """How many child workers have logged that they run (replacements included)."""
        if self.proc.poll() is not None:
            raise AssertionError(f"the supervisor exited with {self.proc.returncode}:\n"
                                 f"{self.log()}")
        return len(STARTED.findall(self.log()))

    def wait_started(self, count: int) -> None:
        wait_until(f"{count} workers started", lambda: self.started_workers() >= count,
                   BOOT_TIMEOUT)

    def child_pids(self) -> list[int]:
        """Every child the supervisor has started, in order."""
        return [int(pid) for _, pid in CHILD_STARTED.findall(self.log())]

    def live_children(self) -> list[int]:
        return [pid for pid in self.child_pids() if _is_child(pid)]

    def events(self, event: str | None = None, job: int | None = None) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        found = [json.loads(line) for line in self.events_path.read_text().splitlines() if line]
        return [e for e in found
                if (event is None or e["event"] == event) and (job is None or e["job"] == job)]

    def hold(self, key: str, max_seconds: float = 60) -> bytes:
        return json.dumps({"release": str(self.tmp_path / f"release-{key}"),
                           "max": max_seconds}).encode()

    def release(self, key: str) -> None:
        (self.tmp_path / f"release-{key}").touch()

    def kill_everything(self) -> None:
        """SIGKILL the supervisor's group and every child still running; reap the supervisor."""
        pids = self.child_pids()
        with _gone():
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in pids:
            if _is_child(pid):
                with _gone():
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)


class _gone:
    """Ignore ProcessLookupError (the process has already exited)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *_: object) -> bool:
        return kind is ProcessLookupError


def _is_child(pid: int) -> bool:
    """A live worker process of ours (not a reused pid), zombies excluded."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"pgqueue_sync.processes" in cmdline and state != "Z"


@pytest.fixture
def start(dsn: str, tmp_path: Path) -> Iterator[Callable[..., Group]]:
    """Starts a :class:`Group`; kills everything afterwards and prints the log."""
    started: list[Group] = []

    def starter(*options: str, factory: str = APP) -> Group:
        group = Group(dsn, tmp_path, *options, factory=factory)
        started.append(group)
        return group

    try:
        yield starter
    finally:
        for group in started:
            group.kill_everything()
            print(f"----- supervisor (pid {group.pid}, exit {group.proc.returncode}) -----")
            print(group.log())


def wait_until(what: str, predicate: Callable[[], object], timeout: float) -> Any:
    try:
        return wait_for(predicate, timeout=timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


def sleep_payload(seconds: float) -> bytes:
    return json.dumps({"seconds": seconds}).encode()


def terminal_rows(conn: psycopg.Connection[Any]) -> dict[int, list[str]]:
    """job id -> its terminal log statuses (one each, if nothing ran twice)."""
    rows = conn.execute(
        "SELECT job_id, status::text FROM pgqueuer_log"
        " WHERE status IN ('successful', 'exception', 'canceled', 'deleted') ORDER BY id"
    ).fetchall()
    found: dict[int, list[str]] = {}
    for job_id, status in rows:
        found.setdefault(job_id, []).append(status)
    return found


def all_successful(conn: psycopg.Connection[Any], ids: list[int]) -> bool:
    done = terminal_rows(conn)
    return all(done.get(i) == ["successful"] for i in ids)


def assert_each_ran_once(group: Group, conn: psycopg.Connection[Any], ids: list[int]) -> None:
    done = terminal_rows(conn)
    assert {i: done.get(i) for i in ids} == dict.fromkeys(ids, ["successful"])
    started = sorted(e["job"] for e in group.events("start"))
    assert started == sorted(ids), "a job ran twice or not at all"
    assert conn.execute("SELECT count(*) FROM pgqueuer").fetchone() == (0,)


# -- start, drain, titles --------------------------------------------------------------------


def test_children_drain_the_queue_exactly_once_and_show_in_ps_and_workers(
    start: Callable[..., Group], queries: Queries, conn: psycopg.Connection[Any], dsn: str
) -> None:
    ids = queries.enqueue(["filler"] * 60, [sleep_payload(0.02)] * 60, [0] * 60)
    group = start("--processes", "3", "--concurrency", "2", "--batch-size", "2")
    group.wait_started(3)
    wait_until("every job done", lambda: all_successful(conn, ids), BOOT_TIMEOUT)
    assert_each_ran_once(group, conn, ids)

    children = group.live_children()
    assert len(children) == 3
    for index, pid in enumerate(children, start=1):
        assert Path(f"/proc/{pid}/comm").read_text().strip() == f"pgq-sync {index}/3"
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert f"worker {index}/3 {APP} supervisor={group.pid}" in cmdline
    listing = subprocess.run(
        [sys.executable, "-m", "pgqueue_sync", "--dsn", dsn, "workers", "--json"],
        capture_output=True, text=True, timeout=30, check=True, cwd=ROOT,
    )
    connected = [w for w in json.loads(listing.stdout) if w["seen"] == "connected"]
    assert len(connected) == 3
    # Each child logs which worker (queue_manager_id) it runs, with its pid.
    for worker in connected:
        assert re.search(rf"pid \d+ \(supervisor {group.pid}\) runs worker "
                         rf"{worker['queue_manager_id']}", group.log())

    group.send(signal.SIGTERM)
    assert group.wait_exit(20) == 0
    assert not group.live_children()


# -- a child killed with SIGKILL -------------------------------------------------------------


def test_a_killed_child_is_replaced_and_its_job_rescued(
    start: Callable[..., Group], queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    """SIGKILL one child mid-job: the supervisor logs it and starts a replacement;
    the job goes stale and is re-picked (a second run only for that job); every
    job ends up done once."""
    group = start("--processes", "2", "--concurrency", "1", "--batch-size", "1",
                  "--heartbeat-timeout", str(T), "--dequeue-timeout", "0.2")
    group.wait_started(2)
    doomed_job, other_job = queries.enqueue(["hold"] * 2, [group.hold("a"), group.hold("b")],
                                            [0, 0])
    wait_until("both held jobs started", lambda: len(group.events("start")) == 2, BOOT_TIMEOUT)
    [doomed_start] = group.events("start", doomed_job)
    [other_start] = group.events("start", other_job)
    assert doomed_start["pid"] != other_start["pid"]  # concurrency 1: one job per child

    os.kill(doomed_start["pid"], signal.SIGKILL)
    wait_until("the supervisor saw the kill",
               lambda: f"(pid {doomed_start['pid']}) was killed by SIGKILL" in group.log(),
               BOOT_TIMEOUT)
    group.wait_started(3)  # the replacement
    fillers = queries.enqueue(["filler"] * 10, [sleep_payload(0.01)] * 10, [0] * 10)
    group.release("a")
    group.release("b")
    ids = [doomed_job, other_job, *fillers]
    wait_until("every job done", lambda: all_successful(conn, ids), BOOT_TIMEOUT)

    runs = group.events("start", doomed_job)
    assert len(runs) == 2 and runs[1]["pid"] != doomed_start["pid"]
    assert [e["attempts"] for e in runs] == [0, 0]  # a stale re-pick, not a retry
    assert len(group.events("start", other_job)) == 1
    assert all(len(group.events("start", job)) == 1 for job in fillers)
    assert {i: terminal_rows(conn).get(i) for i in ids} == dict.fromkeys(ids, ["successful"])
    assert len(group.live_children()) == 2


# -- signals to the supervisor ---------------------------------------------------------------


def test_sigterm_lets_running_jobs_finish_then_every_child_exits(
    start: Callable[..., Group], queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    group = start("--processes", "2", "--concurrency", "1", "--batch-size", "1")
    group.wait_started(2)
    first, second, waiting = queries.enqueue(
        ["hold"] * 3, [group.hold("a"), group.hold("b"), sleep_payload(0)], [10, 10, 0])
    wait_until("two held jobs started", lambda: len(group.events("start")) == 2, BOOT_TIMEOUT)
    children = group.live_children()

    group.send(signal.SIGTERM)
    group.assert_running_for(1.0)  # the held jobs still run: the children wait
    group.release("a")
    wait_until("the first job ended", lambda: group.events("end", first), 10)
    group.assert_running_for(0.5)  # one child still waits for its job
    group.release("b")
    assert group.wait_exit(20) == 0

    assert all_successful(conn, [first, second])
    assert not group.events("start", waiting)  # nothing claimed after the signal
    assert conn.execute("SELECT status::text FROM pgqueuer WHERE id = %s",
                        [waiting]).fetchone() == ("queued",)
    assert not any(_is_child(pid) for pid in children)
    assert "was killed" not in group.log() and "restarting" not in group.log()


def test_a_second_sigterm_stops_the_children_at_once(
    start: Callable[..., Group], queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    group = start("--processes", "2", "--concurrency", "1", "--batch-size", "1")
    group.wait_started(2)
    ids = queries.enqueue(["hold"] * 2, [group.hold("a"), group.hold("b")], [0, 0])
    wait_until("both held jobs started", lambda: len(group.events("start")) == 2, BOOT_TIMEOUT)

    group.send(signal.SIGTERM)
    group.assert_running_for(1.0)
    signalled = time.monotonic()
    group.send(signal.SIGTERM)
    assert group.wait_exit(10) == 0
    assert time.monotonic() - signalled < 10

    assert not group.events("end")  # the jobs did not finish ...
    rows = conn.execute("SELECT status::text, queue_manager_id FROM pgqueuer WHERE id = ANY(%s)",
                        [ids]).fetchall()
    assert rows == [("queued", None)] * 2  # ... and went back to the queue, not lost
    assert not terminal_rows(conn)


def test_children_finish_their_jobs_and_leave_when_the_supervisor_dies(
    start: Callable[..., Group], queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    """The supervisor killed with SIGKILL cannot forward anything: each child sees its
    control pipe close, stops claiming, finishes its running job and exits."""
    group = start("--processes", "2", "--concurrency", "1", "--batch-size", "1")
    group.wait_started(2)
    [held] = queries.enqueue("hold", group.hold("a"))
    wait_until("the held job started", lambda: group.events("start", held), BOOT_TIMEOUT)
    children = group.live_children()

    with _gone():
        os.killpg(group.pid, signal.SIGKILL)  # the supervisor only: children have sessions
    group.wait_exit(10)
    [busy] = [e["pid"] for e in group.events("start", held)]
    wait_until("the idle child left", lambda: [p for p in children if _is_child(p)] == [busy],
               BOOT_TIMEOUT)
    later = queries.enqueue("filler", sleep_payload(0))
    group.release("a")
    wait_until("the busy child left", lambda: not _is_child(busy), BOOT_TIMEOUT)
    assert all_successful(conn, [held])
    assert conn.execute("SELECT status::text FROM pgqueuer WHERE id = ANY(%s)",
                        [later]).fetchall() == [("queued",)]
    assert "the supervisor is gone" in group.log()


# -- recycling ---------------------------------------------------------------------------------


def test_recycling_under_load_loses_nothing_and_runs_nothing_twice(
    start: Callable[..., Group], queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    count = 80
    ids = queries.enqueue(["filler"] * count, [sleep_payload(0.01)] * count, [0] * count)
    group = start("--processes", "2", "--max-jobs-per-child", "10", "--concurrency", "3")
    wait_until("every job done", lambda: all_successful(conn, ids), 90)
    assert_each_ran_once(group, conn, ids)

    log = group.log()
    assert len(re.findall(r"recycled after", log)) >= 3
    assert "ran 10 jobs (max_jobs_per_child 10)" in log
    assert "was killed" not in log and "exited with status" not in log
    # Each child ran at most its budget plus what it was already running.
    per_pid: dict[int, int] = {}
    for event in group.events("start"):
        per_pid[event["pid"]] = per_pid.get(event["pid"], 0) + 1
    assert max(per_pid.values()) <= 10 + 3
    group.wait_started(len(group.child_pids()))  # the replacements run too
    group.send(signal.SIGTERM)
    assert group.wait_exit(20) == 0


@pytest.mark.slow
def test_a_child_past_its_memory_budget_is_recycled(
    start: Callable[..., Group], queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    ids = queries.enqueue(["hog"] * 8, [json.dumps({"mb": 40}).encode()] * 8, [0] * 8)
    group = start("--max-memory-per-child", "150", "--concurrency", "1", "--batch-size", "1")
    wait_until("every job done", lambda: all_successful(conn, ids), 90)
    assert_each_ran_once(group, conn, ids)

    log = group.log()
    assert re.search(r"uses \d+ MB of memory \(max_memory_per_child 150\)", log)
    assert "recycled after" in log
    assert len({e["pid"] for e in group.events("start")}) >= 2
    group.send(signal.SIGTERM)
    assert group.wait_exit(20) == 0


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value"), [
    ("--processes", "0"),
    ("--processes", "two"),
    ("--max-jobs-per-child", "0"),
    ("--max-memory-per-child", "-5"),
])
def test_bad_values_are_one_line_errors(option: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pgqueue_sync", "run", APP, option, value],
        capture_output=True, text=True, timeout=30, check=False, cwd=ROOT,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: Invalid value for '{option}'")


def test_bad_arguments_from_python_fail_before_any_child_starts() -> None:
    with pytest.raises(ConfigurationError, match="--processes to 1 or more"):
        processes.run(APP, processes=0)
    with pytest.raises(ConfigurationError, match="--max-memory-per-child"):
        processes.run(APP, max_memory_per_child=0)
    with pytest.raises(ConfigurationError, match="import their factory by name"):
        processes.run(lambda: None, processes=1)
    with pytest.raises(ConfigurationError, match="module:function"):
        processes.run("no_colon", processes=1)
    with pytest.raises(ConfigurationError, match="cannot be passed to a worker process"):
        processes.run(APP, processes=1, mode=object())


def test_a_configuration_error_in_a_child_stops_the_group(
    start: Callable[..., Group],
) -> None:
    group = start("--processes", "2", factory="tests.apps.no_such_module:factory")
    assert group.wait_exit(BOOT_TIMEOUT) == 2
    lines = group.log().strip().splitlines()
    assert lines[-1].startswith("Error: worker process ")
    assert "configuration error" in lines[-1]
    assert "cannot import module 'tests.apps.no_such_module'" in group.log()
    assert "restarting" not in group.log()
