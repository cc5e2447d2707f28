"""The in-memory adapter: unit tests (no database) plus one parity test against PostgreSQL."""

from __future__ import annotations

import inspect
import json
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from pgqueue_sync import (
    ConfigurationError,
    DBSettings,
    DuplicateJobError,
    EntrypointExecutionParameter,
    Queries,
    TracebackRecord,
)
from pgqueue_sync.errors import UniqueViolation
from pgqueue_sync.models import CancellationEvent, TableChangedEvent, parse_event
from pgqueue_sync.testing import InMemoryDriver, InMemoryQueries, ManualClock, in_memory_queries

HB = timedelta(seconds=30)
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


def claim(queries, eps, batch=10, *, worker=None, budget=None):
    return queries.dequeue(batch, eps, worker or uuid.uuid4(), budget, HB)


@pytest.fixture
def clock():
    return ManualClock(T0)


@pytest.fixture
def frozen():
    return ManualClock(T0, tick=timedelta(0))


@pytest.fixture
def mem(clock):
    return InMemoryQueries(InMemoryDriver(clock=clock), settings=DBSettings())


def listen(queries):
    payloads: list[str] = []
    queries.driver.add_listener(payloads.append)
    return payloads


def kinds(payloads):
    return [(e["type"], e.get("operation")) for e in map(json.loads, payloads)]


# -- the drop-in contract ------------------------------------------------------------------


def test_public_api_matches_queries_method_by_method():
    def public(cls):
        return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}

    assert public(Queries) - {"from_connection", "from_pool"} == public(InMemoryQueries)
    for name in public(InMemoryQueries):
        real = inspect.signature(getattr(Queries, name))
        fake = inspect.signature(getattr(InMemoryQueries, name))
        assert str(fake) == str(real), name


def test_testing_helper_builds_independent_queries():
    first, second = in_memory_queries(), in_memory_queries(ManualClock(T0))
    first.enqueue("a", None)
    assert second.queue_size() == [] and first.driver is not second.driver
    second.enqueue("a", None)
    [job] = claim(second, {"a": 0})
    assert job.created == T0 + timedelta(microseconds=1)  # queue_size() read T0


def test_naive_clock_is_refused():
    queries = InMemoryQueries(InMemoryDriver(clock=datetime.now))
    with pytest.raises(ConfigurationError, match="naive"):
        queries.queue_size()
    with pytest.raises(ConfigurationError, match="aware"):
        ManualClock(datetime(2025, 1, 1))


def test_manual_clock_ticks_and_moves():
    clock = ManualClock(T0)
    assert clock() == T0 and clock() == T0 + timedelta(microseconds=1)
    assert clock.advance(5) == T0 + timedelta(seconds=5, microseconds=2)
    clock.set(T0)
    assert clock.peek() == T0


# -- enqueue -------------------------------------------------------------------------------


def test_dequeue_orders_by_priority_then_id(mem):
    ids = mem.enqueue(["a", "a", "b", "a"], [b"0", b"1", b"2", b"3"], [0, 5, 5, 0])
    jobs = claim(mem, {"a": 0, "b": 0})
    assert [j.id for j in jobs] == [ids[1], ids[2], ids[0], ids[3]]
    assert all(j.status == "picked" for j in jobs)
    assert [j.payload for j in jobs] == [b"1", b"2", b"0", b"3"]


def test_dequeue_only_registered_entrypoints_and_batch_cap(mem):
    mem.enqueue(["a"] * 5 + ["b"] * 5, [None] * 10)
    first = claim(mem, {"a": 0}, batch=3)
    assert [j.entrypoint for j in first] == ["a"] * 3
    assert len(claim(mem, {"a": 0, "b": 0}, batch=100)) == 7
    with pytest.raises(ConfigurationError, match="batch_size"):
        claim(mem, {"a": 0}, batch=0)
    with pytest.raises(ConfigurationError, match="concurrency_limit"):
        claim(mem, {"a": -1})


def test_claim_writes_picked_log_and_worker_id(mem, clock):
    [job_id] = mem.enqueue("a", None)
    worker = uuid.uuid4()
    [job] = claim(mem, {"a": 0}, worker=worker)
    assert job.queue_manager_id == worker and job.slot is None and job.attempts == 0
    assert job.created < job.heartbeat == job.updated
    statuses = [(log.job_id, log.status) for log in mem.queue_log()]
    assert statuses == [(job_id, "queued"), (job_id, "picked")]


