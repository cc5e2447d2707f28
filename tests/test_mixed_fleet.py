"""A mixed fleet: the real PgQueuer 1.6.0 async worker and our threaded worker on one database.

Both sides share the database contract (tables, claim, slots, log, NOTIFY
envelopes), so a job enqueued by either is run by either, exactly once, and a
fleet-wide ``concurrency_limit`` holds across both. PgQueuer runs in a thread
with its own event loop over asyncpg (see ``pgqueuer_helpers``); our worker
runs in a thread too (``worker_helpers.running``) or in drain mode. Every
handler runs in this process, so ``time.monotonic()`` is one clock for both.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from pgqueuer import Job as TheirJob
from pgqueuer import PgQueuer as AsyncPgQueuer
from pgqueuer import Queries as AsyncQueries
from pgqueuer.models import Context as TheirContext
from pgqueuer.ports.repository import EntrypointExecutionParameter as TheirParameter
from pgqueuer.types import JobId as TheirJobId
from pgqueuer.types import QueueEntrypoint, QueueExecutionMode, QueueManagerId

from pgqueue_sync import Job, Queries
from pgqueue_sync.queries import EntrypointExecutionParameter
from pgqueue_sync.worker.cancellation import Context

from .pgqueuer_helpers import async_worker, run_async_queries
from .worker_helpers import make_pgq, pool_for, running, wait_for

pytestmark = pytest.mark.interop

#: Our worker: short idle waits, no background log aggregation.
OURS_FAST: dict[str, Any] = {"dequeue_timeout": 0.5, "log_aggregation_interval": 0}
#: PgQueuer's worker: the same, in its types (``timedelta(0)`` disables aggregation).
THEIRS_FAST: dict[str, Any] = {
    "dequeue_timeout": timedelta(seconds=0.5),
    "log_aggregation_interval": timedelta(0),
}
TERMINAL = ("successful", "exception", "canceled", "deleted")


# -- helpers -------------------------------------------------------------------------------


def log_sequences(conn: psycopg.Connection[Any]) -> dict[int, list[str]]:
    """Every job's logged statuses, in log order."""
    rows = conn.execute("SELECT job_id, status::text FROM pgqueuer_log ORDER BY id").fetchall()
    sequences: dict[int, list[str]] = collections.defaultdict(list)
    for job_id, status in rows:
        sequences[job_id].append(status)
    return dict(sequences)


def scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    """The first column of the first row of ``query``."""
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def queue_rows(conn: psycopg.Connection[Any]) -> int:
    """Rows left in the queue table (queued, picked or held)."""
    return int(scalar(conn, "SELECT count(*) FROM pgqueuer"))


def all_terminal(conn: psycopg.Connection[Any], ids: Sequence[int]) -> bool:
    """Whether every job in ``ids`` has a terminal log row."""
    done = scalar(
        conn,
        "SELECT count(DISTINCT job_id) FROM pgqueuer_log "
        "WHERE job_id = ANY(%s) AND status::text = ANY(%s)",
        [list(ids), list(TERMINAL)],
    )
    return int(done) == len(ids)


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans running at one instant (an end before a tied start)."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running_now = peak = 0
    for _, delta in edges:
        running_now += delta
        peak = max(peak, running_now)
    return peak


def their_warmup(done: threading.Event) -> Callable[[TheirJob], Awaitable[None]]:
    """An async PgQueuer handler that sets ``done``: proof its worker loop is dispatching."""

    async def warmup(job: TheirJob) -> None:
        done.set()

    return warmup


def our_warmup(done: threading.Event) -> Callable[[Job], None]:
    """Our handler that sets ``done``: proof our worker loop is dispatching."""

    def warmup(job: Job) -> None:
        done.set()

    return warmup


# -- 1. PgQueuer enqueues, we process ------------------------------------------------------


