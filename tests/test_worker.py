"""The threaded worker against real PostgreSQL (in-process; see test_worker_processes)."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import pytest

from pgqueue_sync import ConfigurationError, Job, RetryRequested, SchemaError
from pgqueue_sync.app import PgQueuer
from pgqueue_sync.worker.cancellation import Context
from pgqueue_sync.worker.executors import DatabaseRetryEntrypointExecutor

from .worker_helpers import make_pgq, pool_for, running, wait_for

FAST = {"dequeue_timeout": 0.5, "log_aggregation_interval": 0}


def statuses(queries, ids):
    return dict(queries.job_status(ids))


def terminal(queries, ids, status="successful"):
    return lambda: (
        all(s == status for s in statuses(queries, ids).values())
        and len(statuses(queries, ids)) == len(ids)
    )


def test_sync_and_async_handlers_run_in_priority_order(dsn, queries):
    order: list[int] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("sync")
        def sync_handler(job: Job) -> None:
            order.append(job.priority)

        @pgq.entrypoint("async")
        async def async_handler(job: Job) -> None:
            await asyncio.sleep(0)
            order.append(job.priority)

        ids = queries.enqueue(["sync", "async", "sync", "async"], [None] * 4, [1, 4, 3, 2])
        pgq.run(mode="drain", concurrency=1, batch_size=1, **FAST)
    assert order == [4, 3, 2, 1]
    assert statuses(queries, ids) == {i: "successful" for i in ids}
    assert queries.queue_size() == []


def test_idle_worker_is_woken_by_notify(dsn, queries):
    seen = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("ping")(lambda job: seen.set())
        with running(pgq, dequeue_timeout=30):
            # Listening (its own probe echoes) and idle (in its 30 s wait): only a
            # NOTIFY can start the job within 5 s now.
            wait_for(lambda: pgq.qm.idle_waits > 0 and pgq.qm.listener_healthy(1.0))
            waits = pgq.qm.idle_waits
            queries.enqueue("ping", None)
            assert seen.wait(5), "a NOTIFY should wake the idle worker well before 30s"
            assert pgq.qm.idle_waits >= waits


def test_deferred_job_runs_after_its_time(dsn, queries):
    started: list[float] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("later")(lambda job: started.append(time.monotonic()))
        t0 = time.monotonic()
        queries.enqueue("later", None, execute_after=timedelta(seconds=0.6))
        pgq.run(mode="drain", **FAST)
    assert started and started[0] - t0 >= 0.5


def test_retry_requested_keeps_job_and_counts_attempts(dsn, queries):
    attempts: list[int] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("flaky")
        def flaky(job: Job) -> None:
            attempts.append(job.attempts)
            if job.attempts < 2:
                raise RetryRequested(delay=timedelta(milliseconds=50), reason="not yet")

        [job_id] = queries.enqueue("flaky", b"p", headers={"k": "v"})
        pgq.run(mode="drain", **FAST)
    assert attempts == [0, 1, 2]
    log = [entry for entry in queries.queue_log() if entry.job_id == job_id]
    assert [e.status for e in log] == [
        "queued",
        "picked",
        "queued",
        "picked",
        "queued",
        "picked",
        "successful",
    ]
    retry_record = log[2].traceback
    assert retry_record.additional_context["reason"] == "not yet"
    assert retry_record.additional_context["attempt"] == 0
    assert retry_record.additional_context["retry_delay"] == "0:00:00.050000"


def test_database_retry_executor_backs_off_then_holds(dsn, queries, conn):
    calls: list[int] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        def factory(params):
            return DatabaseRetryEntrypointExecutor(
                params,
                max_attempts=2,
                initial_delay=timedelta(milliseconds=20),
                max_delay=timedelta(milliseconds=40),
            )

        @pgq.entrypoint("always_fails", executor_factory=factory, on_failure="hold")
        def always_fails(job: Job) -> None:
            calls.append(job.attempts)
            raise ValueError("nope")

        [job_id] = queries.enqueue("always_fails", None)
        pgq.run(mode="drain", **FAST)
    assert calls == [0, 1, 2]
    [held] = queries.list_failed_jobs()
    assert (held.id, held.attempts) == (job_id, 2)
    delays = [
        e.traceback.additional_context["retry_delay"]
        for e in queries.queue_log()
        if e.status == "queued" and e.traceback
    ]
    assert delays == ["0:00:00.020000", "0:00:00.040000"]
    failed = [e for e in queries.queue_log() if e.status == "failed"][0]
    assert failed.traceback.exception_type == "ValueError"


def test_backoff_delays_grow_and_cap():
    from pgqueue_sync.worker.executors import EntrypointExecutorParameters

    params = EntrypointExecutorParameters(0, lambda job: None)
    executor = DatabaseRetryEntrypointExecutor(
        params, initial_delay=timedelta(seconds=1), max_delay=timedelta(seconds=5)
    )
    assert [executor.delay_for(n).total_seconds() for n in range(5)] == [1, 2, 4, 5, 5]
    jittered = DatabaseRetryEntrypointExecutor(params, jitter=0.5)
    assert all(0.5 <= jittered.delay_for(0).total_seconds() <= 1.5 for _ in range(50))
    with pytest.raises(ConfigurationError, match="jitter"):
        DatabaseRetryEntrypointExecutor(params, jitter=2)


def test_failure_is_logged_with_traceback_and_hold_can_be_requeued(dsn, queries):
    runs: list[int] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("boom")
        def boom(job: Job) -> None:
            raise RuntimeError("deleted on failure")

        @pgq.entrypoint("parked", on_failure="hold")
        def parked(job: Job) -> None:
            runs.append(job.id)
            if len(runs) == 1:
                raise RuntimeError("held")

        boom_id, parked_id = queries.enqueue(["boom", "parked"], [None, None])
        pgq.run(mode="drain", **FAST)
        assert statuses(queries, [boom_id, parked_id]) == {
            boom_id: "exception",
            parked_id: "failed",
        }
        assert queries.requeue_jobs([parked_id]) == [parked_id]
        pgq2 = make_pgq(pool)
        pgq2.entrypoint("parked")(parked)
        pgq2.run(mode="drain", **FAST)
    assert runs == [parked_id, parked_id]
    assert statuses(queries, [parked_id]) == {parked_id: "successful"}


def test_cancel_running_sync_job_cooperatively(dsn, queries):
    started = threading.Event()
    outcome: list[str] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("long")
        def long(job: Job, ctx: Context) -> None:
            started.set()
            if ctx.cancellation.wait(10):
                outcome.append("noticed")

        [job_id] = queries.enqueue("long", None)
        with running(pgq, **FAST):
            assert started.wait(5)
            assert pgq.qm.get_context(job_id).cancellation.cancelled is False
            queries.mark_job_as_cancelled([job_id])
            wait_for(lambda: outcome)
            wait_for(lambda: not pgq.qm.job_context)
    assert statuses(queries, [job_id]) == {job_id: "canceled"}
    assert [e.status for e in queries.queue_log()].count("canceled") == 1


def test_cancel_running_async_job_cancels_coroutine(dsn, queries):
    started = threading.Event()
    cancelled = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("long_async")
        async def long_async(job: Job) -> None:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        [job_id] = queries.enqueue("long_async", None)
        with running(pgq, **FAST):
            assert started.wait(5)
            queries.mark_job_as_cancelled([job_id])
            assert cancelled.wait(5)
            wait_for(lambda: not pgq.qm.job_context)
    assert statuses(queries, [job_id]) == {job_id: "canceled"}


def test_resources_are_one_shared_mapping(dsn, queries):
    shared = {"counter": 0}
    seen: list[object] = []
    lock = threading.Lock()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool, resources=shared)

        @pgq.entrypoint("count")
        def count(job: Job, ctx: Context) -> None:
            with lock:
                seen.append(ctx.resources)
                ctx.resources["counter"] += 1

        @pgq.entrypoint("count_async")
        async def count_async(job: Job, ctx: Context) -> None:
            with lock:
                seen.append(ctx.resources)
                ctx.resources["counter"] += 1

        queries.enqueue(["count"] * 5 + ["count_async"] * 5, [None] * 10)
        pgq.run(mode="drain", **FAST)
    assert shared["counter"] == 10
    assert all(r is shared for r in seen)
    assert pgq.resources is shared and pgq.qm.resources is shared


def test_max_concurrent_tasks_caps_this_workers_claims(dsn, queries):
    peak = [0]
    running_now = [0]
    lock = threading.Lock()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("work")
        def work(job: Job) -> None:
            with lock:
                running_now[0] += 1
                peak[0] = max(peak[0], running_now[0])
            time.sleep(0.02)
            with lock:
                running_now[0] -= 1

        queries.enqueue(["work"] * 40, [None] * 40)
        pgq.run(mode="drain", batch_size=2, max_concurrent_tasks=4, concurrency=10, **FAST)
    assert 1 <= peak[0] <= 4
    assert queries.queue_size() == []


def test_concurrency_limit_in_one_worker(dsn, queries):
    peak = [0]
    running_now = [0]
    lock = threading.Lock()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("limited", concurrency_limit=2)
        def limited(job: Job) -> None:
            with lock:
                running_now[0] += 1
                peak[0] = max(peak[0], running_now[0])
            time.sleep(0.02)
            with lock:
                running_now[0] -= 1

        queries.enqueue(["limited"] * 12, [None] * 12)
        pgq.run(mode="drain", concurrency=8, **FAST)
    assert peak[0] == 2
    assert queries.queue_size() == []


def test_requests_per_second_paces_starts(dsn, queries):
    starts: list[float] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("paced", requests_per_second=10)(lambda job: starts.append(time.monotonic()))
        queries.enqueue(["paced"] * 25, [None] * 25)
        pgq.run(mode="drain", **FAST)
    assert len(starts) == 25
    # A burst of up to 10, then about 10 per second: 25 starts need >= ~1.4 s.
    assert starts[-1] - starts[0] >= 1.2


def test_drain_mode_waits_for_deferred_and_in_flight(dsn, queries):
    done: list[int] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("slowish")
        def slowish(job: Job) -> None:
            time.sleep(0.3)
            done.append(job.id)

        ids = queries.enqueue(["slowish"] * 2, [None] * 2, execute_after=[None, 0.4])
        pgq.run(mode="drain", **FAST)
    assert sorted(done) == sorted(ids)


def test_shutdown_event_from_handler_stops_gracefully(dsn, queries):
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("stopper")
        def stopper(job: Job) -> None:
            pgq.shutdown.set()

        [job_id] = queries.enqueue("stopper", None)
        pgq.run(**FAST)  # returns because the handler set the event
    assert statuses(queries, [job_id]) == {job_id: "successful"}


def test_bounded_shutdown_hands_unfinished_jobs_back(dsn, queries, conn):
    started = threading.Event()
    release = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("stuck")
        def stuck(job: Job) -> None:
            started.set()
            release.wait(10)

        [job_id] = queries.enqueue("stuck", None)
        try:
            with running(pgq, shutdown_timeout=0.2, **FAST):
                assert started.wait(5)
        finally:
            release.set()
    row = conn.execute(
        "SELECT status::text, queue_manager_id FROM pgqueuer WHERE id = %s", [job_id]
    ).fetchone()
    assert row == ("queued", None)
    last = queries.queue_log()[-1]
    assert (last.job_id, last.status) == (job_id, "queued")
    assert last.traceback.additional_context["reason"] == "shutdown"


def test_heartbeats_refresh_running_jobs(dsn, queries, conn):
    started = threading.Event()
    release = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("beat")
        def beat(job: Job) -> None:
            started.set()
            release.wait(10)

        [job_id] = queries.enqueue("beat", None)
        try:
            with running(pgq, heartbeat_timeout=0.4, **FAST):
                assert started.wait(5)
                conn.execute("UPDATE pgqueuer SET heartbeat = NOW() - interval '1 hour'")
                wait_for(
                    lambda: conn.execute(
                        "SELECT NOW() - heartbeat < interval '1 second' "
                        "FROM pgqueuer WHERE id = %s",
                        [job_id],
                    ).fetchone()[0],
                    timeout=3,
                )
                release.set()
        finally:
            release.set()


def test_run_validates_arguments_before_touching_the_database(dsn):
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("x")(lambda job: None)
        with pytest.raises(ConfigurationError, match="twice batch_size"):
            pgq.run(batch_size=10, max_concurrent_tasks=5)
        with pytest.raises(ConfigurationError, match="mode"):
            pgq.run(mode="sometimes")
        with pytest.raises(ConfigurationError, match="batch_size"):
            pgq.run(batch_size=0)
        with pytest.raises(ConfigurationError, match="dequeue_timeout"):
            pgq.run(dequeue_timeout=-1)
        with pytest.raises(ConfigurationError, match="already registered"):
            pgq.entrypoint("x")(lambda job: None)
        with pytest.raises(ConfigurationError, match="serialized_dispatch"):
            pgq.entrypoint("y", serialized_dispatch=True, concurrency_limit=3)(lambda job: None)


def test_run_refuses_a_database_without_schema(empty_dsn):
    with pool_for(empty_dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("x")(lambda job: None)
        with pytest.raises(SchemaError, match="pgq-sync install"):
            pgq.run(mode="drain")


def test_context_detection_by_annotation():
    from pgqueue_sync.worker.executors import accepts_context

    def with_ctx(job: Job, ctx: Context) -> None: ...
    def without(job: Job) -> None: ...
    async def async_ctx(job, context: Context) -> None: ...

    assert accepts_context(with_ctx) and accepts_context(async_ctx)
    assert not accepts_context(without)


def test_pgqueuer_facade_names(dsn):
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        assert isinstance(pgq, PgQueuer)
        assert pgq.qm.shutdown is pgq.shutdown
        assert pgq.channel == "ch_pgqueuer"


def test_in_memory_worker_runs_sync_async_and_limited_jobs():
    pgq = PgQueuer.in_memory()
    seen: list[bytes] = []

    @pgq.entrypoint("plain")
    def plain(job: Job) -> None:
        seen.append(job.payload)

    @pgq.entrypoint("limited", concurrency_limit=1)
    async def limited(job: Job) -> None:
        seen.append(job.payload)

    @pgq.entrypoint("flaky")
    def flaky(job: Job) -> None:
        if job.attempts == 0:
            raise RetryRequested(reason="once")
        seen.append(job.payload)

    pgq.queries.enqueue(["plain", "limited", "limited", "flaky"], [b"1", b"2", b"3", b"4"])
    pgq.run(mode="drain", **FAST)
    assert sorted(seen) == [b"1", b"2", b"3", b"4"]
    assert pgq.queries.queue_size() == []


def test_async_handlers_never_exceed_concurrency(dsn, queries):
    """Short jobs make the worker prefetch a batch beyond its threads; async jobs would
    start at once, so with async handlers there is no prefetch: ``concurrency`` caps
    the jobs in flight."""
    peak = 0
    running_now = 0
    lock = threading.Lock()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("short")
        async def short(job: Job) -> None:
            nonlocal peak, running_now
            with lock:
                running_now += 1
                peak = max(peak, running_now)
            await asyncio.sleep(0.002)
            with lock:
                running_now -= 1

        ids = queries.enqueue(["short"] * 60, [None] * 60)
        pgq.run(mode="drain", concurrency=2, batch_size=5, **FAST)
    assert statuses(queries, ids) == {i: "successful" for i in ids}
    assert 1 <= peak <= 2


def test_a_second_drain_on_the_same_worker_runs_the_new_jobs(dsn, queries):
    """A drain sets ``shutdown`` once the queue is empty (as PgQueuer does, and the
    facade's scheduler stops on it); a script or cron job that drains again with
    the same worker must not stop at once and leave the new jobs queued."""
    ran: list[int] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("again")(lambda job: ran.append(job.id))
        for count in (2, 3):
            ids = queries.enqueue(["again"] * count, [None] * count)
            pgq.run(mode="drain", **FAST)
            assert set(ids) <= set(ran)
            assert queries.queue_size() == []
            assert pgq.shutdown.is_set()  # until the next run() starts
    assert len(ran) == 5
