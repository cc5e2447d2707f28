"""``CompletionWatcher`` against real PostgreSQL: LISTEN wake-ups, the safety poll, timeouts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgqueue_sync import (
    CompletionTimeout,
    CompletionWatcher,
    Context,
    Job,
    PgqException,
    Queries,
    SyncPsycopgDriver,
)
from pgqueue_sync.drivers import SyncPsycopgPoolDriver

from .worker_helpers import make_pgq, pool_for, running, wait_for

FAST = {"dequeue_timeout": 0.5, "log_aggregation_interval": 0}
ROOT = Path(__file__).resolve().parent.parent


def in_thread(fn: Any, *args: Any, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn`` in a thread; its result or exception lands in the returned dict."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the test
            out["error"] = exc
        out["at"] = time.monotonic()

    thread = threading.Thread(target=target, name="test-waiter", daemon=True)
    thread.start()
    return thread, out


def test_wait_for_jobs_processed_by_a_worker_thread(dsn, queries):
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("ok")
        def ok(job: Job) -> None:
            pass

        @pgq.entrypoint("boom")
        def boom(job: Job) -> None:
            raise ValueError("boom")

        with running(pgq, **FAST), CompletionWatcher(dsn) as watcher:
            [one] = queries.enqueue("ok", None)
            assert watcher.wait_for(one, timeout=10) == "successful"
            ids = queries.enqueue(["ok", "boom", "ok", "boom"], [None] * 4)
            statuses = watcher.wait_for_all(ids, timeout=10)
    assert list(statuses) == ids  # input order
    assert list(statuses.values()) == ["successful", "exception", "successful", "exception"]


def test_as_completed_yields_each_job_once_in_finishing_order(dsn, queries):
    release = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("fast")
        def fast(job: Job) -> None:
            pass

        @pgq.entrypoint("slow")
        def slow(job: Job) -> None:
            release.wait(10)

        with running(pgq, **FAST), CompletionWatcher(dsn) as watcher:
            [slow_id] = queries.enqueue("slow", None)
            fast_ids = queries.enqueue(["fast"] * 3, [None] * 3)
            seen = []
            for job_id, status in watcher.as_completed([slow_id, *fast_ids], timeout=10):
                seen.append((job_id, status))
                if len(seen) == 3:
                    release.set()
    assert {job_id for job_id, _ in seen[:3]} == set(fast_ids)
    assert seen[3:] == [(slow_id, "successful")]
    assert {status for _, status in seen} == {"successful"}


def test_timeout_lists_the_pending_ids_and_what_finished(dsn, queries):
    ids = queries.enqueue(["nobody_runs_this"] * 3, [None] * 3)
    queries.mark_job_as_cancelled([ids[1]])
    with CompletionWatcher(dsn) as watcher:
        started = time.monotonic()
        with pytest.raises(CompletionTimeout) as caught:
            watcher.wait_for_all(ids, timeout=0.5)
        assert 0.5 <= time.monotonic() - started < 3
        error = caught.value
        assert isinstance(error, TimeoutError) and isinstance(error, PgqException)
        assert error.pending == [ids[0], ids[2]]
        assert error.done == {ids[1]: "canceled"}
        assert f"{ids[0]}, {ids[2]}" in str(error) and "0.5s" in str(error)
        with pytest.raises(CompletionTimeout) as single:
            watcher.wait_for(ids[0], timeout=0.2)
        assert single.value.pending == [ids[0]]
        with pytest.raises(CompletionTimeout) as iterated:
            list(watcher.as_completed(ids, timeout=0.5))
        assert iterated.value.pending == [ids[0], ids[2]]
        # Timed-out waits leave nothing registered behind.
        wait_for(lambda: not watcher._waiters, timeout=2)


def test_long_id_lists_are_shortened_in_the_message():
    error = CompletionTimeout(list(range(100)), 1.0)
    assert "80 more" in str(error) and error.pending == list(range(100))


def test_cancelling_a_queued_job_is_seen_as_canceled(dsn, queries):
    [job_id] = queries.enqueue("nobody_runs_this", None)
    with CompletionWatcher(dsn, refresh_interval=30) as watcher:
        thread, out = in_thread(watcher.wait_for, job_id, timeout=10)
        time.sleep(0.3)  # the watcher's first look finds it queued
        queries.mark_job_as_cancelled([job_id])
        thread.join(10)
    assert out["value"] == "canceled"


def test_cancelling_a_running_job_is_seen_as_canceled(dsn, queries):
    started = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("cooperative")
        def cooperative(job: Job, ctx: Context) -> None:
            started.set()
            wait_for(lambda: ctx.cancellation.cancelled, timeout=10)

        with running(pgq, **FAST), CompletionWatcher(dsn) as watcher:
            [job_id] = queries.enqueue("cooperative", None)
            assert started.wait(10)
            queries.mark_job_as_cancelled([job_id])
            assert watcher.wait_for(job_id, timeout=10) == "canceled"


def test_a_held_job_is_seen_as_failed_through_the_poll(dsn, queries):
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("hold", on_failure="hold")
        def hold(job: Job) -> None:
            raise RuntimeError("parked")

        with running(pgq, **FAST):
            # A hold is an UPDATE, which never notifies: the poll finds it.
            with CompletionWatcher(dsn, refresh_interval=0.2) as watcher:
                [job_id] = queries.enqueue("hold", None)
                assert watcher.wait_for(job_id, timeout=10) == "failed"
            # PgQueuer's rule (failed is not final) is one flag away.
            with CompletionWatcher(dsn, refresh_interval=0.2, failed_is_terminal=False) as strict:
                with pytest.raises(CompletionTimeout):
                    strict.wait_for(job_id, timeout=0.6)


def test_wake_up_comes_from_listen_not_from_the_poll(dsn, queries):
    [job_id] = queries.enqueue("nobody_runs_this", None)
    with CompletionWatcher(dsn, refresh_interval=30) as watcher:
        thread, out = in_thread(watcher.wait_for, job_id, timeout=20)
        time.sleep(0.5)  # the first look (at registration) found it queued
        finished = time.monotonic()
        queries.log_jobs([(job_id, "successful", None)])  # a DELETE: the trigger notifies
        thread.join(20)
    assert out["value"] == "successful"
    assert out["at"] - finished < 1.0, "the poll is 30 s away; only LISTEN explains this"


def test_a_worker_completion_is_seen_within_a_second_with_a_30s_poll(dsn, queries):
    gate = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("gated")
        def gated(job: Job) -> None:
            gate.wait(10)

        with running(pgq, **FAST), CompletionWatcher(dsn, refresh_interval=30) as watcher:
            [job_id] = queries.enqueue("gated", None)
            thread, out = in_thread(watcher.wait_for, job_id, timeout=20)
            time.sleep(0.5)
            released = time.monotonic()
            gate.set()
            thread.join(20)
    assert out["value"] == "successful"
    assert out["at"] - released < 1.0


def test_an_already_finished_job_returns_at_once(dsn, queries):
    [job_id] = queries.enqueue("x", None)
    queries.log_jobs([(job_id, "successful", None)])
    with CompletionWatcher(dsn, refresh_interval=30) as watcher:
        started = time.monotonic()
        assert watcher.wait_for(job_id, timeout=5) == "successful"
        assert time.monotonic() - started < 1.0


def test_deleted_jobs_are_final(dsn, queries):
    [job_id] = queries.enqueue("doomed", None)
    with CompletionWatcher(dsn, refresh_interval=30) as watcher:
        thread, out = in_thread(watcher.wait_for, job_id, timeout=10)
        time.sleep(0.3)
        queries.clear_queue("doomed")
        thread.join(10)
    assert out["value"] == "deleted"


def test_many_threads_wait_on_one_watcher(dsn, queries):
    ids = queries.enqueue(["nobody_runs_this"] * 20, [None] * 20)
    with CompletionWatcher(dsn, refresh_interval=30) as watcher:
        waiters = [in_thread(watcher.wait_for, ids[i % 20], timeout=10) for i in range(40)]
        time.sleep(0.3)
        queries.log_jobs([(i, "successful", None) for i in ids[:10]])
        queries.log_jobs([(i, "exception", None) for i in ids[10:]])
        for thread, _ in waiters:
            thread.join(10)
    for i, (_, out) in enumerate(waiters):
        assert out["value"] == ("successful" if i % 20 < 10 else "exception")
    assert not watcher._waiters


def test_watch_returns_a_future(dsn, queries):
    [job_id, other] = queries.enqueue(["x", "x"], [None, None])
    with CompletionWatcher(dsn, refresh_interval=30) as watcher:
        future = watcher.watch(job_id)
        abandoned = watcher.watch(other)
        abandoned.cancel()
        queries.log_jobs([(job_id, "successful", None)])
        assert future.result(timeout=5) == "successful"
        wait_for(lambda: not watcher._waiters, timeout=2)


def test_close_fails_pending_waits_and_refuses_new_ones(dsn, queries):
    [job_id] = queries.enqueue("nobody_runs_this", None)
    watcher = CompletionWatcher(dsn, refresh_interval=30)
    thread, out = in_thread(watcher.wait_for, job_id, timeout=None)
    time.sleep(0.3)
    watcher.close()
    thread.join(5)
    assert isinstance(out["error"], PgqException) and "closed" in str(out["error"])
    with pytest.raises(PgqException, match="closed"):
        watcher.wait_for(job_id, timeout=1)
    watcher.close()  # idempotent
    names = {t.name for t in threading.enumerate()}
    assert "pgqueue_sync-completion" not in names
    assert "pgqueue_sync-completion-listener" not in names


@pytest.mark.parametrize(
    "kind", ["conninfo", "connection", "driver", "pool", "queries", "pgqueuer_style"]
)
def test_every_kind_of_connection_works(dsn, queries, kind):
    [job_id] = queries.enqueue("x", None)
    with pool_for(dsn) as pool, psycopg.connect(dsn, autocommit=True) as conn:
        source = {
            "conninfo": dsn,
            "connection": conn,
            "driver": SyncPsycopgDriver(conn),
            "pool": SyncPsycopgPoolDriver(pool),
            "queries": Queries(SyncPsycopgDriver(conn)),
            "pgqueuer_style": SyncPsycopgDriver(conn),
        }[kind]
        extra = {"queries": Queries(source)} if kind == "pgqueuer_style" else {}
        with CompletionWatcher(source, refresh_interval=30, **extra) as watcher:
            thread, out = in_thread(watcher.wait_for, job_id, timeout=10)
            time.sleep(0.3)
            queries.log_jobs([(job_id, "successful", None)])
            thread.join(10)
        assert not conn.closed  # borrowed connections stay open
    assert out["value"] == "successful"
    assert out["at"] is not None


def test_a_bad_argument_is_rejected_clearly():
    with pytest.raises(PgqException, match="conninfo string"):
        CompletionWatcher(42)  # type: ignore[arg-type]
    with pytest.raises(PgqException, match="refresh_interval"):
        CompletionWatcher("host=unused", refresh_interval=0)


def test_the_listener_reconnects_and_looks_again(dsn, queries, conn):
    [job_id] = queries.enqueue("x", None)
    with CompletionWatcher(dsn, refresh_interval=30) as watcher:
        thread, out = in_thread(watcher.wait_for, job_id, timeout=20)
        time.sleep(0.3)
        # Finish the job while the listener's backend is being killed: the
        # notification is lost, and the reconnect's look finds the job done.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%%' "
            "AND pid <> pg_backend_pid() AND datname = current_database()"
        )
        queries.log_jobs([(job_id, "successful", None)])
        thread.join(20)
    assert out["value"] == "successful"


def test_in_memory_adapter():
    from pgqueue_sync import PgQueuer

    pgq = PgQueuer.in_memory()
    pgq.entrypoint("ok")(lambda job: None)
    [job_id] = pgq.queries.enqueue("ok", None)
    with CompletionWatcher(pgq.queries, refresh_interval=30) as watcher:
        thread, out = in_thread(watcher.wait_for, job_id, timeout=10)
        pgq.run(mode="drain", **FAST)
        thread.join(10)
    assert out["value"] == "successful"


def test_waiting_from_a_script_for_a_worker_in_another_process(dsn, queries, tmp_path):
    (tmp_path / "remote_app.py").write_text(textwrap.dedent("""
        import contextlib
        from psycopg_pool import ConnectionPool
        from pgqueue_sync import DBSettings, PgQueuer

        @contextlib.contextmanager
        def factory(args):
            pool = ConnectionPool(args[0], min_size=1, max_size=4,
                                  kwargs={"autocommit": True}, open=True)
            try:
                pgq = PgQueuer.from_psycopg_pool(pool, settings=DBSettings())
                pgq.entrypoint("double")(lambda job: None)
                yield pgq
            finally:
                pool.close()
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGQUEUE", "PGQUEUER_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(tmp_path)])
    ids = queries.enqueue(["double"] * 5, [None] * 5)
    with CompletionWatcher(dsn) as watcher:
        worker = subprocess.Popen(
            [sys.executable, "-m", "pgqueue_sync", "run", "remote_app:factory",
             "--dequeue-timeout", "1", "--", dsn],
            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            statuses = watcher.wait_for_all(ids, timeout=30)
        finally:
            worker.terminate()
            _, err = worker.communicate(timeout=30)
    assert statuses == dict.fromkeys(ids, "successful"), err