def test_jobs_enqueued_by_pgqueuer_run_intact_on_our_worker(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries
) -> None:
    """PgQueuer's ``Queries.enqueue`` (asyncpg) -> our worker.

    Proves: payload bytes (binary, empty and NULL), priority, headers (and JSON
    ``null`` for "no headers" read back as ``None``) reach our handler intact;
    our claim orders PgQueuer's rows ``priority DESC, id ASC``; ``execute_after``
    written by PgQueuer defers the job on our side; every job is logged
    ``queued, picked, successful`` and the queue ends empty.
    """
    entrypoints = ["fleet"] * 5
    payloads: list[bytes | None] = [b"\x00\xffbinary\x00", b"", None, b"plain", b"same-prio"]
    priorities = [1, 7, 3, 5, 5]
    headers: list[dict[str, str] | None] = [{"trace": "t-1"}, None, {"a": "b"}, None, {"x": "y"}]

    async def enqueue(theirs: AsyncQueries) -> tuple[list[TheirJobId], list[TheirJobId]]:
        now_ids = await theirs.enqueue(entrypoints, payloads, priorities, headers=headers)
        later_ids = await theirs.enqueue(
            "fleet", b"deferred", 9, execute_after=timedelta(seconds=0.5)
        )
        return now_ids, later_ids

    t0 = time.monotonic()
    now_ids, [later_id] = run_async_queries(dsn, enqueue)
    # PgQueuer stores "no headers" as JSON null, not SQL NULL (the contract we must read).
    kinds = dict(conn.execute("SELECT id, jsonb_typeof(headers) FROM pgqueuer").fetchall())
    assert kinds == {
        **{job_id: "null" if headers[i] is None else "object" for i, job_id in enumerate(now_ids)},
        later_id: "null",
    }
    seen: list[tuple[int, int, bytes | None, dict[str, Any] | None, float]] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("fleet")
        def fleet(job: Job) -> None:
            seen.append((job.id, job.priority, job.payload, job.headers, time.monotonic()))

        pgq.run(mode="drain", concurrency=1, batch_size=1, **OURS_FAST)

    by_id = {job_id: (prio, payload, hdrs) for job_id, prio, payload, hdrs, _ in seen}
    assert len(seen) == len(by_id) == 6
    expected = {
        job_id: (priorities[i], payloads[i], headers[i]) for i, job_id in enumerate(now_ids)
    }
    expected[later_id] = (9, b"deferred", None)
    assert by_id == expected
    # Immediate jobs in claim order: priority DESC, then id ASC (the two priority-5 jobs).
    immediate = [job_id for job_id, *_ in seen if job_id != later_id]
    assert immediate == [now_ids[i] for i in (1, 3, 4, 2, 0)]
    # The deferred job (priority 9, highest) did not run before its execute_after
    # (not "ran last": under load the immediate jobs may outlast its delay).
    [later_started] = [started for job_id, *_, started in seen if job_id == later_id]
    assert later_started - t0 >= 0.45
    sequences = log_sequences(conn)
    assert sequences == {i: ["queued", "picked", "successful"] for i in [*now_ids, later_id]}
    assert queue_rows(conn) == 0
    assert queries.queue_size() == []


# -- 2. we enqueue, PgQueuer processes -----------------------------------------------------


def test_jobs_enqueued_by_us_run_intact_on_a_pgqueuer_worker(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries
) -> None:
    """Our ``Queries.enqueue`` (one batch) -> PgQueuer's async worker in drain mode.

    Proves: PgQueuer's ``Job`` model validates our rows; payload bytes, priority
    and headers (nested JSON, and "none") arrive intact; PgQueuer claims our rows
    ``priority DESC, id ASC`` and honours our ``execute_after``; every job is
    logged ``queued, picked, successful`` (our queued row + its picked/successful
    rows) and the queue ends empty, as our ``Queries`` also reports.
    """
    payloads: list[bytes | None] = [b"\x00\x01\x02", None, b"", "ünï".encode(), b"p5"]
    priorities = [2, 8, 4, 6, 6]
    headers: list[dict[str, Any] | None] = [
        {"tenant": "acme"},
        None,
        {"nested": {"list": [1, 2, 3], "flag": True}},
        {},
        None,
    ]
    ids = queries.enqueue(["theirs"] * 5, payloads, priorities, headers=headers)
    t0 = time.monotonic()
    [later_id] = queries.enqueue("theirs", b"later", 10, execute_after=timedelta(seconds=0.5))
    seen: list[tuple[int, int, bytes | None, dict[str, object] | None, float]] = []

    def register(pgq: AsyncPgQueuer) -> None:
        @pgq.entrypoint("theirs")
        async def theirs(job: TheirJob) -> None:
            seen.append((job.id, job.priority, job.payload, job.headers, time.monotonic()))

    with async_worker(
        dsn,
        register,
        mode=QueueExecutionMode.drain,
        batch_size=1,
        max_concurrent_tasks=2,
        **THEIRS_FAST,
    ) as worker:
        worker.join(timeout=20)  # drain mode ends by itself

    by_id = {job_id: (prio, payload, hdrs) for job_id, prio, payload, hdrs, _ in seen}
    assert len(seen) == len(by_id) == 6
    expected = {job_id: (priorities[i], payloads[i], headers[i]) for i, job_id in enumerate(ids)}
    expected[later_id] = (10, b"later", None)
    assert by_id == expected
    immediate = [job_id for job_id, *_ in seen if job_id != later_id]
    assert immediate == [ids[i] for i in (1, 3, 4, 2, 0)]
    [later_started] = [started for job_id, *_, started in seen if job_id == later_id]
    assert later_started - t0 >= 0.45  # deferred; not necessarily last under load
    assert log_sequences(conn) == {i: ["queued", "picked", "successful"] for i in [*ids, later_id]}
    assert dict(queries.job_status([*ids, later_id])) == {i: "successful" for i in [*ids, later_id]}
    assert queries.queue_size() == []