def test_enqueue_rejects_bad_input_with_the_same_errors(mem):
    with pytest.raises(ConfigurationError, match="equal length"):
        mem.enqueue(["a", "b"], [None])
    with pytest.raises(ConfigurationError, match="encode it first"):
        mem.enqueue("a", "text")
    with pytest.raises(ConfigurationError, match="no timezone"):
        mem.enqueue("a", None, execute_after=datetime.now())
    with pytest.raises(ConfigurationError, match="on_conflict"):
        mem.enqueue("a", None, on_conflict="ignore")
    with pytest.raises(ConfigurationError, match="non-empty string"):
        mem.enqueue("", None)
    with pytest.raises(ConfigurationError, match="does not fit"):
        mem.enqueue("a", None, priority=2**31)
    assert mem.queue_size() == [] and mem.queue_log() == []


def test_batch_enqueue_is_atomic_on_duplicate_and_burns_ids(mem):
    assert mem.enqueue("a", None, dedupe_key="taken") == [1]
    with pytest.raises(DuplicateJobError) as info:
        mem.enqueue(["a", "a", "a"], [None] * 3, dedupe_key=["new1", "taken", "new2"])
    assert info.value.dedupe_key == ["new1", "taken", "new2"]
    assert sum(s.count for s in mem.queue_size()) == 1
    assert len(mem.queue_log()) == 1
    with pytest.raises(DuplicateJobError):
        mem.enqueue(["a", "a"], [None] * 2, dedupe_key=["same", "same"])
    assert mem.enqueue("a", None) == [7]  # like nextval(): rejected rows leave gaps


def test_dedupe_skip_returns_none_and_logs_only_inserted(mem):
    [first] = mem.enqueue("a", None, dedupe_key="k")
    result = mem.enqueue(
        ["a"] * 4, [None] * 4, dedupe_key=["k", None, "m", "m"], on_conflict="skip"
    )
    assert result == [None, 3, 4, None]
    assert len(mem.queue_log()) == 3
    assert first not in result


def test_dedupe_update_priority_raises_existing_without_logging(mem):
    [job_id] = mem.enqueue("a", None, priority=1, dedupe_key="k")
    assert mem.enqueue("a", None, priority=7, dedupe_key="k", on_conflict="update_priority") == [
        job_id
    ]
    assert mem.enqueue("a", None, priority=3, dedupe_key="k", on_conflict="update_priority") == [
        job_id
    ]
    [stats] = mem.queue_size()
    assert stats.priority == 7 and stats.count == 1
    assert len(mem.queue_log()) == 1
    with pytest.raises(ConfigurationError, match="same dedupe_key twice"):
        mem.enqueue(["a", "a"], [None, None], dedupe_key=["x", "x"], on_conflict="update_priority")


def test_dedupe_key_is_released_by_hold_and_taken_back_by_requeue(mem):
    [held_id] = mem.enqueue("a", None, dedupe_key="k")
    [job] = claim(mem, {"a": 0})
    mem.log_jobs([(job, "failed", None)])
    [newer] = mem.enqueue("a", None, dedupe_key="k")
    with pytest.raises(UniqueViolation) as info:
        mem.requeue_jobs([held_id])
    assert info.value.constraint_name == "pgqueuer_unique_dedupe_key"
    assert [j.id for j in mem.list_failed_jobs()] == [held_id]  # nothing changed
    mem.mark_job_as_cancelled([newer])
    assert mem.requeue_jobs([held_id]) == [held_id]


def test_headers_round_trip_default_none_and_stay_detached(mem):
    given = {"otel": {"traceparent": "00-abc-def-01"}, "n": 1}
    mem.enqueue("a", None, headers=given)
    mem.enqueue("a", None)
    given["n"] = 2
    jobs = claim(mem, {"a": 0})
    assert jobs[0].headers == {"otel": {"traceparent": "00-abc-def-01"}, "n": 1}
    assert jobs[0].otel_headers() == {"traceparent": "00-abc-def-01"}
    assert jobs[1].headers is None and jobs[1].otel_headers() is None
    jobs[0].headers["otel"]["traceparent"] = "changed"
    mem.update_heartbeat([jobs[0].id])
    mem.log_jobs([(jobs[0], "failed", None)])
    assert mem.list_failed_jobs()[0].headers["otel"] == {"traceparent": "00-abc-def-01"}


