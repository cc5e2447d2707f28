"""Per-job timeouts (``entrypoint(..., timeout=...)``) against real PostgreSQL, and
the in-memory adapter. Hung handlers block on an Event the test releases in
``finally``; every wait is bounded."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from pgqueue_sync import ConfigurationError, Job
from pgqueue_sync.app import PgQueuer
from pgqueue_sync.worker.cancellation import Context
from pgqueue_sync.worker.executors import DatabaseRetryEntrypointExecutor

from .worker_helpers import make_pgq, pool_for, running, wait_for

FAST = {"dequeue_timeout": 0.5, "log_aggregation_interval": 0}
TIMEOUT = 0.4
#: How late a timeout may be recorded: the watchdog fires at the deadline, the
#: outcome is written by the next flush (~100 ms) or claim.
MARGIN = 3.0
#: How long a hung test handler blocks at most (it is released in finally).
HANG = 30.0
#: Bound of waits that include the worker's start-up (not a timing assertion).
WITHIN = 15.0
SECRET = b"do-not-log-this-payload"
TERMINAL = {"successful", "exception", "failed", "canceled", "deleted"}


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set in finally: every hung handler returns, whatever the test did."""
    event = threading.Event()
    try:
        yield event
    finally:
        event.set()


def terminal_rows(queries: Any, job_id: int) -> list[Any]:
    return [e for e in queries.queue_log() if e.job_id == job_id and e.status in TERMINAL]


def statuses(queries: Any, ids: list[int]) -> dict[int, str]:
    return dict(queries.job_status(ids))


def warnings_matching(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and text in r.getMessage()]