# -- 3. one queue, two kinds of worker -----------------------------------------------------


def _drain_together(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries, count: int, our_workers: int = 1
) -> None:
    """One PgQueuer worker and ``our_workers`` of ours, all running, then ``count`` jobs."""
    ours: list[int] = []  # list.append is atomic: one list for all our workers' threads
    theirs: list[int] = []
    ready = {name: threading.Event() for name in ["theirs", *map(str, range(our_workers))]}

    def register(pgq: AsyncPgQueuer) -> None:
        pgq.entrypoint("warm_theirs")(their_warmup(ready["theirs"]))

        @pgq.entrypoint("shared")
        async def shared(job: TheirJob) -> None:
            theirs.append(job.id)
            await asyncio.sleep(0.002)

    def shared(job: Job) -> None:
        ours.append(job.id)
        time.sleep(0.002)

    with contextlib.ExitStack() as stack:
        # Per-worker caps (max_concurrent_tasks) keep any one worker from claiming it all.
        stack.enter_context(
            async_worker(dsn, register, batch_size=5, max_concurrent_tasks=10, **THEIRS_FAST)
        )
        for n in range(our_workers):
            pgq = make_pgq(stack.enter_context(pool_for(dsn, size=6)))
            pgq.entrypoint(f"warm_{n}")(our_warmup(ready[str(n)]))
            pgq.entrypoint("shared")(shared)
            stack.enter_context(running(pgq, batch_size=5, max_concurrent_tasks=10, **OURS_FAST))
        queries.enqueue([f"warm_{name}" for name in ready], [None] * len(ready))
        for name, event in ready.items():
            assert event.wait(15), f"worker {name} did not start"
        ids = queries.enqueue(["shared"] * count, [str(i).encode() for i in range(count)])
        wait_for(lambda: all_terminal(conn, ids), timeout=120, interval=0.05)

    counted = collections.Counter(ours + theirs)
    duplicates = {job_id: n for job_id, n in counted.items() if n > 1}
    assert duplicates == {}, f"jobs run more than once: {duplicates}"
    assert set(counted) == set(ids)
    assert ours and theirs, f"one side took no share: ours={len(ours)}, theirs={len(theirs)}"
    sequences = log_sequences(conn)
    # Exactly one claim and one terminal row per job, whoever ran it.
    assert {i: sequences[i] for i in ids} == {i: ["queued", "picked", "successful"] for i in ids}
    assert queue_rows(conn) == 0


def test_pgqueuer_and_our_worker_drain_one_queue_exactly_once(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries
) -> None:
    """Both workers running, then 2,000 jobs in one batch on one entrypoint.

    Proves: ``FOR UPDATE SKIP LOCKED`` claims from both sides never overlap:
    every job runs exactly once (union of both sides' ids = all ids, no
    duplicates), both workers take a share, and the log holds exactly one
    ``picked`` and one terminal (``successful``) row per job.
    """
    _drain_together(dsn, conn, queries, count=2000)


@pytest.mark.slow
def test_pgqueuer_and_three_of_our_workers_drain_10k_exactly_once(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries
) -> None:
    """The compatibility document's fleet: one PgQueuer worker, several of ours, 10,000 jobs.

    Proves the same exactly-once and one-terminal-row-per-job properties as the
    2,000-job test, under longer contention among four claimers.
    """
    _drain_together(dsn, conn, queries, count=10_000, our_workers=3)


# -- 4. fleet-wide concurrency_limit across both implementations ---------------------------


