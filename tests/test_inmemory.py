"""The in-memory adapter's own mechanics: its clock, its lock, its listeners, its API.

Behaviour it shares with PostgreSQL (claims, dedupe, holds, retries,
cancellation, statistics, schedules...) is tested over both adapters in
tests/test_adapters.py; the tests here need the injected clock (exact time
boundaries) or exercise what only the in-memory adapter has.
"""

from __future__ import annotations

import inspect
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from pgqueue_sync import (
    ConfigurationError,
    DBSettings,
    Queries,
    TracebackRecord,
)
from pgqueue_sync.models import TableChangedEvent, parse_event
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


# The drop-in contract and the helpers of pgqueue_sync.testing


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


# Time as the injected clock tells it (exact boundaries)


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


# One lock and the listener plumbing


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
