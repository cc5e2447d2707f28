"""``isolation="process"``: handlers in child processes, killed at their timeout.

First the pool alone, with real child processes; then a worker on real
PostgreSQL running isolated entrypoints: results, failures, a child killed at
its timeout (the job recorded once, the worker's thread free at once), a
child that dies.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pebble", reason='isolation tests need pebble: pip install -e ".[test]"')

from pgqueue_sync import ConfigurationError, Job  # noqa: E402
from pgqueue_sync.worker.cancellation import CancellationToken, Context, JobCancelled  # noqa: E402
from pgqueue_sync.worker.isolation import HandlerProcessDied, ProcessIsolation  # noqa: E402

from . import isolation_handlers as handlers  # noqa: E402
from .worker_helpers import wait_for  # noqa: E402

#: A child starts (spawn) and imports its handler's module in well under this.
DEADLINE = 30.0
#: When the cancellation test cancels its job (seconds).
TIMEOUT = 1.0


def make_job(payload: bytes | None = b"x") -> Job:
    now = datetime.now(timezone.utc)
    return Job(id=7, priority=0, created=now, updated=now, heartbeat=now, execute_after=now,
               status="picked", entrypoint="iso", payload=payload, attempts=0,
               queue_manager_id=uuid.uuid4(), slot=None, headers=None)


def context() -> Context:
    return Context(cancellation=CancellationToken())


@pytest.fixture
def isolate():
    made: list[ProcessIsolation] = []

    def build(func: Any, *, processes: int = 1) -> ProcessIsolation:
        pool = ProcessIsolation(func, entrypoint="iso", processes=processes)
        made.append(pool)
        return pool

    try:
        yield build
    finally:
        for pool in made:
            pool.close(immediate=True, timeout=DEADLINE)


def wait_for_pid(path: Path) -> int:
    text = wait_for(lambda: path.exists() and path.read_text(), timeout=DEADLINE,
                    what=f"the child writing {path}")
    return int(text)


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (reaped, or a zombie waiting for its parent)."""
    def exited() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    return bool(wait_for(exited, timeout=DEADLINE, what=f"process {pid} to exit"))


def test_the_handler_runs_in_a_child_and_its_result_comes_back(isolate):
    pool = isolate(handlers.echo)
    result = pool(make_job(b"hello"), context())
    assert result["id"] == 7 and result["payload"] == b"hello"
    assert result["pid"] != os.getpid()
    again = pool(make_job(), context())
    assert again["pid"] == result["pid"]  # the child is reused, not started per job


def test_an_exception_in_the_child_reaches_the_worker_with_its_type(isolate):
    with pytest.raises(ValueError, match="job 7 failed in the child"):
        isolate(handlers.fail)(make_job(), context())


def test_after_a_child_is_killed_the_pool_runs_the_next_job_in_a_new_child(isolate):
    pool = isolate(handlers.nap)
    first = pool(make_job(b"0"), context())
    ctx = context()
    timer = threading.Timer(TIMEOUT, ctx.cancellation.cancel)
    timer.name = "test-cancel-timer"
    timer.start()
    try:
        with pytest.raises(JobCancelled):
            pool(make_job(b"600"), ctx)
    finally:
        timer.cancel()
        timer.join(DEADLINE)
    assert gone(first)
    assert pool(make_job(b"0"), context()) != first


def test_cancelling_the_job_kills_its_child_at_once(isolate, tmp_path):
    pool = isolate(handlers.hang)  # no timeout: only cancellation stops it
    pid_file = tmp_path / "pid"
    ctx = context()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            pool(make_job(str(pid_file).encode()), ctx)
        except BaseException as exc:
            outcome.append(exc)

    runner = threading.Thread(target=run, name="test-isolated-runner")
    runner.start()
    try:
        pid = wait_for_pid(pid_file)
        ctx.cancellation.cancel()
        runner.join(DEADLINE)
        assert not runner.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], JobCancelled)
        assert gone(pid)
    finally:
        pool.close(immediate=True, timeout=DEADLINE)
        runner.join(DEADLINE)


@pytest.mark.parametrize("handler, code", [(handlers.die, "-9"), (handlers.exit_hard, "3")])
def test_a_child_that_dies_fails_the_job_with_its_exit_code(isolate, handler, code):
    with pytest.raises(HandlerProcessDied, match=f"exit code {code}"):
        isolate(handler)(make_job(), context())