def test_concurrency_limit_is_fleet_wide_across_pgqueuer_and_us(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries
) -> None:
    """``concurrency_limit=2`` registered on both sides: at most 2 handlers run fleet-wide.

    Proves: our seat (``slot``) assignment and PgQueuer's agree (seats 0 and 1
    only, shared partial unique index), so the maximum overlap of all handler
    spans (one monotonic clock: both run in this process) never exceeds 2, while
    both workers take jobs and the limit is actually reached.
    """
    spans: list[tuple[str, float, float, int | None]] = []
    lock = threading.Lock()
    ours_ready, theirs_ready = threading.Event(), threading.Event()
    hold = 0.05

    def register(pgq: AsyncPgQueuer) -> None:
        pgq.entrypoint("warm_theirs")(their_warmup(theirs_ready))

        @pgq.entrypoint("limited", concurrency_limit=2)
        async def limited(job: TheirJob) -> None:
            start = time.monotonic()
            await asyncio.sleep(hold)
            with lock:
                spans.append(("theirs", start, time.monotonic(), job.slot))

    with pool_for(dsn, size=6) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("warm_ours")(our_warmup(ours_ready))

        @pgq.entrypoint("limited", concurrency_limit=2)
        def limited(job: Job) -> None:
            start = time.monotonic()
            time.sleep(hold)
            with lock:
                spans.append(("ours", start, time.monotonic(), job.slot))

        queries.enqueue(["warm_theirs", "warm_ours"], [None, None])
        with (
            async_worker(dsn, register, batch_size=4, **THEIRS_FAST),
            running(pgq, batch_size=4, concurrency=8, **OURS_FAST),
        ):
            assert theirs_ready.wait(15) and ours_ready.wait(15), "a worker did not start"
            ids = queries.enqueue(["limited"] * 40, [None] * 40)
            wait_for(lambda: all_terminal(conn, ids), timeout=30, interval=0.05)

    assert len(spans) == len(ids)
    assert max_overlap([(start, end) for _, start, end, _ in spans]) == 2
    sides = collections.Counter(side for side, *_ in spans)
    assert sides["ours"] and sides["theirs"], f"one side took no share: {dict(sides)}"
    assert {slot for *_, slot in spans} <= {0, 1}
    sequences = log_sequences(conn)
    assert {i: sequences[i] for i in ids} == {i: ["queued", "picked", "successful"] for i in ids}


# -- stale claims across implementations ---------------------------------------------------


def test_job_of_a_dead_pgqueuer_worker_is_repicked_by_us(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries
) -> None:
    """A job claimed by PgQueuer's ``dequeue`` whose worker never beats again is re-picked by us.

    Proves: PgQueuer's claim (status, ``heartbeat``, ``queue_manager_id``) is one
    our stale-job rule recognises after ``heartbeat_timeout``; the re-pick keeps
    ``attempts`` unchanged and logs a second ``picked`` row.
    """
    [job_id] = queries.enqueue("orphan", b"left behind")
    dead = uuid.uuid4()

    async def claim(theirs: AsyncQueries) -> list[TheirJob]:
        return await theirs.dequeue(
            batch_size=10,
            entrypoints={QueueEntrypoint("orphan"): TheirParameter(concurrency_limit=0)},
            queue_manager_id=QueueManagerId(dead),
            global_concurrency_limit=None,
            heartbeat_timeout=timedelta(seconds=30),
        )

    [claimed] = run_async_queries(dsn, claim)
    assert (int(claimed.id), claimed.queue_manager_id) == (job_id, dead)
    runs: list[tuple[int, int, bytes | None]] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("orphan")(lambda job: runs.append((job.id, job.attempts, job.payload)))
        with running(pgq, heartbeat_timeout=0.5, **OURS_FAST):
            wait_for(lambda: all_terminal(conn, [job_id]), timeout=10)
    assert runs == [(job_id, 0, b"left behind")]
    assert log_sequences(conn) == {job_id: ["queued", "picked", "picked", "successful"]}