def test_deferred_jobs_follow_the_injected_clock(frozen):
    queries = InMemoryQueries(InMemoryDriver(clock=frozen), settings=DBSettings())
    queries.enqueue("a", None, execute_after=timedelta(hours=1))
    queries.enqueue("a", None, execute_after=T0 + timedelta(hours=2))
    [due_now] = queries.enqueue("a", None)  # execute_after == NOW(): due (<=, as PgQueuer 2)
    worker = uuid.uuid4()
    assert [j.id for j in queries.dequeue(10, {"a": 0}, worker, None, HB)] == [due_now]
    back = TracebackRecord.from_exception(RuntimeError("back"), job_id=due_now)
    assert queries.release_jobs({due_now: back}, worker) == [due_now]
    assert queries.queued_work(["a"]) == 3 and queries.queued_work(["b"]) == 0
    assert queries.eligible_queued_work(["a"]) == 1  # the probe uses <=
    assert queries.next_deferred_eta(["a"]) == timedelta(hours=1)
    state = queries.poll_state(["a"])
    assert (state.eligible, state.eta, state.queued) == (True, timedelta(hours=1), True)

    def run_due():
        jobs = claim(queries, {"a": 0})
        queries.log_jobs([(j, "successful", None) for j in jobs])
        return len(jobs)

    assert run_due() == 1  # the released job, due since T0
    frozen.advance(timedelta(hours=1))
    assert run_due() == 1  # due exactly now
    assert queries.next_deferred_eta(["a"]) == timedelta(hours=1)
    frozen.advance(timedelta(hours=1) - timedelta(microseconds=1))
    assert run_due() == 0
    frozen.advance(timedelta(microseconds=1))
    assert run_due() == 1
    assert queries.poll_state(["a"]) == type(state)(eligible=False, eta=None, queued=False)


# -- claiming: limits, budgets, stale jobs -------------------------------------------------


def test_per_worker_budget_caps_claims(mem):
    mem.enqueue(["a"] * 30, [None] * 30)
    worker = uuid.uuid4()
    sizes = [len(claim(mem, {"a": 0}, worker=worker, budget=25)) for _ in range(4)]
    assert sizes == [10, 10, 5, 0]
    assert len(claim(mem, {"a": 0}, budget=25)) == 5  # another worker has its own budget
    mem.enqueue(["a"] * 15, [None] * 15)
    assert len(claim(mem, {"a": 0}, worker=worker, budget=0)) == 10  # 0 means no budget


def test_concurrency_limit_assigns_lowest_free_seats(mem):
    mem.enqueue(["lim"] * 5, [None] * 5)
    jobs = claim(mem, {"lim": EntrypointExecutionParameter(concurrency_limit=2)})
    assert [j.slot for j in jobs] == [0, 1]
    assert claim(mem, {"lim": 2}) == []
    mem.log_jobs([(jobs[0], "successful", None)])
    [next_job] = claim(mem, {"lim": 2})
    assert next_job.slot == jobs[0].slot == 0


def test_limited_and_unlimited_entrypoints_are_isolated(mem):
    mem.enqueue(["lim"] * 3 + ["free"] * 3, [None] * 6)
    jobs = claim(mem, {"lim": 1, "free": 0})
    assert sorted(j.entrypoint for j in jobs) == ["free", "free", "free", "lim"]


def test_held_and_retried_jobs_free_their_seat(mem):
    mem.enqueue(["lim"] * 3, [None] * 3)
    first, second = claim(mem, {"lim": 2})
    mem.log_jobs([(first, "failed", None)])
    mem.retry_job(second, timedelta(hours=1))
    assert [j.slot for j in claim(mem, {"lim": 2})] == [0]


def test_six_threads_claiming_concurrently_never_exceed_the_limit():
    driver = InMemoryDriver()
    setup = InMemoryQueries(driver, settings=DBSettings())
    setup.enqueue(["lim"] * 60, [None] * 60)
    workers = [InMemoryQueries(driver, settings=DBSettings()) for _ in range(6)]
    barrier = threading.Barrier(len(workers), timeout=10)

    def grab(queries):
        barrier.wait()
        return claim(queries, {"lim": 3}, batch=5)

    with ThreadPoolExecutor(len(workers)) as pool:
        for _ in range(10):
            claimed = [j for jobs in pool.map(grab, workers) for j in jobs]
            assert len(claimed) == 3
            assert sorted(j.slot for j in claimed) == [0, 1, 2]
            picked = {s.status: s.count for s in setup.queue_size()}.get("picked")
            assert picked == 3
            setup.log_jobs([(j, "successful", None) for j in claimed])
    assert setup.queued_work(["lim"]) == 30


