"""The statistics fold against real PostgreSQL, while workers write the log.

Each test checks the invariant a dashboard relies on: once the fold has run,
every log row is counted exactly once, however the fold's chunks interleave
with claims and outcome writes, and when an outcome is sent twice.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import psycopg

from pgqueue_sync import DBSettings, Queries, SyncPsycopgDriver

HB = timedelta(seconds=30)
THREAD_DEADLINE = 60.0


def claim(queries: Queries, batch: int = 10, worker: uuid.UUID | None = None) -> list[Any]:
    return queries.dequeue(batch, {"a": 0}, worker or uuid.uuid4(), None, HB)


def log_counts(conn: psycopg.Connection[Any]) -> Counter[str]:
    """Log rows per status."""
    rows = conn.execute("SELECT status::text, count(*) FROM pgqueuer_log GROUP BY 1").fetchall()
    return Counter(dict(rows))


def stat_counts(conn: psycopg.Connection[Any]) -> Counter[str]:
    rows = conn.execute(
        "SELECT status::text, sum(count)::bigint FROM pgqueuer_statistics GROUP BY 1"
    ).fetchall()
    return Counter(dict(rows))


def test_a_resent_outcome_is_not_counted_twice(queries, conn):
    """A reply lost after the commit makes the worker send its outcome again: the
    guard logs nothing the second time, and so counts nothing."""
    queries.enqueue("a", None)
    worker = uuid.uuid4()
    [job] = claim(queries, worker=worker)
    for _ in range(2):
        queries.log_jobs([(job, "successful", None)], queue_manager_id=worker)
    queries.aggregate_logs()
    assert stat_counts(conn) == log_counts(conn) == Counter(
        {"queued": 1, "picked": 1, "successful": 1})


def test_concurrent_claims_outcomes_and_folds_count_every_row_once(
    dsn, queries, conn, monkeypatch
):
    """Four workers on one entrypoint (their rows land in the same per-second
    buckets) and a fold in small chunks running meanwhile: no statement fails,
    and after a last fold the statistics equal the log."""
    from pgqueue_sync.queries import statistics as statistics_module

    monkeypatch.setattr(statistics_module, "AGGREGATE_CHUNK", 50)  # many short folds
    jobs_total = 2_000
    queries.enqueue(["a"] * jobs_total, [None] * jobs_total)
    errors: list[BaseException] = []
    done = threading.Event()

    def work() -> None:
        worker = uuid.uuid4()
        try:
            with psycopg.connect(dsn, autocommit=True) as own:
                q = Queries(SyncPsycopgDriver(own), settings=DBSettings())
                finished: list[Any] = []
                while True:
                    jobs = q.dequeue(10, {"a": 0}, worker, None, HB,
                                     completed=[(j, "successful", None) for j in finished])
                    if not jobs:
                        return
                    half = len(jobs) // 2
                    q.log_jobs([(j, "successful", None) for j in jobs[:half]],
                               queue_manager_id=worker)
                    finished = jobs[half:]
        except BaseException as exc:  # reported to the test thread below
            errors.append(exc)

    def fold() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as own:
                q = Queries(SyncPsycopgDriver(own), settings=DBSettings())
                while not done.wait(0.01):
                    q.aggregate_logs()
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, name=f"test-worker-{i}") for i in range(4)]
    folder = threading.Thread(target=fold, name="test-fold")
    try:
        folder.start()
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(THREAD_DEADLINE)
            assert not thread.is_alive(), "a worker thread did not finish"
    finally:
        done.set()
        folder.join(THREAD_DEADLINE)
    assert not errors, errors
    assert queries.queue_size() == []  # each worker's last claim finished its rest
    queries.aggregate_logs()
    logged = log_counts(conn)
    assert logged["successful"] == jobs_total
    assert stat_counts(conn) == logged