def test_job_of_a_dead_worker_of_ours_is_repicked_by_pgqueuer(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries
) -> None:
    """The reverse: our ``dequeue`` claims for a worker that dies; PgQueuer re-picks the job.

    Proves: our claim is one PgQueuer's stale rule recognises, and its re-pick
    of our row keeps ``attempts`` and completes the job.
    """
    [job_id] = queries.enqueue("orphan", b"ours, abandoned")
    dead = uuid.uuid4()
    params = {"orphan": EntrypointExecutionParameter()}
    [claimed] = queries.dequeue(10, params, dead, None, timedelta(seconds=30))
    assert (claimed.id, claimed.queue_manager_id) == (job_id, dead)
    runs: list[tuple[int, int, bytes | None]] = []

    def register(pgq: AsyncPgQueuer) -> None:
        @pgq.entrypoint("orphan")
        async def orphan(job: TheirJob) -> None:
            runs.append((job.id, job.attempts, job.payload))

    heartbeat_timeout = {"heartbeat_timeout": timedelta(seconds=0.5)}
    with async_worker(dsn, register, **heartbeat_timeout, **THEIRS_FAST):
        wait_for(lambda: all_terminal(conn, [job_id]), timeout=10)
    assert runs == [(job_id, 0, b"ours, abandoned")]
    assert log_sequences(conn) == {job_id: ["queued", "picked", "picked", "successful"]}


# -- 5. hold/requeue and cancellation across implementations -------------------------------


def test_job_held_by_pgqueuer_is_requeued_and_run_by_us(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries
) -> None:
    """PgQueuer ``on_failure="hold"`` parks a job; our Queries requeue it; our worker runs it.

    Proves: a row PgQueuer held (``failed``, ``queue_manager_id`` NULL) is listed
    by our ``list_failed_jobs``, its ``failed`` log row carries a traceback
    record our ``Log`` parses, our ``requeue_jobs`` resets it (``attempts`` 0,
    a ``queued`` log row) and our worker then completes it.
    """
    [job_id] = queries.enqueue("parked", b"fragile")

    def register(pgq: AsyncPgQueuer) -> None:
        @pgq.entrypoint("parked", on_failure="hold")
        async def parked(job: TheirJob) -> None:
            raise RuntimeError("held by pgqueuer")

    with async_worker(dsn, register, mode=QueueExecutionMode.drain, **THEIRS_FAST) as worker:
        worker.join(timeout=20)

    [held] = queries.list_failed_jobs()
    assert (held.id, held.status, held.queue_manager_id, held.payload) == (
        job_id,
        "failed",
        None,
        b"fragile",
    )
    failed = [e for e in queries.queue_log() if e.job_id == job_id and e.status == "failed"]
    assert len(failed) == 1 and failed[0].traceback is not None
    assert failed[0].traceback.exception_type == "RuntimeError"
    assert failed[0].traceback.exception_message == "held by pgqueuer"

    assert queries.requeue_jobs([job_id]) == [job_id]
    runs: list[tuple[int, int, bytes | None]] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("parked")(lambda job: runs.append((job.id, job.attempts, job.payload)))
        pgq.run(mode="drain", **OURS_FAST)
    assert runs == [(job_id, 0, b"fragile")]
    assert log_sequences(conn) == {
        job_id: ["queued", "picked", "failed", "queued", "picked", "successful"]
    }
    assert queue_rows(conn) == 0


def test_job_held_by_us_is_requeued_by_pgqueuer_and_run_by_it(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries
) -> None:
    """The reverse: we hold a job; PgQueuer's ``requeue_jobs`` and worker finish it.

    Proves: our held row satisfies PgQueuer's ``status = 'failed'`` requeue and
    its ``Job`` model, and PgQueuer then runs and logs it ``successful``.
    """
    [job_id] = queries.enqueue("parked", b"again")
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("parked", on_failure="hold")
        def parked(job: Job) -> None:
            raise RuntimeError("held by us")

        pgq.run(mode="drain", **OURS_FAST)

    async def inspect_and_requeue(theirs: AsyncQueries) -> list[TheirJob]:
        failed = await theirs.list_failed_jobs()
        await theirs.requeue_jobs([TheirJobId(job_id)])
        return failed

    [held] = run_async_queries(dsn, inspect_and_requeue)
    assert (int(held.id), held.status, held.payload, held.queue_manager_id) == (
        job_id,
        "failed",
        b"again",
        None,
    )
    runs: list[tuple[int, int]] = []

    def register(pgq: AsyncPgQueuer) -> None:
        @pgq.entrypoint("parked")
        async def parked(job: TheirJob) -> None:
            runs.append((job.id, job.attempts))

    with async_worker(dsn, register, mode=QueueExecutionMode.drain, **THEIRS_FAST) as worker:
        worker.join(timeout=20)
    assert runs == [(job_id, 0)]
    assert log_sequences(conn) == {
        job_id: ["queued", "picked", "failed", "queued", "picked", "successful"]
    }
    assert queue_rows(conn) == 0