def test_stale_repick_keeps_slot_and_attempts(mem, clock):
    mem.enqueue("lim", None)
    [job] = claim(mem, {"lim": 1})
    mem.retry_job(job, timedelta(0))
    [job] = claim(mem, {"lim": 1})
    assert job.attempts == 1
    clock.advance(HB - timedelta(milliseconds=1))
    assert claim(mem, {"lim": 1}) == []  # heartbeat not stale yet
    clock.advance(timedelta(milliseconds=1))
    other = uuid.uuid4()
    [again] = claim(mem, {"lim": 1}, worker=other)
    assert (again.id, again.slot, again.attempts) == (job.id, job.slot, 1)
    assert again.queue_manager_id == other and again.heartbeat > job.heartbeat
    assert [log.status for log in mem.queue_log()].count("picked") == 3


def test_heartbeat_keeps_a_job_from_going_stale(mem, clock):
    mem.enqueue(["a", "a"], [None, None])
    first, second = claim(mem, {"a": 0})
    clock.advance(timedelta(seconds=20))
    mem.update_heartbeat([first.id, first.id, 999])
    clock.advance(timedelta(seconds=15))
    assert [j.id for j in claim(mem, {"a": 0})] == [second.id]


def test_entrypoint_stale_after_overrides_heartbeat_timeout(mem, clock):
    mem.enqueue("a", None)
    claim(mem, {"a": 0})
    clock.advance(timedelta(seconds=6))
    quick = EntrypointExecutionParameter(stale_after=timedelta(seconds=5))
    assert len(claim(mem, {"a": 0})) == 0
    assert len(claim(mem, {"a": quick})) == 1


def test_stale_job_beats_lower_priority_fresh_work_and_counts_against_budget(mem, clock):
    [urgent] = mem.enqueue("a", None, priority=10)
    worker = uuid.uuid4()
    claim(mem, {"a": 0}, worker=worker)
    mem.enqueue(["a", "a"], [None, None], priority=1)
    clock.advance(timedelta(minutes=1))
    assert claim(mem, {"a": 0}, worker=worker, budget=1) == []  # its own stale row counts
    assert [j.id for j in claim(mem, {"a": 0}, batch=1)] == [urgent]


def test_dequeue_records_completed_jobs_seen_as_running_by_the_claim(mem):
    ids = mem.enqueue(["lim"] * 3, [None] * 3)
    worker = uuid.uuid4()
    first = mem.dequeue(10, {"lim": 1}, worker, None, HB)
    # As in the single SQL statement, the finished job still holds its seat here.
    assert (
        mem.dequeue(1, {"lim": 1}, worker, None, HB, completed=[(first[0], "successful", None)])
        == []
    )
    assert dict(mem.job_status(ids[:1])) == {ids[0]: "successful"}
    [job] = mem.dequeue(1, {"lim": 1}, worker, None, HB)
    assert job.slot == 0
    assert mem.dequeue(1, {}, worker, None, HB, completed=[(job, "failed", None)]) == []
    assert [j.id for j in mem.list_failed_jobs()] == [job.id]


# -- completion, retry, hold, cancel -------------------------------------------------------


def test_log_jobs_outcomes_and_tracebacks(mem):
    ids = mem.enqueue(["a"] * 3, [None] * 3)
    jobs = claim(mem, {"a": 0})
    try:
        raise ValueError("boom!")
    except ValueError as exc:
        record = TracebackRecord.from_exception(
            exc, job_id=jobs[1].id, additional_context={"entrypoint": "a"}
        )
    logged = mem.log_jobs(
        [(jobs[0], "successful", None), (jobs[1], "exception", record), (jobs[2], "failed", record)]
    )
    assert sorted(logged) == sorted(ids)
    [held] = mem.list_failed_jobs()
    assert (held.id, held.status, held.queue_manager_id) == (jobs[2].id, "failed", None)
    by_status = {log.status: log for log in mem.queue_log()}
    assert by_status["successful"].traceback is None
    stored = by_status["exception"].traceback
    assert stored.exception_type == "ValueError" and stored.exception_message == "boom!"
    assert "Traceback" in stored.traceback and stored.timestamp == record.timestamp
    assert mem.log_jobs([(jobs[0], "successful", None)]) == []  # row gone: nothing logged
    with pytest.raises(ConfigurationError, match="unknown job status"):
        mem.log_jobs([(jobs[2], "done", None)])


