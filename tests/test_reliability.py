"""Faults on the worker's path, each against a real server: the promise under test is
"a job is never lost, and runs twice only where a worker died or lost its connection".

Every fault here was seen in a campaign against an earlier main (docs/reliability.md
lists the fault model): handlers that raise ``BaseException``, outcomes the
database refuses, connections cut under a retry, replies lost after a commit,
hostile payloads on the channel, a killed single connection, a worker that starts
during an outage, a permanent error in drain mode, a silent server, and a stale
job whose rescue waited for the idle poll. Faults come from :mod:`tests.faults`
(a TCP proxy that cuts connections or loses replies) or from the server itself
(``pg_terminate_backend``). Threads are waited on with deadlines, never sleeps.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from pgqueue_sync import (
    ConfigurationError,
    ConnectionFailed,
    DatabaseError,
    DBSettings,
    Job,
    Queries,
    RetryRequested,
    SyncPsycopgDriver,
)
from pgqueue_sync.app import PgQueuer
from pgqueue_sync.drivers import psycopg as psycopg_driver
from pgqueue_sync.worker.cancellation import Context

from .faults import PgProxy, terminate_backends
from .worker_helpers import login_role, make_pgq, pool_for, running, wait_for

#: Idle workers here wait this long for a poll: anything faster proves a wake-up.
SLOW_POLL = {"dequeue_timeout": 30, "log_aggregation_interval": 0}
DRAIN = {"mode": "drain", "dequeue_timeout": 0.5, "log_aggregation_interval": 0}
#: A run that should end by itself gets this long before the test calls it a hang.
HANG = 30.0


def log_of(conn: psycopg.Connection[Any], job_id: int) -> list[str]:
    rows = conn.execute(
        "SELECT status::text FROM pgqueuer_log WHERE job_id = %s ORDER BY id", [job_id]
    ).fetchall()
    return [r[0] for r in rows]


def tracebacks(conn: psycopg.Connection[Any], job_id: int, status: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT traceback FROM pgqueuer_log WHERE job_id = %s AND status = %s ORDER BY id",
        [job_id, status],
    ).fetchall()
    return [r[0] for r in rows]


def queue_row(conn: psycopg.Connection[Any], job_id: int) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT status::text, attempts, queue_manager_id FROM pgqueuer WHERE id = %s", [job_id]
    ).fetchone()


def drain_in_thread(pgq: PgQueuer, **options: Any) -> None:
    """Run a drain-mode worker; fail (instead of hanging the suite) if it never returns."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            pgq.run(**{**DRAIN, **options})
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    thread = threading.Thread(target=target, name="test-drain", daemon=True)
    thread.start()
    thread.join(HANG)
    if thread.is_alive():
        pgq.shutdown.set()
        thread.join(10)
        raise AssertionError(f"drain-mode worker did not return within {HANG}s")
    if errors:
        raise errors[0]


def worker_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("pgqueue_sync-"))


@pytest.fixture
def proxied_pool(dsn: str, pg_proxy: PgProxy) -> Iterator[Any]:
    """A pool whose connections (and the worker's LISTEN connection) go through the proxy."""
    with pool_for(pg_proxy.dsn(dsn)) as pool:
        yield pool


# -- 1. whatever a handler raises, its job gets one outcome ----------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def _exit() -> None:
    sys.exit(3)


def _interrupt() -> None:
    raise KeyboardInterrupt


def _unprintable() -> None:
    raise Unprintable()


def _nul() -> None:
    raise ValueError("bad byte \x00 here and a lone \ud800 surrogate")


RAISERS: dict[str, tuple[Callable[[], None], str]] = {
    "sys.exit": (_exit, "SystemExit"),
    "KeyboardInterrupt": (_interrupt, "KeyboardInterrupt"),
    "unprintable": (_unprintable, "Unprintable"),
    "NUL in message": (_nul, "ValueError"),
}


