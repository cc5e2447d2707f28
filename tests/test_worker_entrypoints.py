"""Entrypoint options users of older PgQueuer releases know, and get_context()."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

from pgqueue_sync import Job
from pgqueue_sync.queries import EntrypointExecutionParameter
from pgqueue_sync.worker.cancellation import Context

from .worker_helpers import make_pgq, pool_for, running, wait_for

FAST = {"dequeue_timeout": 0.5, "log_aggregation_interval": 0}


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans running at one instant."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    return peak


def test_serialized_dispatch_runs_one_at_a_time_and_claims_a_fleet_seat(dsn, queries, conn):
    spans: list[tuple[float, float]] = []
    slots: list[object] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("serial", serialized_dispatch=True)
        def serial(job: Job) -> None:
            start = time.monotonic()
            row = conn.execute("SELECT slot FROM pgqueuer WHERE id = %s", [job.id]).fetchone()
            slots.append(row[0] if row else None)
            time.sleep(0.02)  # the work being serialised
            spans.append((start, time.monotonic()))

        ids = queries.enqueue(["serial"] * 8, [None] * 8)
        pgq.run(mode="drain", concurrency=4, **FAST)
    assert len(spans) == len(ids)
    assert max_overlap(spans) == 1
    # The seat is the fleet-wide one PgQueuer workers also honour: seat 0, the only one.
    assert slots == [0] * len(ids)


def test_retry_timer_is_that_entrypoints_stale_timeout(dsn, queries):
    ran: list[int] = []
    done = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("quick_stale", retry_timer=timedelta(seconds=1))
        def quick(job: Job) -> None:
            ran.append(job.id)
            done.set()

        @pgq.entrypoint("slow_stale")
        def slow(job: Job) -> None:
            ran.append(job.id)

        [quick_id, slow_id] = queries.enqueue(["quick_stale", "slow_stale"], [None, None])
        # A worker that claims both and dies: its heartbeats stop at the claim.
        dead = uuid.uuid4()
        params = {ep: EntrypointExecutionParameter() for ep in ("quick_stale", "slow_stale")}
        claimed = queries.dequeue(10, params, dead, None, timedelta(seconds=30))
        assert {j.id for j in claimed} == {quick_id, slow_id}
        with running(pgq, heartbeat_timeout=30, **FAST):
            assert done.wait(10), "the job with retry_timer=1s was not re-picked"
            time.sleep(0.5)  # a few more claim cycles: the other job must stay put
    assert ran == [quick_id]
    assert dict(queries.job_status([slow_id])) == {slow_id: "picked"}


def test_get_context_from_inside_a_running_handler(dsn, queries):
    seen: list[bool] = []
    with pool_for(dsn) as pool:
        shared = {"calls": 0}
        pgq = make_pgq(pool, resources=shared)

        @pgq.entrypoint("introspect")
        def introspect(job: Job, ctx: Context) -> None:
            looked_up = pgq.qm.get_context(job.id)
            seen.append(looked_up is ctx and looked_up.resources is shared)
            looked_up.resources["calls"] += 1

        queries.enqueue(["introspect"] * 3, [None] * 3)
        pgq.run(mode="drain", concurrency=1, **FAST)
    assert seen == [True, True, True]
    assert shared["calls"] == 3
    assert wait_for(lambda: queries.queue_size() == [], timeout=5)