def test_hold_then_requeue_resets_attempts(mem):
    [job_id] = mem.enqueue("a", None)
    [job] = claim(mem, {"a": 0})
    mem.retry_job(job, timedelta(0))
    [job] = claim(mem, {"a": 0})
    mem.log_jobs([(job, "failed", None)])
    assert claim(mem, {"a": 0}) == []  # held rows are never claimed
    [held] = mem.list_failed_jobs()
    assert (held.id, held.status, held.attempts) == (job_id, "failed", 1)
    assert mem.requeue_jobs([job_id, 999_999]) == [job_id]
    assert mem.requeue_jobs([job_id]) == []  # no longer failed
    [again] = claim(mem, {"a": 0})
    assert again.attempts == 0
    assert mem.queue_log()[-2].traceback is None


def test_list_failed_jobs_order_and_limit(mem, clock):
    ids = mem.enqueue(["a"] * 3, [None] * 3)
    for job in claim(mem, {"a": 0}):
        clock.advance(1)
        mem.log_jobs([(job, "failed", None)])
    assert [j.id for j in mem.list_failed_jobs()] == ids[::-1]
    assert [j.id for j in mem.list_failed_jobs(2, "ASC")] == ids[:2]
    with pytest.raises(ConfigurationError, match="order"):
        mem.list_failed_jobs(order="sideways")


def test_retry_with_delay_is_claimable_only_after_the_clock_passes_it(frozen):
    queries = in_memory_queries(frozen)
    [job_id] = queries.enqueue("a", b"p", priority=3, headers={"h": 1})
    frozen.advance(timedelta(microseconds=1))
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
    frozen.advance(timedelta(seconds=60) - timedelta(microseconds=1))
    assert claim(queries, {"a": 0}) == []
    frozen.advance(timedelta(microseconds=1))
    [again] = claim(queries, {"a": 0})  # execute_after == NOW(): due (<=)
    assert (again.id, again.attempts, again.payload, again.priority) == (job_id, 1, b"p", 3)
    assert again.headers == {"h": 1}
    assert queries.retry_job(123456, timedelta(0)) is False


def test_release_jobs_hands_back_only_this_workers_picked_jobs(mem):
    ids = mem.enqueue(["a"] * 3, [None] * 3)
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    first = claim(mem, {"a": 0}, batch=2, worker=mine)
    claim(mem, {"a": 0}, worker=theirs)
    record = TracebackRecord.from_exception(RuntimeError("shutdown"), job_id=first[0].id)
    records = {first[0].id: record, ids[2]: record}
    assert mem.release_jobs(records, mine) == [first[0].id]
    assert mem.release_jobs({}, mine) == []
    assert mem.queued_work(["a"]) == 1
    assert mem.queue_log()[-1].traceback.exception_message == "shutdown"


def test_cancellation_removes_rows_and_notifies_listeners(mem):
    payloads = listen(mem)
    queued, picked = mem.enqueue(["a", "b"], [None, None])
    claim(mem, {"b": 0})
    del payloads[:]
    assert sorted(mem.mark_job_as_cancelled([queued, picked, 424242])) == [queued, picked]
    assert mem.queue_size() == []
    assert dict(mem.job_status([queued, picked])) == {queued: "canceled", picked: "canceled"}
    assert kinds(payloads) == [("table_changed_event", "delete"), ("cancellation_event", None)]
    cancel = json.loads(payloads[1])
    assert cancel["ids"] == [queued, picked, 424242]
    assert cancel["channel"] == "ch_pgqueuer" and cancel["sent_at"].endswith("Z")
    assert payloads[1] == payloads[1].replace(" ", "")  # compact, as pydantic dumps it
    event = parse_event(payloads[1])
    assert isinstance(event, CancellationEvent) and event.ids == [queued, picked, 424242]
    assert mem.mark_job_as_cancelled([]) == [] and len(payloads) == 2
    mem.notify_job_cancellation([7])
    assert json.loads(payloads[-1])["ids"] == [7]
    assert mem.queue_log()[-1].status == "canceled"  # no second log row for cancelled jobs


