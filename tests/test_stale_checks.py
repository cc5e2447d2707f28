"""Stale re-picks are looked for every few seconds, not on every claim.

The stale scan walks the picked-heartbeat index, where every job finished since
the last VACUUM leaves a dead entry (131,510 of them, 3,481 buffers per claim,
after draining 150,000 jobs with autovacuum off). Claims now include it at most
every ``STALE_CHECK_INTERVAL`` (and a quarter of the shortest stale timeout),
and whenever an idle worker wakes for a job going stale.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import psycopg

from pgqueue_sync import DBSettings, Job, Queries
from pgqueue_sync.sql.statements import Statements
from pgqueue_sync.testing.inmemory import InMemoryQueries

from .worker_helpers import make_pgq, pool_for, running, wait_for

ORPHAN = uuid.UUID("0f0f0f0f-0000-4000-8000-000000000001")


def test_a_claim_without_the_stale_branch_has_no_stale_scan() -> None:
    statements = Statements(DBSettings())
    with_stale = statements.dequeue(capacity=False, budget=False).as_string()
    without = statements.dequeue(capacity=False, budget=False, stale=False).as_string()
    assert "stale AS" in with_stale and "stale AS" not in without
    limited = statements.dequeue(capacity=True, budget=True, stale=False).as_string()
    assert "fresh_limited" in limited and "stale AS" not in limited


def orphan(conn: psycopg.Connection[Any], job_id: int, age: float) -> None:
    """Make ``job_id`` look picked by a worker that died ``age`` seconds ago."""
    conn.execute(
        "UPDATE pgqueuer SET status = 'picked', queue_manager_id = %s, "
        "heartbeat = NOW() - make_interval(secs => %s), updated = NOW() WHERE id = %s",
        [ORPHAN, age, job_id],
    )


def test_a_busy_worker_still_repicks_a_stale_job(dsn: str, queries: Queries,
                                                 conn: psycopg.Connection[Any]) -> None:
    [lost] = queries.enqueue("work", b"lost")
    orphan(conn, lost, 60.0)
    ran = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("work")
        def work(job: Job) -> None:
            if job.id == lost:
                ran.set()

        with running(pgq, heartbeat_timeout=2.0, dequeue_timeout=1.0):
            # Keep it busy with fresh jobs the whole time.
            stop = threading.Event()

            def feed() -> None:
                while not stop.is_set():
                    queries_feed.enqueue(["work"] * 50, [None] * 50)
                    stop.wait(0.05)

            with psycopg.connect(dsn, autocommit=True) as feed_conn:
                from pgqueue_sync import SyncPsycopgDriver

                queries_feed = Queries(SyncPsycopgDriver(feed_conn), settings=DBSettings())
                feeder = threading.Thread(target=feed, name="feeder", daemon=True)
                feeder.start()
                try:
                    assert ran.wait(15), "the stale job was never re-picked"
                finally:
                    stop.set()
                    feeder.join(10)
    assert not feeder.is_alive()


def test_an_idle_worker_wakes_for_a_job_going_stale(dsn: str, queries: Queries,
                                                    conn: psycopg.Connection[Any]) -> None:
    [lost] = queries.enqueue("work", b"lost")
    orphan(conn, lost, 0.0)  # goes stale 2 s from now
    ran = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("work")(lambda job: ran.set())
        with running(pgq, heartbeat_timeout=2.0, dequeue_timeout=30.0):
            wait_for(lambda: pgq.qm.idle_waits > 0, timeout=10, what="worker idle")
            assert ran.wait(10), "the idle worker did not wake for the stale job"


def test_the_in_memory_adapter_leaves_stale_jobs_when_told() -> None:
    from datetime import datetime, timezone

    from pgqueue_sync.testing.inmemory import InMemoryDriver

    now = [datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)]
    queries = InMemoryQueries(InMemoryDriver(clock=lambda: now[0]), settings=DBSettings())
    [job_id] = queries.enqueue("work", None)
    first = queries.dequeue(1, {"work": 0}, ORPHAN, None, timedelta(seconds=30))
    assert [j.id for j in first] == [job_id]
    now[0] += timedelta(seconds=60)  # its worker is gone: the job is stale
    me = uuid.uuid4()
    assert queries.dequeue(1, {"work": 0}, me, None, timedelta(seconds=30),
                           include_stale=False) == []
    again = queries.dequeue(1, {"work": 0}, me, None, timedelta(seconds=30))
    assert [j.id for j in again] == [job_id]