@pytest.mark.parametrize("kind", list(RAISERS))
@pytest.mark.parametrize("flavour", ["def", "async def"])
def test_a_handler_raising_anything_fails_only_its_own_job(
    dsn: str, queries: Queries, conn: psycopg.Connection[Any], kind: str, flavour: str
) -> None:
    """``sys.exit()``, ``KeyboardInterrupt``, an exception whose ``__str__`` fails and
    one whose message jsonb cannot hold: each is its job's ``exception`` outcome. The
    runner thread (or the event loop) survives, the other jobs run, and drain mode
    returns."""
    raiser, expected_type = RAISERS[kind]
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        if flavour == "def":
            pgq.entrypoint("bad")(lambda job: raiser())
            pgq.entrypoint("good")(lambda job: None)
        else:

            @pgq.entrypoint("bad")
            async def bad(job: Job) -> None:
                await asyncio.sleep(0)
                raiser()

            @pgq.entrypoint("good")
            async def good(job: Job) -> None:
                await asyncio.sleep(0)

        bad_ids = queries.enqueue(["bad"] * 3, [None] * 3)
        good_ids = queries.enqueue(["good"] * 5, [None] * 5)
        drain_in_thread(pgq, concurrency=2, batch_size=2)
    for job_id in bad_ids:
        assert log_of(conn, job_id) == ["queued", "picked", "exception"]
        [record] = tracebacks(conn, job_id, "exception")
        assert record["exception_type"] == expected_type
    for job_id in good_ids:
        assert log_of(conn, job_id) == ["queued", "picked", "successful"]
    assert queries.queue_size() == []