def test_health_check_is_sent_to_listeners(mem):
    payloads = listen(mem)
    probe = uuid.uuid4()
    mem.notify_health_check(probe)
    [payload] = payloads
    assert json.loads(payload)["type"] == "health_check_event"
    assert parse_event(payload).id == probe


# -- notifications -------------------------------------------------------------------------


def test_notifications_fire_on_insert_delete_truncate_and_on_requeues_not_claims(mem):
    payloads = listen(mem)
    [job_id] = mem.enqueue("a", None, dedupe_key="k")
    mem.enqueue("a", None, dedupe_key="k", on_conflict="skip")  # INSERT ran, nothing inserted
    with pytest.raises(DuplicateJobError):
        mem.enqueue("a", None, dedupe_key="k")  # failed statement: nothing sent
    assert kinds(payloads) == [("table_changed_event", "insert")] * 2
    del payloads[:]
    [job] = claim(mem, {"a": 0})
    mem.update_heartbeat([job_id])
    mem.requeue_jobs([job_id])  # not held: nothing changes, nothing sent
    mem.list_failed_jobs()
    mem.aggregate_logs()
    mem.insert_schedule({("s", "* * * * *"): timedelta(0)})
    assert payloads == []
    # A retry wakes idle workers (an UPDATE; the statement's DELETE part runs too).
    mem.retry_job(job, timedelta(0))
    assert kinds(payloads) == [("table_changed_event", op) for op in ("update", "delete")]
    del payloads[:]
    [job] = claim(mem, {"a": 0})
    assert payloads == []
    mem.log_jobs([(job, "failed", None)])  # a hold frees a seat: update (and the DELETE runs)
    mem.log_jobs([(job_id, "successful", None)])
    mem.clear_queue("nothing")
    mem.clear_queue()
    assert kinds(payloads) == [
        ("table_changed_event", op) for op in ("update",) + ("delete",) * 3 + ("truncate",)
    ]


def test_table_changed_payload_is_spelled_like_the_trigger(mem, clock):
    payloads = listen(mem)
    mem.enqueue("a", None)
    [payload] = payloads
    assert payload == (
        '{"channel" : "ch_pgqueuer", "operation" : "insert", '
        '"sent_at" : "2025-06-01T12:00:00+00:00", "table" : "pgqueuer", '
        '"type" : "table_changed_event"}'
    )
    event = parse_event(payload)
    assert isinstance(event, TableChangedEvent) and event.sent_at == T0
    prefixed = InMemoryQueries(mem.driver, settings=DBSettings(prefix="app_"))
    prefixed.clear_queue()
    assert json.loads(payloads[-1])["table"] == "app_pgqueuer"
    assert json.loads(payloads[-1])["channel"] == "app_ch_pgqueuer"


def test_listeners_unsubscribe_survive_errors_and_may_call_queries(mem, caplog):
    seen: list[int] = []

    def broken(payload):
        raise RuntimeError("listener bug")

    def reentrant(payload):
        if json.loads(payload).get("operation") == "insert":
            seen.append(mem.queued_work(["a"]))
            mem.notify_health_check(uuid.uuid4())  # sent from inside a delivery

    mem.driver.add_listener(broken)
    stop = mem.driver.add_listener(reentrant)
    payloads = listen(mem)
    mem.enqueue("a", None)
    assert seen == [1]
    assert kinds(payloads) == [("table_changed_event", "insert"), ("health_check_event", None)]
    assert "listener bug" in caplog.text
    stop()
    stop()  # idempotent
    mem.enqueue("a", None)
    assert seen == [1] and len(payloads) == 3


def test_notifications_from_many_threads_are_all_delivered(mem):
    payloads = listen(mem)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: mem.enqueue("a", None), range(200)))
    assert len(payloads) == 200
    assert mem.queued_work(["a"]) == 200


# -- inspection, cleanup, statistics -------------------------------------------------------


def test_queue_size_groups_and_orders_like_sql(mem):
    mem.enqueue(["b", "a", "a", "a"], [None] * 4, priority=[0, 1, 1, 0])
    claim(mem, {"b": 0})
    sizes = [(s.count, s.entrypoint, s.priority, s.status) for s in mem.queue_size()]
    assert sizes == [(1, "a", 0, "queued"), (1, "b", 0, "picked"), (2, "a", 1, "queued")]


