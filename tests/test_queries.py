"""Queries against real PostgreSQL: enqueue, dedupe, claim, completion, retry, hold."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime, timedelta, timezone

import pytest

from pgqueue_sync import (
    ConfigurationError,
    DuplicateJobError,
    EntrypointExecutionParameter,
    Queries,
    SyncPsycopgDriver,
    TracebackRecord,
)

HB = timedelta(seconds=30)


def claim(queries, eps, batch=10, *, worker=None, budget=None):
    worker = worker or uuid.uuid4()
    return queries.dequeue(batch, eps, worker, budget, HB)


def new_queries(connect, settings, autocommit=True):
    return Queries(SyncPsycopgDriver(connect(autocommit)), settings=settings)


def test_dequeue_orders_by_priority_then_id(queries):
    ids = queries.enqueue(["a", "a", "b", "a"], [b"0", b"1", b"2", b"3"], [0, 5, 5, 0])
    jobs = claim(queries, {"a": 0, "b": 0})
    assert [j.id for j in jobs] == [ids[1], ids[2], ids[0], ids[3]]
    assert all(j.status == "picked" for j in jobs)
    assert [j.payload for j in jobs] == [b"1", b"2", b"0", b"3"]


def test_dequeue_only_registered_entrypoints_and_batch_cap(queries):
    queries.enqueue(["a"] * 5 + ["b"] * 5, [None] * 10)
    first = claim(queries, {"a": 0}, batch=3)
    assert [j.entrypoint for j in first] == ["a"] * 3
    rest = claim(queries, {"a": 0, "b": 0}, batch=100)
    assert len(rest) == 7


def test_claim_writes_picked_log_and_worker_id(queries):
    [job_id] = queries.enqueue("a", None)
    worker = uuid.uuid4()
    [job] = claim(queries, {"a": 0}, worker=worker)
    assert job.queue_manager_id == worker
    statuses = [(log.job_id, log.status) for log in queries.queue_log()]
    assert statuses == [(job_id, "queued"), (job_id, "picked")]


def test_deferred_job_is_not_claimed_until_due(queries, conn):
    queries.enqueue("a", None, execute_after=timedelta(hours=1))
    at = datetime.now(timezone.utc) + timedelta(hours=2)
    queries.enqueue("a", None, execute_after=at)
    assert claim(queries, {"a": 0}) == []
    assert queries.queued_work(["a"]) == 2
    assert queries.eligible_queued_work(["a"]) == 0
    eta = queries.next_deferred_eta(["a"])
    assert timedelta(minutes=59) < eta <= timedelta(hours=1)
    stored = conn.execute("SELECT max(execute_after) FROM pgqueuer").fetchone()[0]
    assert abs(stored - at) < timedelta(milliseconds=1)
    conn.execute("UPDATE pgqueuer SET execute_after = NOW() - interval '1 second'")
    assert len(claim(queries, {"a": 0})) == 2


def test_enqueue_rejects_bad_input_with_clear_messages(queries):
    with pytest.raises(ConfigurationError, match="equal length"):
        queries.enqueue(["a", "b"], [None])
    with pytest.raises(ConfigurationError, match="encode it first"):
        queries.enqueue("a", "text")
    with pytest.raises(ConfigurationError, match="no timezone"):
        queries.enqueue("a", None, execute_after=datetime.now())
    with pytest.raises(ConfigurationError, match="on_conflict"):
        queries.enqueue("a", None, on_conflict="ignore")
    with pytest.raises(ConfigurationError, match="non-empty string"):
        queries.enqueue("", None)
    assert queries.queue_size() == []


def test_batch_enqueue_is_atomic_on_duplicate(queries):
    queries.enqueue("a", None, dedupe_key="taken")
    with pytest.raises(DuplicateJobError) as info:
        queries.enqueue(["a", "a", "a"], [None] * 3, dedupe_key=["new1", "taken", "new2"])
    assert info.value.dedupe_key == ["new1", "taken", "new2"]
    assert sum(s.count for s in queries.queue_size()) == 1
    assert len(queries.queue_log()) == 1


def test_large_batch_is_one_statement(queries):
    ids = queries.enqueue(["bulk"] * 10_000, [b"x"] * 10_000)
    assert len(ids) == 10_000 and ids == sorted(ids)
    assert queries.queue_size()[0].count == 10_000


def test_batch_columns_keep_each_rows_value_when_some_repeat(queries, conn):
    # A batch's repeated values are validated and rendered once; rows that differ
    # must still get their own value, and equal-but-distinct objects the same one.
    at = datetime(2030, 1, 1, 12, tzinfo=timezone.utc)
    same_instant = datetime(2030, 1, 1, 13, tzinfo=timezone(timedelta(hours=1)))
    ids = queries.enqueue(
        ["a", "a", "b", "a"],
        [b"p", b"p", None, b"q\\"],
        priority=[5, 5, 5, -3],
        execute_after=[at, same_instant, timedelta(seconds=30), None],
        dedupe_key=[None, "k1", None, None],
        headers=[{"x": 1}, {"x": 1}, None, {"y": [1, "\""]}],
    )
    rows = conn.execute(
        "SELECT id, entrypoint, payload, priority, execute_after, dedupe_key, headers, "
        "execute_after - NOW() AS wait FROM pgqueuer ORDER BY id"
    ).fetchall()
    assert [r[0] for r in rows] == ids
    assert [r[1] for r in rows] == ["a", "a", "b", "a"]
    assert [r[2] for r in rows] == [b"p", b"p", None, b"q\\"]
    assert [r[3] for r in rows] == [5, 5, 5, -3]
    assert rows[0][4] == rows[1][4] == at
    assert timedelta(seconds=20) < rows[2][7] <= timedelta(seconds=30)
    assert rows[3][7] <= timedelta(0)
    assert [r[5] for r in rows] == [None, "k1", None, None]
    assert [r[6] for r in rows] == [{"x": 1}, {"x": 1}, None, {"y": [1, '"']}]


def test_uniform_batch_stores_one_value_for_every_row(queries, conn):
    queries.enqueue(["u"] * 3, [b"z"] * 3, priority=7, execute_after=timedelta(hours=1),
                    headers={"h": "v"})
    rows = conn.execute(
        "SELECT entrypoint, payload, priority, headers, execute_after - NOW() FROM pgqueuer"
    ).fetchall()
    assert len(rows) == 3
    for entrypoint, payload, priority, headers, wait in rows:
        assert (entrypoint, payload, priority, headers) == ("u", b"z", 7, {"h": "v"})
        assert timedelta(minutes=59) < wait <= timedelta(hours=1)


def test_dedupe_skip_returns_none_and_logs_only_inserted(queries):
    [first] = queries.enqueue("a", None, dedupe_key="k")
    result = queries.enqueue(
        ["a"] * 4, [None] * 4, dedupe_key=["k", None, "m", "m"], on_conflict="skip"
    )
    assert result[0] is None and result[3] is None
    assert result[1] is not None and result[2] is not None
    assert len(queries.queue_log()) == 3
    assert first not in result


def test_dedupe_update_priority_raises_existing(queries, conn):
    [job_id] = queries.enqueue("a", None, priority=1, dedupe_key="k")
    assert queries.enqueue(
        "a", None, priority=7, dedupe_key="k", on_conflict="update_priority"
    ) == [job_id]
    assert queries.enqueue(
        "a", None, priority=3, dedupe_key="k", on_conflict="update_priority"
    ) == [job_id]
    assert conn.execute("SELECT priority FROM pgqueuer").fetchone()[0] == 7
    assert len(queries.queue_log()) == 1
    with pytest.raises(ConfigurationError, match="same dedupe_key twice"):
        queries.enqueue(
            ["a", "a"], [None, None], dedupe_key=["x", "x"], on_conflict="update_priority"
        )


def test_dedupe_key_released_when_job_held(queries):
    queries.enqueue("a", None, dedupe_key="k")
    [job] = claim(queries, {"a": 0})
    queries.log_jobs([(job, "failed", None)])
    assert len(queries.enqueue("a", None, dedupe_key="k")) == 1


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_concurrent_dedupe_enqueue_inserts_once(connect, settings, mode):
    producers = [new_queries(connect, settings) for _ in range(8)]
    barrier = threading.Barrier(len(producers), timeout=10)

    def enqueue(q):
        barrier.wait()
        try:
            return q.enqueue("a", None, dedupe_key="same", on_conflict=mode)
        except DuplicateJobError:
            return [None]

    with ThreadPoolExecutor(len(producers)) as pool:
        results = list(pool.map(enqueue, producers))
    inserted = [r[0] for r in results if r[0] is not None]
    assert len(inserted) == 1
    assert producers[0].queue_size()[0].count == 1


def test_headers_round_trip_and_default_json_null(queries, conn):
    queries.enqueue("a", None, headers={"otel": {"traceparent": "00-abc-def-01"}, "n": 1})
    queries.enqueue("a", None)
    kinds = conn.execute("SELECT jsonb_typeof(headers) FROM pgqueuer ORDER BY id").fetchall()
    assert kinds == [("object",), ("null",)]
    jobs = claim(queries, {"a": 0})
    assert jobs[0].headers == {"otel": {"traceparent": "00-abc-def-01"}, "n": 1}
    assert jobs[0].otel_headers() == {"traceparent": "00-abc-def-01"}
    assert jobs[1].headers is None and jobs[1].otel_headers() is None


def test_per_worker_budget_caps_claims(queries):
    queries.enqueue(["a"] * 30, [None] * 30)
    worker = uuid.uuid4()
    sizes = [len(claim(queries, {"a": 0}, worker=worker, budget=25)) for _ in range(4)]
    assert sizes == [10, 10, 5, 0]
    assert len(claim(queries, {"a": 0}, budget=25)) == 5  # another worker has its own budget


def test_concurrency_limit_assigns_lowest_free_seats(queries):
    queries.enqueue(["lim"] * 5, [None] * 5)
    jobs = claim(queries, {"lim": EntrypointExecutionParameter(concurrency_limit=2)})
    assert sorted(j.slot for j in jobs) == [0, 1]
    assert claim(queries, {"lim": 2}) == []
    queries.log_jobs([(jobs[0], "successful", None)])
    [next_job] = claim(queries, {"lim": 2})
    assert next_job.slot == jobs[0].slot


def test_limited_and_unlimited_entrypoints_are_isolated(queries):
    queries.enqueue(["lim"] * 3 + ["free"] * 3, [None] * 6)
    jobs = claim(queries, {"lim": 1, "free": 0})
    assert sorted(j.entrypoint for j in jobs) == ["free", "free", "free", "lim"]


def test_limit_holds_while_another_claim_is_uncommitted(connect, settings, queries):
    queries.enqueue(["lim"] * 4, [None] * 4)
    holder_conn = connect(autocommit=False)
    holder = Queries(SyncPsycopgDriver(holder_conn), settings=settings)
    with holder_conn.transaction():
        held = claim(holder, {"lim": 1})
        assert len(held) == 1
        # The other worker sees the job as queued, but must not overshoot the limit.
        assert claim(queries, {"lim": 1}) == []
    assert claim(queries, {"lim": 1}) == []
    assert len(claim(queries, {"lim": 2})) == 1


def test_seat_race_waits_then_returns_empty(connect, settings, queries):
    queries.enqueue(["lim"] * 4, [None] * 4)
    holder_conn = connect(autocommit=False)
    holder = Queries(SyncPsycopgDriver(holder_conn), settings=settings)
    racer = new_queries(connect, settings)
    with ThreadPoolExecutor(1) as pool:
        with holder_conn.transaction():
            assert [j.slot for j in claim(holder, {"lim": 2}, batch=1)] == [0]
            # The racer windows past the locked row, takes seat 0 and blocks on the
            # seat index until the holder commits; then it loses the race.
            future = pool.submit(claim, racer, {"lim": 2}, 2)
            with pytest.raises(FutureTimeout):
                future.result(timeout=0.3)
        assert future.result(timeout=10) == []
    picked = queries.queue_size()
    assert {s.status: s.count for s in picked} == {"picked": 1, "queued": 3}
    assert [j.slot for j in claim(racer, {"lim": 2})] == [1]


def test_concurrent_claims_never_exceed_limit(connect, settings, queries):
    queries.enqueue(["lim"] * 50, [None] * 50)
    workers = [new_queries(connect, settings) for _ in range(6)]
    barrier = threading.Barrier(len(workers), timeout=10)

    def grab(q):
        barrier.wait()
        return claim(q, {"lim": 3}, batch=5)

    with ThreadPoolExecutor(len(workers)) as pool:
        claimed = [j for jobs in pool.map(grab, workers) for j in jobs]
    assert len(claimed) <= 3
    assert len({j.slot for j in claimed}) == len(claimed)


def test_stale_repick_keeps_slot_and_attempts(queries, conn):
    queries.enqueue("lim", None)
    [job] = claim(queries, {"lim": 1})
    queries.retry_job(job, timedelta(0))
    conn.execute("UPDATE pgqueuer SET execute_after = NOW() - interval '1 second'")
    [job] = claim(queries, {"lim": 1})
    assert job.attempts == 1
    assert claim(queries, {"lim": 1}) == []  # live heartbeat: not stale
    conn.execute("UPDATE pgqueuer SET heartbeat = NOW() - interval '31 seconds'")
    other = uuid.uuid4()
    [again] = claim(queries, {"lim": 1}, worker=other)
    assert (again.id, again.slot, again.attempts) == (job.id, job.slot, 1)
    assert again.queue_manager_id == other
    picked_rows = [log for log in queries.queue_log() if log.status == "picked"]
    assert len(picked_rows) == 3


def test_stale_job_beats_lower_priority_fresh_work(queries, conn):
    [urgent] = queries.enqueue("a", None, priority=10)
    claim(queries, {"a": 0})
    queries.enqueue("a", None, priority=1)
    conn.execute(
        "UPDATE pgqueuer SET heartbeat = NOW() - interval '1 minute' WHERE id = %s", [urgent]
    )
    jobs = claim(queries, {"a": 0}, batch=1)
    assert [j.id for j in jobs] == [urgent]


def test_log_jobs_outcomes_and_tracebacks(queries, conn):
    ids = queries.enqueue(["a"] * 3, [None] * 3)
    jobs = claim(queries, {"a": 0})
    try:
        raise ValueError("boom!")
    except ValueError as exc:
        record = TracebackRecord.from_exception(
            exc, job_id=jobs[1].id, additional_context={"entrypoint": "a"}
        )
    logged = queries.log_jobs(
        [(jobs[0], "successful", None), (jobs[1], "exception", record), (jobs[2], "failed", record)]
    )
    assert sorted(logged) == sorted(ids)
    remaining = conn.execute("SELECT id, status::text, queue_manager_id FROM pgqueuer").fetchall()
    assert remaining == [(jobs[2].id, "failed", None)]
    by_status = {
        log.status: log for log in queries.queue_log() if log.status not in ("queued", "picked")
    }
    assert by_status["successful"].traceback is None
    stored = by_status["exception"].traceback
    assert stored.exception_type == "ValueError" and stored.exception_message == "boom!"
    assert "Traceback" in stored.traceback
    raw = conn.execute("SELECT traceback FROM pgqueuer_log WHERE status = 'exception'").fetchone()[
        0
    ]
    assert set(raw) == {
        "job_id",
        "timestamp",
        "exception_type",
        "exception_message",
        "traceback",
        "additional_context",
    }
    assert raw["timestamp"].endswith("Z")
    # Finishing a job whose row is gone logs nothing.
    assert queries.log_jobs([(jobs[0], "successful", None)]) == []


def test_hold_then_requeue_resets_attempts(queries, conn):
    [job_id] = queries.enqueue("a", None)
    [job] = claim(queries, {"a": 0})
    queries.retry_job(job, timedelta(0))
    conn.execute("UPDATE pgqueuer SET execute_after = NOW() - interval '1 second'")
    [job] = claim(queries, {"a": 0})
    queries.log_jobs([(job, "failed", None)])
    assert claim(queries, {"a": 0}) == []  # held rows are never claimed
    [held] = queries.list_failed_jobs()
    assert (held.id, held.status, held.attempts) == (job_id, "failed", 1)
    assert queries.requeue_jobs([job_id, 999_999]) == [job_id]
    assert queries.requeue_jobs([job_id]) == []  # no longer failed
    [again] = claim(queries, {"a": 0})
    assert again.attempts == 0


def test_retry_job_logs_queued_with_traceback_and_delays(queries):
    [job_id] = queries.enqueue("a", b"p", priority=3, headers={"h": 1})
    [job] = claim(queries, {"a": 0})
    record = TracebackRecord.from_exception(
        RuntimeError("later"),
        job_id=job.id,
        additional_context={"attempt": 0, "retry_delay": str(timedelta(seconds=60)), "reason": "x"},
    )
    assert queries.retry_job(job, timedelta(seconds=60), record) is True
    assert claim(queries, {"a": 0}) == []
    last = queries.queue_log()[-1]
    assert (last.job_id, last.status) == (job_id, "queued")
    assert last.traceback.additional_context["retry_delay"] == "0:01:00"
    assert queries.retry_job(123456, timedelta(0)) is False


def test_cancellation_deletes_queued_and_picked_and_notifies(queries, connect):
    listener = connect()
    listener.execute("LISTEN ch_pgqueuer")
    queued, picked = queries.enqueue(["a", "b"], [None, None])
    claim(queries, {"b": 0})
    assert sorted(queries.mark_job_as_cancelled([queued, picked, 424242])) == [queued, picked]
    assert queries.queue_size() == []
    statuses = dict(queries.job_status([queued, picked]))
    assert statuses == {queued: "canceled", picked: "canceled"}
    events = [json.loads(n.payload) for n in listener.notifies(timeout=5, stop_after=2)]
    cancel = [e for e in events if e["type"] == "cancellation_event"]
    assert len(cancel) == 1 and cancel[0]["ids"] == [queued, picked, 424242]
    assert cancel[0]["channel"] == "ch_pgqueuer" and cancel[0]["sent_at"].endswith("Z")


def test_update_heartbeat_touches_given_rows(queries, conn):
    ids = queries.enqueue(["a"] * 2, [None] * 2)
    claim(queries, {"a": 0})
    conn.execute("UPDATE pgqueuer SET heartbeat = NOW() - interval '1 hour'")
    queries.update_heartbeat([ids[0], ids[0]])
    ages = conn.execute(
        "SELECT id, NOW() - heartbeat < interval '1 minute' FROM pgqueuer ORDER BY id"
    ).fetchall()
    assert ages == [(ids[0], True), (ids[1], False)]


def test_clear_queue_by_entrypoint_logs_deleted_and_truncate_does_not(queries):
    queries.enqueue(["a", "b"], [None, None])
    queries.clear_queue("a")
    assert [s.entrypoint for s in queries.queue_size()] == ["b"]
    assert [log.status for log in queries.queue_log()][-1] == "deleted"
    queries.clear_queue()
    assert queries.queue_size() == []
    assert len(queries.queue_log()) == 3
    queries.clear_queue_log("a")
    assert {log.entrypoint for log in queries.queue_log()} == {"b"}
    queries.clear_queue_log()
    assert queries.queue_log() == []


def test_aggregation_counts_each_log_row_once(queries, connect, settings):
    queries.enqueue(["a"] * 3, [None] * 3)
    claim(queries, {"a": 0})
    others = [new_queries(connect, settings) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda q: q.aggregate_logs(), others))
    queries.aggregate_logs()
    stats = queries.log_statistics(100)
    counts = {s.status: s.count for s in stats}
    assert sum(counts.values()) == 6 and counts["queued"] == 3 and counts["picked"] == 3
    assert queries.log_statistics(100, last=timedelta(hours=1)) == stats


def test_aggregation_folds_a_backlog_in_chunks_and_counts_each_row_once(
    queries, monkeypatch
):
    from pgqueue_sync.queries import statistics as statistics_module

    monkeypatch.setattr(statistics_module, "AGGREGATE_CHUNK", 4)
    queries.enqueue(["a"] * 9 + ["b"] * 2, [None] * 11)  # 11 rows: chunks of 4, 4, 3
    queries.aggregate_logs()
    counts = {(s.entrypoint, s.status): s.count for s in queries.log_statistics(100)}
    assert counts == {("a", "queued"): 9, ("b", "queued"): 2}
    queries.aggregate_logs()  # nothing new: nothing counted twice
    assert {(s.entrypoint, s.status): s.count for s in queries.log_statistics(100)} == counts


def test_one_aggregation_call_stops_after_its_chunk_budget(queries, monkeypatch, conn):
    from pgqueue_sync.queries import statistics as statistics_module

    monkeypatch.setattr(statistics_module, "AGGREGATE_CHUNK", 2)
    monkeypatch.setattr(statistics_module, "AGGREGATE_MAX_CHUNKS", 2)
    queries.enqueue(["a"] * 7, [None] * 7)
    queries.aggregate_logs()  # folds 2 x 2 rows; the rest waits for the next call
    left = conn.execute("SELECT count(*) FROM pgqueuer_log WHERE NOT aggregated").fetchone()
    assert left == (3,)
    queries.aggregate_logs()
    left = conn.execute("SELECT count(*) FROM pgqueuer_log WHERE NOT aggregated").fetchone()
    assert left == (0,)


def test_job_status_reports_latest_transition(queries):
    a, b = queries.enqueue(["a", "a"], [None, None])
    [first, _] = claim(queries, {"a": 0})
    queries.log_jobs([(first, "successful", None)])
    assert dict(queries.job_status([a, b, 99])) == {a: "successful", b: "picked"}


def test_dequeue_records_completed_jobs_in_the_same_statement(queries, conn):
    ids = queries.enqueue(["a"] * 4, [None] * 4)
    worker = uuid.uuid4()
    first = claim(queries, {"a": 0}, batch=2, worker=worker)
    more = queries.dequeue(
        2,
        {"a": 0},
        worker,
        None,
        HB,
        completed=[(first[0], "successful", None), (first[1], "failed", None)],
    )
    assert sorted(j.id for j in more) == sorted(ids[2:])
    assert dict(queries.job_status(ids[:2])) == {ids[0]: "successful", ids[1]: "failed"}
    rows = conn.execute("SELECT id, status::text FROM pgqueuer ORDER BY id").fetchall()
    assert rows == [(ids[1], "failed"), (ids[2], "picked"), (ids[3], "picked")]


def test_completed_jobs_are_recorded_even_when_the_claim_loses_a_seat_race(
    connect, settings, queries
):
    ids = queries.enqueue(["lim"] * 3 + ["x"], [None] * 4)
    racing_worker = uuid.uuid4()
    [done] = claim(queries, {"x": 0}, worker=racing_worker)
    holder_conn = connect(autocommit=False)
    holder = Queries(SyncPsycopgDriver(holder_conn), settings=settings)
    racer = new_queries(connect, settings)
    with ThreadPoolExecutor(1) as pool:
        with holder_conn.transaction():
            claim(holder, {"lim": 2}, batch=1)
            future = pool.submit(
                racer.dequeue,
                2,
                {"lim": 2},
                racing_worker,
                None,
                HB,
                completed=[(done, "successful", None)],
            )
            with pytest.raises(FutureTimeout):
                future.result(timeout=0.3)
        assert future.result(timeout=10) == []
    assert dict(queries.job_status([done.id])) == {done.id: "successful"}
    assert ids[3] == done.id


@pytest.mark.parametrize(
    "name", ['q"uote', "com,ma", "{brace}", "back\\slash", "NULL", "sp ace", "ünïcødé ✓", "'"]
)
def test_awkward_names_keys_and_payloads_round_trip(queries, name):
    payload = bytes(range(256))
    headers = {"k": name, "nested": {"q": '"\\{}'}}
    [job_id] = queries.enqueue(name, payload, dedupe_key=name, headers=headers)
    [job] = claim(queries, {name: 0})
    assert (job.id, job.entrypoint, job.payload, job.headers) == (job_id, name, payload, headers)
    assert queries.log_jobs([(job, "successful", None)]) == [job_id]


def test_array_literals_escape_everything():
    from pgqueue_sync.sql.arrays import int_array, text_array

    assert int_array([1, -2, 3]) == "{1,-2,3}"
    assert text_array(["a", None, 'b"c', "d\\e"]) == '{"a",NULL,"b\\"c","d\\\\e"}'
    assert text_array([]) == "{}"