def test_hung_def_handler_is_recorded_once_and_its_late_return_ignored(
    dsn: str, queries: Any, release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgqueue_sync")
    returned, started = threading.Event(), threading.Event()
    tokens: list[Context] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("hang", timeout=TIMEOUT)
        def hang(job: Job, ctx: Context) -> str:
            tokens.append(ctx)
            started.set()
            release.wait(HANG)
            returned.set()
            return "late"

        pgq.entrypoint("quick")(lambda job: None)
        with running(pgq, concurrency=2, **FAST):
            [job_id] = queries.enqueue("hang", SECRET)
            assert started.wait(10)
            t0 = time.monotonic()
            wait_for(lambda: statuses(queries, [job_id]).get(job_id) == "exception",
                     timeout=TIMEOUT + MARGIN, what="the timeout recorded")
            assert time.monotonic() - t0 < TIMEOUT + MARGIN
            assert not returned.is_set()
            assert tokens[0].cancellation.cancelled  # the token is set at the timeout
            [row] = terminal_rows(queries, job_id)
            assert row.traceback.exception_type == "TimeoutError"
            assert "timeout of 0.4s" in row.traceback.exception_message
            # The traceback shows where the handler was stuck.
            assert "release.wait(HANG)" in row.traceback.traceback
            assert row.traceback.additional_context["exception_class_path"] == \
                "builtins.TimeoutError"
            # The row is no longer the worker's: heartbeats stop once it is written.
            assert queries.queue_size() == []
            wait_for(lambda: job_id not in pgq.qm._held.claimed, what="heartbeats stopped")
            assert pgq.qm._capacity is not None and pgq.qm._capacity.lost() == 1
            [warning] = warnings_matching(caplog, "ran past its timeout")
            assert f"job {job_id}" in warning and "'hang'" in warning and "0.4s" in warning

            release.set()
            assert returned.wait(5)
            wait_for(lambda: warnings_matching(caplog, "after its timeout"),
                     what="the late-return warning")
            wait_for(lambda: pgq.qm._capacity is not None and pgq.qm._capacity.lost() == 0)
            # A later job's outcome is written by the same buffer: had the late
            # return queued anything, it would have been written by now too.
            [later] = queries.enqueue("quick", None)
            wait_for(lambda: statuses(queries, [later]).get(later) == "successful")
    assert len(terminal_rows(queries, job_id)) == 1
    [late] = warnings_matching(caplog, "after its timeout")
    assert f"job {job_id}" in late and "returned" in late
    assert SECRET.decode() not in caplog.text


def test_retrying_executor_retries_a_timed_out_job(
    dsn: str, queries: Any, release: threading.Event
) -> None:
    attempts: list[int] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        def factory(params: Any) -> DatabaseRetryEntrypointExecutor:
            return DatabaseRetryEntrypointExecutor(
                params, max_attempts=1, initial_delay=timedelta(milliseconds=20),
                max_delay=timedelta(milliseconds=20),
            )

        @pgq.entrypoint("flaky", timeout=TIMEOUT, executor_factory=factory)
        def flaky(job: Job) -> None:
            attempts.append(job.attempts)
            if job.attempts == 0:
                release.wait(HANG)  # hangs on the first run only

        with running(pgq, concurrency=2, **FAST):
            [job_id] = queries.enqueue("flaky", None)
            wait_for(lambda: statuses(queries, [job_id]).get(job_id) == "successful",
                     timeout=WITHIN)
    assert attempts == [0, 1]
    log = [e for e in queries.queue_log() if e.job_id == job_id]
    retry = next(e for e in log if e.status == "queued" and e.traceback)
    assert retry.traceback.exception_type == "RetryRequested"
    assert retry.traceback.additional_context["exception_class_path"] == "builtins.TimeoutError"
    assert len([e for e in log if e.status in TERMINAL]) == 1


def test_timed_out_job_is_held_with_on_failure_hold(
    dsn: str, queries: Any, release: threading.Event
) -> None:
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("held", timeout=TIMEOUT, on_failure="hold")(
            lambda job: release.wait(HANG))
        with running(pgq, **FAST):
            [job_id] = queries.enqueue("held", None)
            wait_for(lambda: statuses(queries, [job_id]).get(job_id) == "failed",
                     timeout=WITHIN)
    [held] = queries.list_failed_jobs()
    assert held.id == job_id


def test_async_handler_is_cancelled_and_recorded(
    dsn: str, queries: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgqueue_sync")
    cancelled = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("forever", timeout=TIMEOUT)
        async def forever(job: Job) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        with running(pgq, **FAST):
            [job_id] = queries.enqueue("forever", None)
            wait_for(lambda: statuses(queries, [job_id]).get(job_id) == "exception",
                     timeout=WITHIN)
            assert cancelled.wait(5)
            wait_for(lambda: pgq.qm._capacity is not None and pgq.qm._capacity.lost() == 0,
                     what="the event-loop slot returned")
    [row] = terminal_rows(queries, job_id)
    assert row.traceback.exception_type == "TimeoutError"
    assert warnings_matching(caplog, "event-loop slot")


def test_handler_polling_its_token_stops(dsn: str, queries: Any) -> None:
    stopped = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("polite", timeout=TIMEOUT)
        def polite(job: Job, ctx: Context) -> None:
            if ctx.cancellation.wait(HANG):
                stopped.set()

        with running(pgq, **FAST):
            [job_id] = queries.enqueue("polite", None)
            assert stopped.wait(WITHIN), "the token should be set at the timeout"
            wait_for(lambda: statuses(queries, [job_id]).get(job_id) == "exception")
            wait_for(lambda: pgq.qm._capacity is not None and pgq.qm._capacity.lost() == 0)
    [row] = terminal_rows(queries, job_id)
    assert row.traceback.exception_type == "TimeoutError"  # a timeout, not a cancellation


def test_hung_handlers_use_up_capacity_until_they_return(
    dsn: str, queries: Any, release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgqueue_sync")
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("hang", timeout=TIMEOUT)(lambda job: release.wait(HANG))
        with running(pgq, concurrency=2, batch_size=1, **FAST):
            ids = queries.enqueue(["hang"] * 4, [None] * 4)
            wait_for(lambda: warnings_matching(caplog, "all 2 handler slots"),
                     timeout=WITHIN, what="the all-slots-held warning")
            wait_for(lambda: list(statuses(queries, ids).values()).count("exception") == 2)
            capacity = pgq.qm._capacity
            assert capacity is not None
            refused = threading.Event()
            reserve = capacity.reserve

            def watched() -> int:
                wanted = reserve()
                if wanted == 0:
                    refused.set()
                return wanted

            capacity.reserve = watched  # type: ignore[method-assign]
            [extra] = queries.enqueue("hang", None)  # its NOTIFY wakes the dispatcher
            assert refused.wait(10), "the worker should try to claim and find no room"
            now = statuses(queries, [*ids, extra])
            assert sorted(now.values()) == ["exception", "exception", "queued", "queued",
                                            "queued"], now
            assert capacity.limit() == 0
            release.set()  # the threads return: the others run (and return at once)
            wait_for(lambda: sorted(statuses(queries, [*ids, extra]).values()) == [
                "exception", "exception", "successful", "successful", "successful"],
                timeout=15)
    assert len(warnings_matching(caplog, "after its timeout")) == 2


def test_shutdown_does_not_wait_for_a_hung_handler(
    dsn: str, queries: Any, release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgqueue_sync")
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("hang", timeout=TIMEOUT)(lambda job: release.wait(HANG))
        # shutdown_timeout=None waits for running jobs: a timed-out one no longer is.
        with running(pgq, concurrency=1, shutdown_timeout=None, **FAST) as worker:
            first, second = queries.enqueue(["hang", "hang"], [None, None], [1, 0])
            wait_for(lambda: statuses(queries, [first]).get(first) == "exception",
                     timeout=WITHIN)
            t0 = time.monotonic()
            pgq.shutdown.set()
            worker.join(15)
            assert not worker.is_alive()
            assert time.monotonic() - t0 < 10
    assert warnings_matching(caplog, "still run timed-out handlers")
    # The second job never started (no free thread): it is in the queue.
    assert statuses(queries, [first, second]) == {first: "exception", second: "queued"}


@pytest.mark.parametrize("bad", [0, -1, 0.0, timedelta(0), timedelta(seconds=-1),
                                 "5", True, math.nan, math.inf, 1e12, 0.0001])
def test_bad_timeouts_are_rejected_at_registration(bad: Any) -> None:
    pgq = PgQueuer.in_memory()
    with pytest.raises(ConfigurationError, match="timeout"):
        pgq.entrypoint("x", timeout=bad)
    with pytest.raises(ConfigurationError, match="timeout"):
        pgq.qm.entrypoint("x", timeout=bad)
    assert "x" not in pgq.qm.entrypoint_registry


def test_good_timeouts_are_accepted() -> None:
    pgq = PgQueuer.in_memory()
    pgq.entrypoint("seconds", timeout=2)(lambda job: None)
    pgq.entrypoint("delta", timeout=timedelta(minutes=5))(lambda job: None)
    pgq.entrypoint("none", timeout=None)(lambda job: None)
    registry = pgq.qm.entrypoint_registry
    assert registry["seconds"].timeout == timedelta(seconds=2)
    assert registry["delta"].timeout == timedelta(minutes=5)
    assert registry["none"].timeout is None


def test_in_memory_adapter_times_out_the_same_way(release: threading.Event) -> None:
    pgq = PgQueuer.in_memory()
    pgq.entrypoint("hang", timeout=TIMEOUT)(lambda job: release.wait(HANG))
    [job_id] = pgq.queries.enqueue("hang", None)
    t0 = time.monotonic()
    pgq.run(mode="drain", **FAST)  # ends once the timed-out job is recorded
    assert time.monotonic() - t0 < TIMEOUT + MARGIN
    [row] = terminal_rows(pgq.queries, job_id)
    assert (row.status, row.traceback.exception_type) == ("exception", "TimeoutError")


def test_watchdog_expires_only_runs_not_settled_in_time() -> None:
    from pgqueue_sync.worker.timeouts import TimedRun, Watchdog

    fired: list[str] = []
    expired = threading.Event()

    def on_expiry(run: TimedRun) -> None:
        fired.append(run.job)
        expired.set()

    watchdog = Watchdog(name="test-timeouts").start()
    try:
        slow = watchdog.arm(TimedRun(timedelta(seconds=0.2), on_expiry, job="slow"))
        fast = watchdog.arm(TimedRun(timedelta(seconds=0.2), on_expiry, job="fast"))
        later = watchdog.arm(TimedRun(timedelta(seconds=30), on_expiry, job="later"))
        assert watchdog.settle(fast)  # ended in time: its outcome counts
        assert expired.wait(5)
        assert slow.expired.wait(5)
        assert not watchdog.settle(slow)  # expired: its outcome is ignored
        assert watchdog.settle(later)
        assert fired == ["slow"]
    finally:
        watchdog.stop()


def test_lost_slots_shrink_what_a_worker_may_claim() -> None:
    from pgqueue_sync.worker.capacity import Capacity

    capacity = Capacity(2, 10)
    capacity.settle(capacity.reserve(), 2)
    capacity.lose()
    capacity.finished(1.0)  # the timed-out job is recorded; its thread is still held
    assert capacity.reserve() == 0
    capacity.finished(1.0)  # the other job ends normally
    assert capacity.reserve() == 1
    capacity.settle(1, 0)
    capacity.lose()
    assert capacity.limit() == 0 and capacity.lost() == 2
    assert capacity.regain() == 1
    assert capacity.limit() == 1


def test_retry_executor_gives_up_on_timeouts_after_its_attempts() -> None:
    from pgqueue_sync import RetryRequested
    from pgqueue_sync.worker.executors import EntrypointExecutor, EntrypointExecutorParameters

    params = EntrypointExecutorParameters(concurrency_limit=0, func=lambda job: None)
    retrying = DatabaseRetryEntrypointExecutor(params, max_attempts=1)
    error = TimeoutError("late")
    job = Job.__new__(Job)
    object.__setattr__(job, "attempts", 0)
    retry = retrying.timed_out(job, error)
    assert isinstance(retry, RetryRequested) and retry.__cause__ is error
    object.__setattr__(job, "attempts", 1)
    assert retrying.timed_out(job, error) is error
    assert EntrypointExecutor(params).timed_out(job, error) is error