def test_job_status_reports_latest_transition(mem):
    a, b = mem.enqueue(["a", "a"], [None, None])
    first, _ = claim(mem, {"a": 0})
    mem.log_jobs([(first, "successful", None)])
    assert mem.job_status([b, a, 99]) == [(a, "successful"), (b, "picked")]


def test_clear_queue_by_entrypoint_logs_deleted_and_truncate_does_not(mem):
    mem.enqueue(["a", "b"], [None, None])
    mem.clear_queue("a")
    assert [s.entrypoint for s in mem.queue_size()] == ["b"]
    assert [log.status for log in mem.queue_log()][-1] == "deleted"
    mem.clear_queue()
    assert mem.queue_size() == []
    assert len(mem.queue_log()) == 3
    mem.clear_queue_log("a")
    assert {log.entrypoint for log in mem.queue_log()} == {"b"}
    mem.clear_queue_log()
    assert mem.queue_log() == []
    assert mem.enqueue("c", None) == [3]  # TRUNCATE does not reset the sequence


def test_aggregation_counts_each_log_row_once(mem):
    mem.enqueue(["a"] * 3, [None] * 3)
    claim(mem, {"a": 0})
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: mem.aggregate_logs(), range(4)))
    mem.aggregate_logs()
    stats = mem.log_statistics(100)
    counts = {s.status: s.count for s in stats}
    assert counts == {"queued": 3, "picked": 3}
    assert all(log.aggregated for log in mem.queue_log())
    assert mem.log_statistics(100, last=timedelta(hours=1)) == stats
    assert mem.log_statistics(limit=1) == stats[:1]


def test_statistics_are_per_second_buckets_added_to_on_conflict(mem, clock):
    clock.set(T0 + timedelta(milliseconds=100))
    mem.enqueue("a", None)
    mem.aggregate_logs()
    clock.set(T0 + timedelta(milliseconds=900))
    mem.enqueue("a", None)
    clock.set(T0 + timedelta(seconds=2))
    mem.enqueue("a", None, priority=1)
    stats = mem.log_statistics()
    assert [(s.created, s.priority, s.count) for s in stats] == [
        (T0 + timedelta(seconds=2), 1, 1),
        (T0, 0, 2),
    ]
    clock.advance(timedelta(hours=1))
    assert mem.log_statistics(last=timedelta(minutes=30)) == []
    mem.clear_statistics_log("b")
    assert len(mem.log_statistics()) == 2
    mem.clear_statistics_log("a")
    assert mem.log_statistics() == []


# -- schedules -----------------------------------------------------------------------------


def test_schedules_register_once_and_claim_when_due(frozen):
    queries = in_memory_queries(frozen)
    frozen.set(T0 + timedelta(milliseconds=400))
    every_minute = {("report", "* * * * *"): timedelta(seconds=30)}
    queries.insert_schedule(every_minute)
    queries.insert_schedule({**every_minute, ("cleanup", "0 * * * *"): timedelta(minutes=5)})
    assert [(s.id, s.entrypoint) for s in queries.peek_schedule()] == [
        (1, "report"),
        (3, "cleanup"),
    ]
    [report, _] = queries.peek_schedule()
    assert report.next_run == T0 + timedelta(seconds=30) and report.status == "queued"
    assert queries.fetch_schedule(every_minute) == []
    frozen.set(T0 + timedelta(seconds=30))
    [claimed] = queries.fetch_schedule({**every_minute, ("other", "* * * * *"): timedelta(0)})
    assert (claimed.id, claimed.status) == (1, "picked")
    assert claimed.next_run == T0 + timedelta(seconds=60)
    assert queries.fetch_schedule(every_minute) == []  # picked: not claimed twice
    queries.set_schedule_queued([claimed.id])
    [released, _] = queries.peek_schedule()
    assert (released.status, released.last_run) == ("queued", T0 + timedelta(seconds=30))
    assert queries.fetch_schedule({}) == []


def test_a_schedule_whose_heartbeat_is_over_30s_old_is_claimed_again(frozen):
    queries = in_memory_queries(frozen)
    entry = {("report", "* * * * *"): timedelta(hours=1)}
    queries.insert_schedule({("report", "* * * * *"): timedelta(0)})
    [first] = queries.fetch_schedule(entry)
    frozen.advance(timedelta(seconds=20))
    queries.update_schedule_heartbeat([first.id, first.id])
    frozen.advance(timedelta(seconds=30))
    assert queries.fetch_schedule(entry) == []  # exactly 30 s: not stale yet
    frozen.advance(timedelta(microseconds=1))
    [again] = queries.fetch_schedule(entry)
    assert again.id == first.id and again.heartbeat == frozen.peek()