def test_closing_immediately_kills_running_children(isolate, tmp_path):
    pool = isolate(handlers.hang)
    pid_file = tmp_path / "pid"
    errors: list[BaseException] = []
    runner = threading.Thread(
        target=lambda: _capture(errors, pool, make_job(str(pid_file).encode())),
        name="test-isolated-runner",
    )
    runner.start()
    try:
        pid = wait_for_pid(pid_file)
        pool.close(immediate=True, timeout=DEADLINE)
        runner.join(DEADLINE)
        assert not runner.is_alive() and errors
        assert gone(pid)
    finally:
        pool.close(immediate=True, timeout=DEADLINE)
        runner.join(DEADLINE)


def _capture(errors: list[BaseException], pool: ProcessIsolation, job: Job) -> None:
    try:
        pool(job, context())
    except BaseException as exc:
        errors.append(exc)


def local_function_factory() -> Any:
    def inner(job: Job) -> None:
        """Defined inside a function: a child cannot import it."""

    return inner


@pytest.mark.parametrize("func, message", [
    (lambda job: None, "module-level function"),
    (local_function_factory(), "module-level function"),
    (handlers.asynchronous, "async def"),
    (42, "plain function"),
])
def test_handlers_a_child_cannot_import_are_refused_at_registration(func, message):
    with pytest.raises(ConfigurationError, match=message):
        ProcessIsolation(func, entrypoint="iso", processes=1)


def test_at_least_one_process():
    with pytest.raises(ConfigurationError, match="at least one process"):
        ProcessIsolation(handlers.echo, entrypoint="iso", processes=0)


# -- in a worker ------------------------------------------------------------------------

FAST = {"dequeue_timeout": 0.5, "log_aggregation_interval": 0}
TERMINAL = {"successful", "exception", "failed", "canceled", "deleted"}


def terminal_rows(queries: Any, job_id: int) -> list[Any]:
    return [e for e in queries.queue_log() if e.job_id == job_id and e.status in TERMINAL]


def finished(queries: Any, job_id: int) -> bool:
    return bool(terminal_rows(queries, job_id))


def test_a_worker_runs_isolated_jobs_and_records_their_outcomes(dsn, queries):
    from .worker_helpers import make_pgq, pool_for, running

    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("echo", isolation="process")(handlers.echo)
        pgq.entrypoint("fail", isolation="process")(handlers.fail)
        pgq.entrypoint("die", isolation="process")(handlers.die)
        with running(pgq, concurrency=2, **FAST):
            ok, bad, dead = (queries.enqueue(name, b"p")[0] for name in ("echo", "fail", "die"))
            for job_id in (ok, bad, dead):
                wait_for(lambda job_id=job_id: finished(queries, job_id), timeout=DEADLINE,
                         what=f"job {job_id} recorded")
    [row] = terminal_rows(queries, ok)
    assert row.status == "successful"
    [row] = terminal_rows(queries, bad)
    assert row.status == "exception"
    assert row.traceback.exception_type == "ValueError"
    assert f"job {bad} failed in the child" in row.traceback.exception_message
    [row] = terminal_rows(queries, dead)
    assert row.traceback.exception_type == "HandlerProcessDied"
    assert "exit code -9" in row.traceback.exception_message


def test_an_isolated_handler_past_its_timeout_is_killed_and_its_thread_freed(
    dsn, queries, tmp_path, caplog
):
    from .worker_helpers import make_pgq, pool_for, running

    caplog.set_level(logging.WARNING, logger="pgqueue_sync")
    pid_file = tmp_path / "pid"
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("hang", isolation="process", timeout=TIMEOUT)(handlers.hang)
        pgq.entrypoint("echo", isolation="process")(handlers.echo)
        with running(pgq, concurrency=1, **FAST):
            [hung] = queries.enqueue("hang", str(pid_file).encode())
            pid = wait_for_pid(pid_file)
            wait_for(lambda: finished(queries, hung), timeout=DEADLINE, what="the timeout")
            assert gone(pid)
            # The only handler thread is free again: the next job runs.
            [after] = queries.enqueue("echo", b"x")
            wait_for(lambda: finished(queries, after), timeout=DEADLINE, what="the next job")
            assert pgq.qm._capacity is not None and pgq.qm._capacity.lost() == 0
    [row] = terminal_rows(queries, hung)
    assert row.status == "exception" and row.traceback.exception_type == "TimeoutError"
    assert [r.status for r in terminal_rows(queries, after)] == ["successful"]


def test_isolation_refuses_a_context_and_unknown_modes():
    from pgqueue_sync import PgQueuer

    pgq = PgQueuer.in_memory()
    with pytest.raises(ConfigurationError, match="take the job only"):
        pgq.entrypoint("ctx", isolation="process", accepts_context=True)(handlers.echo)
    with pytest.raises(ConfigurationError, match="isolation must be one of"):
        pgq.entrypoint("bad", isolation="fork")(handlers.echo)  # type: ignore[arg-type]