def test_a_result_the_database_refuses_is_recorded_without_it(
    dsn: str, queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    """A stored result jsonb rejects (a NUL inside a string) would fail the whole
    outcome batch: the batch is split, the bad job's outcome is written without its
    result, and every other outcome (and every later claim) goes through."""
    from pgqueue_sync.schema import Schema

    Schema(SyncPsycopgDriver(conn), DBSettings()).install_results()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("value", store_result=True)
        def value(job: Job) -> str:
            return "poison \x00" if job.payload == b"poison" else "fine"

        ids = queries.enqueue(["value"] * 6, [b"ok", b"ok", b"poison", b"ok", b"ok", b"ok"])
        drain_in_thread(pgq, batch_size=6, concurrency=1)
    assert {i: log_of(conn, i)[-1] for i in ids} == dict.fromkeys(ids, "successful")
    stored = dict(conn.execute("SELECT job_id, result FROM pgqueue_sync_results").fetchall())
    assert all(stored.get(i) == "fine" for i in ids if i != ids[2])
    assert stored.get(ids[2]) is None


# -- 2. retries are never lost, never early, never doubled -----------------------------------


def test_a_retry_whose_connection_was_cut_is_written_later_not_dropped(
    dsn: str, pg_proxy: PgProxy, proxied_pool: Any, queries: Queries,
    conn: psycopg.Connection[Any],
) -> None:
    """The handler cuts every connection, then asks for a retry: the retry write meets
    dead connections, is kept and written once a new connection works. The job runs
    again (attempt 1) and ends successful; nothing is recorded as a failure."""
    attempts: list[int] = []
    pgq = make_pgq(proxied_pool)

    @pgq.entrypoint("flaky")
    def flaky(job: Job) -> None:
        attempts.append(job.attempts)
        if job.attempts == 0:
            # Every connection dies and none can be opened for a second: the retry
            # write certainly fails at first.
            pg_proxy.refuse_and_cut(1.0)
            raise RetryRequested(delay=0, reason="connection trouble")

    [job_id] = queries.enqueue("flaky", None)
    with running(pgq, **SLOW_POLL, heartbeat_timeout=5):
        wait_for(lambda: log_of(conn, job_id)[-1:] == ["successful"], timeout=20)
    assert attempts == [0, 1]
    assert log_of(conn, job_id) == ["queued", "picked", "queued", "picked", "successful"]


@pytest.mark.parametrize("outcome", ["hold", "retry", "success"])
def test_an_outcome_whose_reply_was_lost_is_recorded_once(
    dsn: str, pg_proxy: PgProxy, proxied_pool: Any, queries: Queries,
    conn: psycopg.Connection[Any], outcome: str,
) -> None:
    """The statement recording the outcome commits, then its reply is lost and the
    connection dies. The worker sends it again on a new connection; the write is
    guarded (only rows still picked by this worker), so the second send changes
    nothing: one ``failed`` row for a hold, one retry (attempt counted once), one
    ``successful`` row."""
    attempts: list[int] = []
    released = threading.Event()
    pgq = make_pgq(proxied_pool)

    @pgq.entrypoint("job", on_failure="hold")
    def handler(job: Job) -> None:
        attempts.append(job.attempts)
        assert released.wait(10)
        if outcome == "hold":
            raise ValueError("hold me")
        if outcome == "retry" and job.attempts == 0:
            raise RetryRequested(delay=0)

    [job_id] = queries.enqueue("job", None)
    final = {"hold": "failed", "retry": "successful", "success": "successful"}[outcome]
    with running(pgq, **SLOW_POLL, heartbeat_timeout=5):
        wait_for(lambda: attempts, timeout=10)
        # Every outcome statement starts with this step; claims without outcomes don't.
        lost = pg_proxy.swallow_next_reply(b"done AS MATERIALIZED")
        released.set()
        assert lost.wait(10), "the outcome statement never ran"
        wait_for(lambda: log_of(conn, job_id)[-1:] == [final], timeout=20)
        # Give a duplicate write every chance to land before looking.
        wait_for(lambda: pgq.qm._recorder is not None and pgq.qm._recorder.buffer.pending() == 0)
    expected = {
        "hold": ["queued", "picked", "failed"],
        "retry": ["queued", "picked", "queued", "picked", "successful"],
        "success": ["queued", "picked", "successful"],
    }[outcome]
    assert log_of(conn, job_id) == expected
    assert attempts == ([0, 1] if outcome == "retry" else [0])
    if outcome == "hold":
        assert queue_row(conn, job_id) == ("failed", 0, None)
    else:
        assert queue_row(conn, job_id) is None


def test_retrying_jobs_keep_their_heartbeat_until_the_retry_is_written(
    dsn: str, queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    """Two workers, a backlog of jobs that each retry once, a short stale timeout:
    no attempt runs twice (a retry waiting in memory keeps its job's heartbeat),
    and every job ends successful after exactly two attempts."""
    runs: dict[tuple[int, int], int] = {}
    lock = threading.Lock()
    ids = queries.enqueue(["again"] * 3000, [None] * 3000)
    with pool_for(dsn) as pool_a, pool_for(dsn) as pool_b:
        workers = [make_pgq(pool_a), make_pgq(pool_b)]
        for pgq in workers:

            @pgq.entrypoint("again")
            def again(job: Job) -> None:
                with lock:
                    runs[(job.id, job.attempts)] = runs.get((job.id, job.attempts), 0) + 1
                if job.attempts == 0:
                    raise RetryRequested(delay=0)

        with running(workers[0], **SLOW_POLL, heartbeat_timeout=1, concurrency=8), \
                running(workers[1], **SLOW_POLL, heartbeat_timeout=1, concurrency=8):
            wait_for(lambda: queries.queue_size() == [], timeout=90)
    doubled = {key: n for key, n in runs.items() if n > 1}
    assert doubled == {}
    assert set(runs) == {(i, a) for i in ids for a in (0, 1)}
    finals = conn.execute(
        "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
    ).fetchone()
    assert finals == (len(ids),)


# -- 3. the listener never dies --------------------------------------------------------------

HOSTILE_PAYLOADS = [
    "not json at all",
    '{"type": "cancellation_event", "channel": "ch_pgqueuer", '
    '"sent_at": "2026-01-01T00:00:00Z", "ids": [1e999]}',
    '{"type": "cancellation_event", "channel": "ch_pgqueuer", '
    '"sent_at": "2026-01-01T00:00:00Z", "ids": ["x"]}',
    "[" * 3_000 + "]" * 3_000,  # NOTIFY payloads stop at 8000 bytes
    '{"type": "health_check_event", "channel": "ch_pgqueuer", "sent_at": "yesterday", "id": 1}',
    '{"type": "requests_per_second_event", "channel": "ch_pgqueuer"}',
    '{"type": "table_changed_event"}',
]


def test_hostile_payloads_on_the_channel_do_not_stop_the_listener(
    dsn: str, queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    """Garbage, an id of 1e999 (OverflowError), deep nesting (RecursionError) and
    events of the wrong shape are dropped; a real cancellation sent afterwards still
    reaches the running job."""
    started, cancelled = threading.Event(), threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("long")
        def long(job: Job, context: Context) -> None:
            started.set()
            if context.cancellation.wait(20):
                cancelled.set()

        [job_id] = queries.enqueue("long", None)
        with running(pgq, **SLOW_POLL):
            assert started.wait(10)
            for payload in HOSTILE_PAYLOADS:
                conn.execute("SELECT pg_notify('ch_pgqueuer', %s)", [payload])
            assert pgq.qm.listener_healthy(5), "the listener died of a hostile payload"
            queries.mark_job_as_cancelled([job_id])
            assert cancelled.wait(10), "the cancellation did not reach the job"
    assert log_of(conn, job_id) == ["queued", "picked", "canceled"]


def test_the_listener_survives_failed_reconnects_and_hears_again(
    dsn: str, pg_proxy: PgProxy, proxied_pool: Any, queries: Queries,
    conn: psycopg.Connection[Any],
) -> None:
    """Its connection is cut and reconnecting fails for two seconds (the driver raises
    ConnectionFailed); it keeps trying, and once back, an idle worker is woken by a
    NOTIFY again instead of waiting for its 30 s poll."""
    seen = threading.Event()
    pgq = make_pgq(proxied_pool)
    pgq.entrypoint("ping")(lambda job: seen.set())
    with running(pgq, **SLOW_POLL):
        wait_for(lambda: pgq.qm.listener_healthy(1.0))
        pg_proxy.refuse_and_cut(2.0)
        wait_for(lambda: pgq.qm.listener_healthy(1.0), timeout=20)
        queries.enqueue("ping", None)
        assert seen.wait(10), "the reconnected listener did not wake the idle worker"


def test_a_listener_that_fails_its_health_probe_is_reconnected(
    dsn: str, queries: Queries, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A listener connection that is alive but deaf misses its own probe; the worker
    reconnects it and hears again. (Deafness is simulated by dropping what the
    listener receives until it is asked to reconnect: touching its connection from
    another thread would race with its select() loop.)"""
    from pgqueue_sync import options

    monkeypatch.setattr(options, "HEALTH_CHECK_INTERVAL", 0.5)
    monkeypatch.setattr(options, "HEALTH_CHECK_TIMEOUT", timedelta(seconds=0.5))
    seen = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("ping")(lambda job: seen.set())
        with running(pgq, **SLOW_POLL):
            wait_for(lambda: pgq.qm.listener_healthy(1.0))
            listener = pgq.qm._listening.listener
            assert listener is not None
            hearing = listener._dispatch
            reconnect = listener.reconnect

            def reconnect_and_hear() -> None:
                monkeypatch.setattr(listener, "_dispatch", hearing)
                reconnect()

            monkeypatch.setattr(listener, "_dispatch", lambda payload: None)
            monkeypatch.setattr(listener, "reconnect", reconnect_and_hear)
            wait_for(lambda: "reconnecting it" in caplog.text, timeout=10)
            wait_for(lambda: pgq.qm.listener_healthy(1.0), timeout=10)
            queries.enqueue("ping", None)
            assert seen.wait(10), "the reconnected listener did not wake the idle worker"


# -- 4. workers come back ------------------------------------------------------------------


def test_a_worker_on_one_connection_recovers_after_it_is_killed(
    dsn: str, queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    """A worker on one ``SyncPsycopgDriver`` connection (for scripts and tests): its backend
    (and the listener's) is terminated; the driver reconnects and the worker runs
    the next job."""
    done = threading.Event()
    dbname = conn.info.dbname
    own = psycopg.connect(dsn, autocommit=True, application_name="pgqs-single")
    try:
        pgq = PgQueuer(SyncPsycopgDriver(own), settings=DBSettings())
        pgq.entrypoint("next")(lambda job: done.set())
        with running(pgq, dequeue_timeout=1, log_aggregation_interval=0):
            wait_for(lambda: pgq.qm.idle_waits > 0)
            # The worker's connection, and its listener's (named after the worker).
            [(oid,)] = conn.execute("SELECT 'pgqueuer'::regclass::oid").fetchall()
            label = f"pgq-sync worker {pgq.qm.queue_manager_id} {oid}"
            killed = terminate_backends(dsn, dbname, application_name="pgqs-single")
            assert killed + terminate_backends(dsn, dbname, application_name=label) >= 2
            [job_id] = queries.enqueue("next", None)
            assert done.wait(20), "the worker did not come back after its connection died"
            wait_for(lambda: log_of(conn, job_id)[-1:] == ["successful"], timeout=10)
    finally:
        own.close()


def test_a_worker_started_during_an_outage_waits_for_the_database(
    dsn: str, pg_proxy: PgProxy, proxied_pool: Any, queries: Queries,
    conn: psycopg.Connection[Any],
) -> None:
    """With the database unreachable at start, run() retries (bounded by
    ``wait_for_database``) and starts working once it is back."""
    pg_proxy.refuse_and_cut(2.0)
    done = threading.Event()
    pgq = make_pgq(proxied_pool)
    pgq.entrypoint("first")(lambda job: done.set())
    [job_id] = queries.enqueue("first", None)
    with running(pgq, **SLOW_POLL, wait_for_database=30):
        assert done.wait(30), "the worker gave up instead of waiting for the database"
    assert log_of(conn, job_id)[-1] == "successful"


def test_a_worker_gives_up_after_wait_for_database(dsn: str, pg_proxy: PgProxy) -> None:
    pg_proxy.refuse()
    conn_dsn = pg_proxy.dsn(dsn)
    with pool_for(conn_dsn) as pool:
        pool.timeout = 1.0
        pgq = make_pgq(pool)
        pgq.entrypoint("never")(lambda job: None)
        started = time.monotonic()
        with pytest.raises(ConnectionFailed):
            pgq.run(**SLOW_POLL, wait_for_database=2)
        assert time.monotonic() - started < 15


# -- 5. prompt wake-ups -----------------------------------------------------------------------


def test_a_dead_workers_job_is_rescued_at_its_stale_time_not_at_the_next_poll(
    dsn: str, queries: Queries, conn: psycopg.Connection[Any], connect: Any
) -> None:
    """An idle worker (30 s poll) knows when the next picked job goes stale and claims
    it then: within 1.25 x heartbeat_timeout of the dead worker's last heartbeat
    (plus scheduling slack), far before its poll."""
    t = 2.0
    rescued: list[float] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("orphan")(lambda job: rescued.append(time.monotonic()))
        with running(pgq, **SLOW_POLL, heartbeat_timeout=t):
            wait_for(lambda: pgq.qm.idle_waits > 0)
            # A "dead worker" enqueues and claims the job in one transaction (so our
            # worker never sees it queued), then never beats again.
            tx = connect(autocommit=False)
            dead = Queries(SyncPsycopgDriver(tx), settings=DBSettings())
            with tx.transaction():
                [job_id] = dead.enqueue("orphan", None)
                claimed = dead.dequeue(1, {"orphan": 0}, uuid.uuid4(), None,
                                       timedelta(seconds=t))
            claimed_at = time.monotonic()
            assert [j.id for j in claimed] == [job_id]
            wait_for(lambda: rescued, timeout=15)
    assert rescued[0] - claimed_at < 1.25 * t + 2.0
    assert log_of(conn, job_id)[-1] == "successful"


def test_an_operator_requeue_wakes_an_idle_worker(
    dsn: str, queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    """Requeueing a held job sends a table_changed_event: an idle worker runs it at
    once instead of at its next 30 s poll."""
    ran = threading.Event()
    [job_id] = queries.enqueue("held", None)
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        [job] = queries.dequeue(1, {"held": 0}, uuid.uuid4(), None, timedelta(seconds=30))
        queries.log_jobs([(job, "failed", None)])
        pgq.entrypoint("held")(lambda job: ran.set())
        with running(pgq, **SLOW_POLL):
            wait_for(lambda: pgq.qm.idle_waits > 0 and pgq.qm.listener_healthy(1.0))
            assert queries.requeue_jobs([job_id]) == [job_id]
            assert ran.wait(5), "the requeued job waited for the poll"


# -- 6. errors sorted at the driver boundary ---------------------------------------------------


def test_a_worker_refuses_a_connection_in_a_transaction(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:  # not autocommit
        pgq = PgQueuer(SyncPsycopgDriver(conn), settings=DBSettings())
        pgq.entrypoint("x")(lambda job: None)
        with pytest.raises(ConfigurationError, match="autocommit"):
            pgq.run(**DRAIN)


@pytest.fixture
def role_without_grants(server_dsn: str) -> Iterator[str]:
    with login_role(server_dsn, "pgqs_nogrant", databases=[server_dsn]) as name:
        yield name


def test_a_permanent_error_stops_a_drain_mode_worker(
    dsn: str, role_without_grants: str, queries: Queries
) -> None:
    """A role without grants: "permission denied" is not worth retrying, so drain mode
    ends with the error instead of retrying forever."""
    queries.enqueue("x", None)
    with pool_for(psycopg.conninfo.make_conninfo(dsn, user=role_without_grants)) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("x")(lambda job: None)
        with pytest.raises(DatabaseError, match="permission denied") as raised:
            drain_in_thread(pgq)
    assert not raised.value.transient


def test_connect_gives_up_on_a_server_that_never_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host that accepts the TCP connection and never answers: without a timeout in
    the DSN or the environment, connect() gives up after the default timeout."""
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    monkeypatch.setattr(psycopg_driver, "DEFAULT_CONNECT_TIMEOUT", 2)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionFailed, match=f"127.0.0.1:{port}"):
            psycopg_driver.connect(f"host=127.0.0.1 port={port} user=x dbname=x sslmode=disable")
        assert time.monotonic() - started < 10
    finally:
        silent.close()


def test_the_default_connect_timeout_yields_to_the_dsn_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    with_timeout = psycopg_driver.with_connect_timeout
    assert "connect_timeout=10" in with_timeout("host=h dbname=d")
    assert "connect_timeout=3" in with_timeout("host=h connect_timeout=3")
    assert "connect_timeout" not in with_timeout("host=h connect_timeout=3").replace(
        "connect_timeout=3", ""
    )
    kwargs = psycopg_driver.with_connect_timeout_kwargs
    assert kwargs({"host": "h"}) == {"host": "h", "connect_timeout": 10}
    assert kwargs({"connect_timeout": 3}) == {"connect_timeout": 3}
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "4")
    assert "connect_timeout" not in with_timeout("host=h dbname=d")
    assert kwargs({"host": "h"}) == {"host": "h"}


# -- 7. run() failing anywhere stops every thread ---------------------------------------------


def test_a_failure_outside_any_handler_stops_every_thread_and_hands_jobs_back(
    dsn: str, queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    """A bug in the dispatcher (here: the idle probe raising) ends run() with that
    error; claim lanes, flusher, heartbeats and listener stop, and the job that was
    running is handed back to the queue instead of staying picked."""
    started, release = threading.Event(), threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("stuck")
        def stuck(job: Job) -> None:
            started.set()
            release.wait(30)

        [job_id] = queries.enqueue("stuck", None)
        original = pgq.qm.queries.poll_state

        def broken(*args: Any, **kwargs: Any) -> Any:
            if started.is_set():
                raise RuntimeError("a bug in the dispatcher")
            return original(*args, **kwargs)

        pgq.qm.queries.poll_state = broken  # type: ignore[method-assign]
        pgq.entrypoint("nudge")(lambda job: None)

        def nudge() -> None:  # a NOTIFY makes the idle dispatcher poll (and fail)
            if started.wait(10):
                Queries(SyncPsycopgDriver(conn), settings=DBSettings()).enqueue("nudge", None)

        nudger = threading.Thread(target=nudge, name="test-nudge", daemon=True)
        nudger.start()
        try:
            with pytest.raises(RuntimeError, match="a bug in the dispatcher"):
                pgq.run(**SLOW_POLL)
            nudger.join(10)
            # Only the stuck handler's thread may remain (a daemon; nothing waits for it).
            wait_for(lambda: len(worker_threads()) <= 1
                     and all(n.startswith("pgqueue_sync-runner") for n in worker_threads()),
                     timeout=15)
            assert queue_row(conn, job_id) == ("queued", 0, None), log_of(conn, job_id)
        finally:
            release.set()
    wait_for(lambda: worker_threads() == [], timeout=15)


# -- 8. server restarts ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["restart", "crash"])
@pytest.mark.parametrize("driver", ["pool", "one connection"])
def test_a_worker_resumes_within_seconds_of_a_server_restart(
    private_cluster: Any, private_dsn: str, driver: str, how: str
) -> None:
    """The server restarts (fast shutdown) or crashes (SIGKILL, then crash recovery)
    under an idle worker; once it is back, a new job runs within seconds, with a
    pool and with a single connection alike."""
    done = threading.Event()
    stack: list[Callable[[], None]] = []
    try:
        if driver == "pool":
            pool_cm = pool_for(private_dsn)
            pool = pool_cm.__enter__()
            stack.append(lambda: pool_cm.__exit__(None, None, None))
            pgq = make_pgq(pool)
        else:
            own = psycopg.connect(private_dsn, autocommit=True)
            stack.append(own.close)
            pgq = PgQueuer(SyncPsycopgDriver(own), settings=DBSettings())
        pgq.entrypoint("after")(lambda job: done.set())
        with running(pgq, **SLOW_POLL):
            wait_for(lambda: pgq.qm.idle_waits > 0 and pgq.qm.listener_healthy(1.0))
            if how == "restart":
                private_cluster.restart(mode="fast")
            else:
                private_cluster.kill()
                private_cluster.start()
            back = time.monotonic()
            with psycopg.connect(private_dsn, autocommit=True) as conn:
                [job_id] = Queries(SyncPsycopgDriver(conn), settings=DBSettings()).enqueue(
                    "after", None
                )
                assert done.wait(30), "the worker did not resume after the restart"
                resumed = time.monotonic() - back
                wait_for(lambda: log_of(conn, job_id)[-1:] == ["successful"], timeout=15)
        assert resumed < 15, f"took {resumed:.1f}s after the server was back"
    finally:
        for close in reversed(stack):
            close()