def test_delete_and_clear_schedules(mem):
    mem.insert_schedule(
        {
            ("a", "* * * * *"): timedelta(0),
            ("b", "* * * * *"): timedelta(0),
            ("c", "0 * * * *"): timedelta(0),
        }
    )
    mem.delete_schedule(ids=[1], entrypoints=["c"])
    assert [s.entrypoint for s in mem.peek_schedule()] == ["b"]
    mem.delete_schedule()
    assert len(mem.peek_schedule()) == 1
    mem.clear_schedule()
    assert mem.peek_schedule() == []


# -- parity with PostgreSQL ----------------------------------------------------------------


def scenario(q):
    """One scripted run; returns everything observable, for both implementations."""
    out: dict[str, object] = {}
    worker = uuid.UUID(int=1)
    eps = {"a": 0, "b": 0, "lim": EntrypointExecutionParameter(concurrency_limit=2)}
    out["ids"] = q.enqueue(
        ["a", "a", "b", "lim", "lim", "lim"],
        [b"1", b"2", b"3", b"4", b"5", b"6"],
        [0, 5, 5, 1, 1, 1],
        headers=[{"n": 1}, None, None, None, None, None],
    )
    out["dedupe"] = q.enqueue("a", None, dedupe_key="k")
    out["skip"] = q.enqueue(["a", "a"], [None, None], dedupe_key=["k", "z"], on_conflict="skip")
    out["update"] = q.enqueue("a", None, 9, dedupe_key="k", on_conflict="update_priority")
    try:
        q.enqueue(["a", "a"], [None, None], dedupe_key=["new", "k"])
    except DuplicateJobError as exc:
        out["duplicate"] = exc.dedupe_key
    out["deferred"] = q.enqueue("a", None, execute_after=timedelta(hours=1))

    def view(jobs):
        return [
            (j.id, j.entrypoint, j.slot, j.attempts, j.status, j.payload, j.headers) for j in jobs
        ]

    first = q.dequeue(4, eps, worker, None, HB)
    second = q.dequeue(10, eps, worker, 7, HB)
    out["first"], out["second"] = view(first), view(second)
    q.log_jobs([(first[0], "successful", None), (first[1], "failed", None)])
    out["retry"] = q.retry_job(second[0], timedelta(hours=1))
    out["requeue"] = q.requeue_jobs([first[1].id, 12345])
    out["cancel"] = sorted(q.mark_job_as_cancelled([second[1].id, 999]))
    third = q.dequeue(10, eps, uuid.UUID(int=2), None, HB)
    out["third"] = view(third)
    q.log_jobs([(third[-1], "failed", None)])
    q.clear_queue("b")
    out["failed"] = [j.id for j in q.list_failed_jobs()]
    out["size"] = [(s.count, s.entrypoint, s.priority, s.status) for s in q.queue_size()]
    all_ids = range(1, 20)
    out["status"] = q.job_status(all_ids)
    out["log"] = Counter((log.job_id, log.status) for log in q.queue_log())
    out["work"] = (q.queued_work(["a", "lim"]), q.eligible_queued_work(["a", "lim"]))
    stats: Counter[tuple[str, str]] = Counter()
    for bucket in q.log_statistics():
        stats[(bucket.entrypoint, bucket.status)] += bucket.count
    out["stats"] = stats
    q.insert_schedule({("s", "* * * * *"): timedelta(0)})
    q.insert_schedule({("s", "* * * * *"): timedelta(0), ("t", "0 * * * *"): timedelta(0)})
    out["schedules"] = [(s.id, s.entrypoint, s.status) for s in q.peek_schedule()]
    return out


def test_parity_with_postgresql(queries, connect):
    listener = connect()
    listener.execute("LISTEN ch_pgqueuer")
    real = scenario(queries)
    real_events = kinds(n.payload for n in listener.notifies(timeout=1.0))

    clock = ManualClock(tick=timedelta(milliseconds=1))
    fake_queries = InMemoryQueries(InMemoryDriver(clock=clock), settings=DBSettings())
    fake_events = listen(fake_queries)
    fake = scenario(fake_queries)

    assert fake == real
    assert kinds(fake_events) == real_events
    assert real["first"] and real["third"] and real["failed"]  # the script exercised paths