def test_our_cancellation_reaches_a_job_running_in_pgqueuer(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries
) -> None:
    """Our ``mark_job_as_cancelled`` -> PgQueuer's listener cancels its running job.

    Proves: our ``cancellation_event`` NOTIFY envelope is accepted by PgQueuer's
    listener and trips the job's ``Context.cancellation`` scope; the job's row is
    gone and the log holds exactly one ``canceled`` row (PgQueuer's own
    ``canceled`` write finds no row and adds none).
    """
    started = threading.Event()
    outcome: list[str] = []

    def register(pgq: AsyncPgQueuer) -> None:
        @pgq.entrypoint("long", accepts_context=True)
        async def long(job: TheirJob, ctx: TheirContext) -> None:
            started.set()
            with ctx.cancellation:
                await asyncio.sleep(20)
            outcome.append("cancelled" if ctx.cancellation.cancel_called else "finished")

    [job_id] = queries.enqueue("long", None)
    with async_worker(dsn, register, **THEIRS_FAST):
        assert started.wait(15), "PgQueuer did not start the job"
        assert queries.mark_job_as_cancelled([job_id]) == [job_id]
        wait_for(lambda: outcome, timeout=10)
    assert outcome == ["cancelled"]
    assert log_sequences(conn) == {job_id: ["queued", "picked", "canceled"]}
    assert queue_rows(conn) == 0


def test_pgqueuer_cancellation_reaches_a_job_running_in_our_worker(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries
) -> None:
    """The reverse: PgQueuer's ``mark_job_as_cancelled`` -> our running sync handler.

    Proves: PgQueuer's ``cancellation_event`` envelope is understood by our
    listener (the job's token is set), and the log holds one ``canceled`` row.
    """
    started = threading.Event()
    outcome: list[str] = []
    [job_id] = queries.enqueue("long", None)
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("long")
        def long(job: Job, ctx: Context) -> None:
            started.set()
            outcome.append("cancelled" if ctx.cancellation.wait(20) else "finished")

        with running(pgq, **OURS_FAST):
            assert started.wait(15), "our worker did not start the job"

            async def cancel(theirs: AsyncQueries) -> None:
                await theirs.mark_job_as_cancelled([TheirJobId(job_id)])

            run_async_queries(dsn, cancel)
            wait_for(lambda: outcome, timeout=10)
            wait_for(lambda: not pgq.qm.job_context, timeout=10)
    assert outcome == ["cancelled"]
    assert log_sequences(conn) == {job_id: ["queued", "picked", "canceled"]}
    assert queue_rows(conn) == 0


# -- 7. our wake-ups reach PgQueuer's listener ----------------------------------------------


@pytest.mark.parametrize("operation", ["requeue", "retry"])
def test_our_requeues_and_retries_wake_an_idle_pgqueuer_worker(
    dsn: str, queries: Queries, operation: str
) -> None:
    """Requeues and retries are UPDATEs, which PgQueuer 1.6's trigger ignores; our
    statements send a ``table_changed_event`` (operation ``update``) of their own,
    which a 1.6 listener accepts: its idle worker (30 s poll) runs the job at once."""
    ran, ready = threading.Event(), threading.Event()
    [job_id] = queries.enqueue("woken", None)
    queries.enqueue("ready", None)
    worker_id = uuid.uuid4()
    [job] = queries.dequeue(1, {"woken": 0}, worker_id, None, timedelta(seconds=30))
    if operation == "requeue":
        queries.log_jobs([(job, "failed", None)], queue_manager_id=worker_id)

    def register(pgq: AsyncPgQueuer) -> None:
        @pgq.entrypoint("woken")
        async def woken(job: TheirJob) -> None:
            ran.set()

        @pgq.entrypoint("ready")
        async def on_ready(job: TheirJob) -> None:
            ready.set()

    with async_worker(dsn, register, dequeue_timeout=timedelta(seconds=30),
                      log_aggregation_interval=timedelta(0)):
        # PgQueuer 1.6 starts listening before its dequeue loop: once it has run
        # a job, its listener is up (it has no other observable "listening" state).
        assert ready.wait(10)
        assert not ran.is_set()
        started = time.monotonic()
        if operation == "requeue":
            assert queries.requeue_jobs([job_id]) == [job_id]
        else:
            assert queries.retry_job(job, timedelta(0), queue_manager_id=worker_id)
        assert ran.wait(10), "PgQueuer's idle worker waited for its poll"
        assert time.monotonic() - started < 10
