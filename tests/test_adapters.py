"""One behavioural suite over both queue adapters: PostgreSQL and the in-memory one.

Every test runs twice, ``[postgresql]`` (:class:`~pgqueue_sync.Queries` on a real
database) and ``[memory]`` (:class:`~pgqueue_sync.testing.InMemoryQueries`):
what it asserts is what a user may rely on from either. Where the in-memory
adapter behaves differently its run is a strict xfail naming the difference
(:func:`memory_differs`). The in-memory adapter's own mechanics (its manual
clock, its listener plumbing, its API parity) are tested in tests/test_inmemory.py.

Time-dependent behaviour uses ``execute_after`` in the past or future, or short
timeouts that a test polls for; nothing sleeps a fixed time.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from pgqueue_sync import (
    CancellationEvent,
    ConfigurationError,
    DatabaseError,
    DuplicateJobError,
    EntrypointExecutionParameter,
    TableChangedEvent,
    TracebackRecord,
)
from pgqueue_sync.errors import UniqueViolation
from pgqueue_sync.models import TableHealth, parse_event
from pgqueue_sync.queries import NOTIFY_PAYLOAD_LIMIT, PollState

from .adapter_helpers import HB, Adapter, MemoryAdapter, PostgresAdapter, claim, kinds
from .conftest import create_database, drop_database
from .worker_helpers import wait_for

#: A stale-job timeout short enough for a test to wait it out.
SHORT = timedelta(milliseconds=100)
ADAPTERS = ["postgresql", "memory"]


def memory_differs(reason: str) -> pytest.MarkDecorator:
    """Run a test on both adapters, the in-memory run as a strict xfail: ``reason``
    says what the in-memory adapter does differently from PostgreSQL."""
    memory = pytest.param(
        "memory", marks=pytest.mark.xfail(strict=True, reason=f"in-memory adapter: {reason}")
    )
    return pytest.mark.parametrize("adapter", ["postgresql", memory], indirect=True)


@pytest.fixture(scope="module")
def adapter_dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """One database for this module's PostgreSQL runs, emptied before each test."""
    name = f"pgqs_a_{uuid.uuid4().hex[:12]}"
    dsn = create_database(server_dsn, name, template=template_db)
    try:
        yield dsn
    finally:
        drop_database(server_dsn, name)


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> Iterator[Adapter]:
    """An empty queue store of each kind."""
    made: Adapter
    if request.param == "memory":
        made = MemoryAdapter()
    else:
        made = PostgresAdapter(request.getfixturevalue("adapter_dsn"))
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def queries(adapter: Adapter) -> Any:
    """The adapter's ``Queries``-like object."""
    return adapter.queries


def fail(queries: Any, job: Any, record: TracebackRecord | None = None) -> None:
    """Hold a picked job as ``failed``."""
    queries.log_jobs([(job, "failed", record)])


def record_of(message: str, job_id: int) -> TracebackRecord:
    """The record of a raised ``ValueError(message)``, as a worker logs it."""
    try:
        raise ValueError(message)
    except ValueError as exc:
        return TracebackRecord.from_exception(exc, job_id=job_id)


def wait_until_stale(queries: Any, entrypoint: str, timeout: timedelta) -> None:
    """Poll until a picked job of ``entrypoint`` is older than ``timeout``."""

    def stale() -> bool:
        eta = queries.poll_state([entrypoint], timeout).stale_eta
        return eta is not None and eta < timedelta(0)

    wait_for(stale, what=f"a stale {entrypoint!r} job")


# Enqueue and claim


def test_dequeue_orders_by_priority_then_id(queries):
    ids = queries.enqueue(["a", "a", "b", "a"], [b"0", b"1", b"2", b"3"], [0, 5, 5, 0])
    jobs = claim(queries, {"a": 0, "b": 0})
    assert [j.id for j in jobs] == [ids[1], ids[2], ids[0], ids[3]]
    assert all(j.status == "picked" for j in jobs)
    assert [j.payload for j in jobs] == [b"1", b"2", b"0", b"3"]


def test_dequeue_claims_only_registered_entrypoints_up_to_the_batch_size(queries):
    queries.enqueue(["a"] * 5 + ["b"] * 5, [None] * 10)
    assert claim(queries, {}) == []
    first = claim(queries, {"a": 0}, batch=3)
    assert [j.entrypoint for j in first] == ["a"] * 3
    assert len(claim(queries, {"a": 0, "b": 0}, batch=100)) == 7
    with pytest.raises(ConfigurationError, match="batch_size"):
        claim(queries, {"a": 0}, batch=0)
    with pytest.raises(ConfigurationError, match="concurrency_limit"):
        claim(queries, {"a": -1})


def test_claim_marks_jobs_picked_by_the_worker_and_logs_it(queries):
    [job_id] = queries.enqueue("a", None)
    worker = uuid.uuid4()
    [job] = claim(queries, {"a": 0}, worker=worker)
    assert job.queue_manager_id == worker and job.slot is None and job.attempts == 0
    assert job.created < job.heartbeat == job.updated
    statuses = [(log.job_id, log.status) for log in queries.queue_log()]
    assert statuses == [(job_id, "queued"), (job_id, "picked")]


def test_enqueue_rejects_bad_input_and_writes_nothing(queries):
    bad: list[tuple[dict[str, Any], str]] = [
        ({"entrypoint": ["a", "b"], "payload": [None]}, "equal length"),
        ({"payload": "text"}, "encode it first"),
        ({"execute_after": datetime.now()}, "no timezone"),
        ({"execute_after": "soon"}, "execute_after"),
        ({"on_conflict": "ignore"}, "on_conflict"),
        ({"entrypoint": ""}, "non-empty string"),
        ({"priority": 2**31}, "does not fit"),
        ({"priority": True}, "priority must be an int"),
        ({"dedupe_key": 5}, "dedupe_key must be a string"),
        ({"headers": ["x"]}, "headers must be a mapping"),
        ({"headers": {"x": float("nan")}}, "plain JSON"),
        ({"headers": {"x": "a\x00b"}}, "NUL"),
    ]
    for arguments, message in bad:
        call = {"entrypoint": "a", "payload": None, **arguments}
        with pytest.raises(ConfigurationError, match=message):
            queries.enqueue(**call)
    assert queries.queue_size() == [] and queries.queue_log() == []


def test_batch_enqueue_is_atomic_on_a_duplicate_and_skips_ids(queries):
    assert queries.enqueue("a", None, dedupe_key="taken") == [1]
    with pytest.raises(DuplicateJobError) as info:
        queries.enqueue(["a", "a", "a"], [None] * 3, dedupe_key=["new1", "taken", "new2"])
    assert info.value.dedupe_key == ["new1", "taken", "new2"]
    assert sum(s.count for s in queries.queue_size()) == 1
    assert len(queries.queue_log()) == 1
    with pytest.raises(DuplicateJobError):
        queries.enqueue(["a", "a"], [None] * 2, dedupe_key=["same", "same"])
    assert queries.enqueue("a", None) == [7]  # like nextval(): rejected rows leave gaps


def test_dedupe_skip_returns_none_for_duplicates_and_logs_only_inserted_jobs(queries):
    [first] = queries.enqueue("a", None, dedupe_key="k")
    result = queries.enqueue(
        ["a"] * 4, [None] * 4, dedupe_key=["k", None, "m", "m"], on_conflict="skip"
    )
    assert result == [None, 3, 4, None]
    assert len(queries.queue_log()) == 3
    assert first not in result


def test_dedupe_update_priority_raises_the_existing_job_without_logging(queries):
    [job_id] = queries.enqueue("a", None, priority=1, dedupe_key="k")
    for priority in (7, 3):
        again = queries.enqueue(
            "a", None, priority=priority, dedupe_key="k", on_conflict="update_priority"
        )
        assert again == [job_id]
    [stats] = queries.queue_size()
    assert stats.priority == 7 and stats.count == 1
    assert len(queries.queue_log()) == 1
    with pytest.raises(ConfigurationError, match="same dedupe_key twice"):
        queries.enqueue(
            ["a", "a"], [None, None], dedupe_key=["x", "x"], on_conflict="update_priority"
        )


def test_dedupe_key_is_released_by_hold_and_taken_back_by_requeue(queries):
    [held_id] = queries.enqueue("a", None, dedupe_key="k")
    [job] = claim(queries, {"a": 0})
    fail(queries, job)
    [newer] = queries.enqueue("a", None, dedupe_key="k")
    with pytest.raises(UniqueViolation) as info:
        queries.requeue_jobs([held_id])
    assert info.value.constraint_name == "pgqueuer_unique_dedupe_key"
    assert [j.id for j in queries.list_failed_jobs()] == [held_id]  # nothing changed
    queries.mark_job_as_cancelled([newer])
    assert queries.requeue_jobs([held_id]) == [held_id]


def test_dedupe_key_is_free_again_once_its_job_is_done(queries):
    queries.enqueue("a", None, dedupe_key="k")
    [job] = claim(queries, {"a": 0})
    with pytest.raises(DuplicateJobError):
        queries.enqueue("a", None, dedupe_key="k")  # picked jobs keep their key
    queries.log_jobs([(job, "successful", None)])
    [again] = queries.enqueue("a", None, dedupe_key="k")
    assert again != job.id


def test_headers_round_trip_default_none_and_stay_detached(queries):
    given = {"otel": {"traceparent": "00-abc-def-01"}, "n": 1}
    queries.enqueue("a", None, headers=given)
    queries.enqueue("a", None)
    given["n"] = 2
    jobs = claim(queries, {"a": 0})
    assert jobs[0].headers == {"otel": {"traceparent": "00-abc-def-01"}, "n": 1}
    assert jobs[0].otel_headers() == {"traceparent": "00-abc-def-01"}
    assert jobs[1].headers is None and jobs[1].otel_headers() is None
    jobs[0].headers["otel"]["traceparent"] = "changed"
    queries.update_heartbeat([jobs[0].id])
    fail(queries, jobs[0])
    assert queries.list_failed_jobs()[0].headers["otel"] == {"traceparent": "00-abc-def-01"}


def test_headers_keep_their_json_values(queries):
    headers = {"text": 'é ✓ "quoted"', "list": [1, 2.5, None, True], "big": 2**70, "e": 1e-7}
    queries.enqueue("a", None, headers=headers)
    [job] = claim(queries, {"a": 0})
    assert job.headers == headers


@pytest.mark.parametrize("name", ['we"ird {name}, \\ NULL', "NULL", "émoji ✓", "a'b"])
def test_awkward_entrypoints_and_dedupe_keys_round_trip(queries, name):
    queries.enqueue(name, None, dedupe_key=name)
    with pytest.raises(DuplicateJobError):
        queries.enqueue(name, None, dedupe_key=name)
    assert [s.entrypoint for s in queries.queue_size()] == [name]
    [job] = claim(queries, {name: 0})
    assert job.entrypoint == name


def test_payloads_come_back_as_the_bytes_given(queries):
    payloads = [b"", b"\x00\xff raw", bytearray(b"array"), memoryview(b"view"), None]
    queries.enqueue(["a"] * len(payloads), payloads)
    jobs = claim(queries, {"a": 0})
    assert [j.payload for j in jobs] == [b"", b"\x00\xff raw", b"array", b"view", None]


def test_execute_after_in_the_future_defers_and_in_the_past_is_due_now(queries):
    now = datetime.now(timezone.utc)
    deferred = queries.enqueue(
        ["a", "a"], [None, None], execute_after=[timedelta(hours=1), now + timedelta(hours=2)]
    )
    due = queries.enqueue(
        ["a", "a", "a"], [None] * 3, execute_after=[now - timedelta(hours=1), -5.0, None]
    )
    assert queries.eligible_queued_work(["a"]) == 3
    assert [j.id for j in claim(queries, {"a": 0})] == due
    assert queries.queued_work(["a"]) == 2 and queries.queued_work(["b"]) == 0
    assert queries.eligible_queued_work(["a"]) == 0
    eta = queries.next_deferred_eta(["a"])
    assert timedelta(minutes=59) < eta <= timedelta(hours=1)
    state = queries.poll_state(["a"])
    assert (state.eligible, state.queued) == (False, True)
    assert timedelta(minutes=59) < state.eta <= timedelta(hours=1)
    assert timedelta(seconds=29) < state.stale_eta <= HB  # the picked jobs, fresh
    assert queries.poll_state(["b"]) == PollState(eligible=False, eta=None, queued=False)
    assert queries.job_status(deferred) == [(i, "queued") for i in deferred]


# Claim limits, budgets and stale jobs


def test_per_worker_budget_caps_claims(queries):
    queries.enqueue(["a"] * 30, [None] * 30)
    worker = uuid.uuid4()
    sizes = [len(claim(queries, {"a": 0}, worker=worker, budget=25)) for _ in range(4)]
    assert sizes == [10, 10, 5, 0]
    assert len(claim(queries, {"a": 0}, budget=25)) == 5  # another worker has its own budget
    queries.enqueue(["a"] * 15, [None] * 15)
    assert len(claim(queries, {"a": 0}, worker=worker, budget=0)) == 10  # 0 means no budget


def test_concurrency_limit_assigns_lowest_free_seats(queries):
    queries.enqueue(["lim"] * 5, [None] * 5)
    jobs = claim(queries, {"lim": EntrypointExecutionParameter(concurrency_limit=2)})
    assert [j.slot for j in jobs] == [0, 1]
    assert claim(queries, {"lim": 2}) == []
    queries.log_jobs([(jobs[0], "successful", None)])
    [next_job] = claim(queries, {"lim": 2})
    assert next_job.slot == jobs[0].slot == 0


def test_limited_and_unlimited_entrypoints_are_isolated(queries):
    queries.enqueue(["lim"] * 3 + ["free"] * 3, [None] * 6)
    jobs = claim(queries, {"lim": 1, "free": 0})
    assert sorted(j.entrypoint for j in jobs) == ["free", "free", "free", "lim"]


def test_held_and_retried_jobs_free_their_seat(queries):
    queries.enqueue(["lim"] * 3, [None] * 3)
    first, second = claim(queries, {"lim": 2})
    fail(queries, first)
    queries.retry_job(second, timedelta(hours=1))
    assert [j.slot for j in claim(queries, {"lim": 2})] == [0]


def test_sessions_claiming_at_once_never_exceed_the_limit(adapter):
    adapter.queries.enqueue(["lim"] * 40, [None] * 40)
    sessions = [adapter.session() for _ in range(4)]
    barrier = threading.Barrier(len(sessions), timeout=10)

    def grab(session: Any) -> list[Any]:
        barrier.wait()
        return claim(session, {"lim": 3}, batch=5)

    done = 0
    with ThreadPoolExecutor(len(sessions)) as pool:
        for _ in range(5):
            claimed = [j for jobs in pool.map(grab, sessions) for j in jobs]
            # A session that loses a seat race gets an empty batch: a round may claim fewer.
            slots = sorted(j.slot for j in claimed)
            assert len(claimed) <= 3 and slots == sorted(set(slots)) and set(slots) <= {0, 1, 2}
            adapter.queries.log_jobs([(j, "successful", None) for j in claimed])
            done += len(claimed)
    assert done > 0 and adapter.queries.queued_work(["lim"]) == 40 - done


def test_a_stale_job_is_picked_again_keeping_its_seat_and_attempts(queries):
    queries.enqueue("lim", None)
    [job] = claim(queries, {"lim": 1})
    queries.retry_job(job, timedelta(0))
    [job] = claim(queries, {"lim": 1})
    assert job.attempts == 1
    assert claim(queries, {"lim": 1}) == []  # heartbeat fresh
    other = uuid.uuid4()
    [again] = wait_for(lambda: claim(queries, {"lim": 1}, worker=other, timeout=SHORT))
    assert (again.id, again.slot, again.attempts) == (job.id, job.slot, 1)
    assert again.queue_manager_id == other and again.heartbeat > job.heartbeat
    assert [log.status for log in queries.queue_log()].count("picked") == 3


def test_a_heartbeat_keeps_a_job_from_going_stale(queries):
    timeout = timedelta(milliseconds=250)
    queries.enqueue(["a", "a"], [None, None])
    first, second = claim(queries, {"a": 0})
    wait_until_stale(queries, "a", timeout)
    queries.update_heartbeat([first.id, first.id, 999])
    assert [j.id for j in claim(queries, {"a": 0}, timeout=timeout)] == [second.id]


def test_entrypoint_stale_after_overrides_the_heartbeat_timeout(queries):
    queries.enqueue("a", None)
    claim(queries, {"a": 0})
    patient = EntrypointExecutionParameter(stale_after=timedelta(hours=1))
    wait_until_stale(queries, "a", SHORT)
    assert claim(queries, {"a": 0}) == []
    assert claim(queries, {"a": patient}, timeout=SHORT) == []
    assert queries.poll_state({"a": patient}, SHORT).stale_eta > timedelta(minutes=59)
    quick = EntrypointExecutionParameter(stale_after=SHORT)
    assert len(claim(queries, {"a": quick})) == 1


def test_a_stale_job_beats_lower_priority_fresh_work_and_counts_against_budget(queries):
    [urgent] = queries.enqueue("a", None, priority=10)
    worker = uuid.uuid4()
    claim(queries, {"a": 0}, worker=worker)
    queries.enqueue(["a", "a"], [None, None], priority=1)
    wait_until_stale(queries, "a", SHORT)
    assert claim(queries, {"a": 0}, worker=worker, budget=1, timeout=SHORT) == []
    assert [j.id for j in claim(queries, {"a": 0}, batch=1, timeout=SHORT)] == [urgent]


def test_include_stale_false_leaves_stale_jobs_to_a_later_claim(queries):
    [stale_id] = queries.enqueue("a", None)
    claim(queries, {"a": 0})
    wait_until_stale(queries, "a", SHORT)
    worker = uuid.uuid4()
    assert queries.dequeue(10, {"a": 0}, worker, None, SHORT, include_stale=False) == []
    [again] = queries.dequeue(10, {"a": 0}, worker, None, SHORT)
    assert again.id == stale_id


def test_dequeue_records_completed_jobs_seen_as_running_by_the_claim(queries):
    ids = queries.enqueue(["lim"] * 3, [None] * 3)
    worker = uuid.uuid4()
    first = queries.dequeue(10, {"lim": 1}, worker, None, HB)
    # As in the single SQL statement, the finished job still holds its seat here.
    done = [(first[0], "successful", None)]
    assert queries.dequeue(1, {"lim": 1}, worker, None, HB, completed=done) == []
    assert dict(queries.job_status(ids[:1])) == {ids[0]: "successful"}
    [job] = queries.dequeue(1, {"lim": 1}, worker, None, HB)
    assert job.slot == 0
    held = [(job, "failed", None)]
    assert queries.dequeue(1, {}, worker, None, HB, completed=held) == []
    assert [j.id for j in queries.list_failed_jobs()] == [job.id]


def test_dequeue_records_retries_in_the_same_call(queries):
    [job_id] = queries.enqueue("a", None)
    worker = uuid.uuid4()
    [job] = queries.dequeue(1, {"a": 0}, worker, None, HB)
    retry = [(job, timedelta(0), record_of("again", job_id))]
    assert queries.dequeue(1, {"a": 0}, worker, None, HB, retries=retry) == []
    [again] = claim(queries, {"a": 0})
    assert (again.id, again.attempts) == (job_id, 1)


# Completion: outcomes, holds, retries, releases


def test_log_jobs_outcomes_and_tracebacks(queries):
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
    [held] = queries.list_failed_jobs()
    assert (held.id, held.status, held.queue_manager_id) == (jobs[2].id, "failed", None)
    by_status = {log.status: log for log in queries.queue_log()}
    assert by_status["successful"].traceback is None
    stored = by_status["exception"].traceback
    assert stored.exception_type == "ValueError" and stored.exception_message == "boom!"
    assert "Traceback" in stored.traceback and stored.timestamp == record.timestamp
    assert stored.additional_context == {"entrypoint": "a"}
    assert queries.log_jobs([(jobs[0], "successful", None)]) == []  # row gone: nothing logged
    with pytest.raises(ConfigurationError, match="unknown job status"):
        queries.log_jobs([(jobs[2], "done", None)])
    with pytest.raises(ConfigurationError, match="not an outcome"):
        queries.log_jobs([(jobs[2], "queued", None)])


def test_a_worker_records_only_jobs_it_still_holds(queries):
    queries.enqueue(["a", "a"], [None, None])
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    [my_job] = claim(queries, {"a": 0}, batch=1, worker=mine)
    [their_job] = claim(queries, {"a": 0}, batch=1, worker=theirs)
    outcomes = [(my_job, "successful", None), (their_job, "successful", None)]
    assert queries.log_jobs(outcomes, queue_manager_id=mine) == [my_job.id]
    assert queries.log_jobs(outcomes, queue_manager_id=mine) == []  # sent twice: no change
    assert queries.retry_job(their_job, timedelta(0), queue_manager_id=mine) is False
    assert queries.job_status([their_job.id]) == [(their_job.id, "picked")]
    assert queries.retry_job(their_job, timedelta(0), queue_manager_id=theirs) is True


def test_a_guarded_heartbeat_touches_only_the_workers_own_jobs(queries):
    queries.enqueue("a", None)
    mine = uuid.uuid4()
    [job] = claim(queries, {"a": 0}, worker=mine)
    wait_until_stale(queries, "a", SHORT)
    queries.update_heartbeat([job.id], queue_manager_id=uuid.uuid4())
    assert queries.poll_state(["a"], SHORT).stale_eta < timedelta(0)  # still stale
    queries.update_heartbeat([job.id], queue_manager_id=mine)
    assert queries.poll_state(["a"], HB).stale_eta > timedelta(seconds=29)


def test_hold_then_requeue_resets_attempts(queries):
    [job_id] = queries.enqueue("a", None)
    [job] = claim(queries, {"a": 0})
    queries.retry_job(job, timedelta(0))
    [job] = claim(queries, {"a": 0})
    fail(queries, job)
    assert claim(queries, {"a": 0}) == []  # held rows are never claimed
    [held] = queries.list_failed_jobs()
    assert (held.id, held.status, held.attempts) == (job_id, "failed", 1)
    assert queries.requeue_jobs([job_id, 999_999]) == [job_id]
    assert queries.requeue_jobs([job_id]) == []  # no longer failed
    [again] = claim(queries, {"a": 0})
    assert again.attempts == 0
    assert queries.queue_log()[-2].traceback is None


def test_list_failed_jobs_order_and_limit(queries):
    ids = queries.enqueue(["a"] * 3, [None] * 3)
    for job in claim(queries, {"a": 0}):
        fail(queries, job)
    assert [j.id for j in queries.list_failed_jobs()] == ids[::-1]
    assert [j.id for j in queries.list_failed_jobs(2, "ASC")] == ids[:2]
    with pytest.raises(ConfigurationError, match="order"):
        queries.list_failed_jobs(order="sideways")
    with pytest.raises(DatabaseError) as info:
        queries.list_failed_jobs(-1)
    assert info.value.sqlstate == "2201W"


def test_a_retried_job_waits_its_delay_then_comes_back_with_one_more_attempt(queries):
    later, soon = queries.enqueue(["a", "a"], [b"l", b"s"], priority=[3, 3], headers={"h": 1})
    jobs = claim(queries, {"a": 0})
    context = {"attempt": 0, "retry_delay": "1:00:00", "reason": "x"}
    record = TracebackRecord.from_exception(
        RuntimeError("later"), job_id=later, additional_context=context
    )
    assert queries.retry_job(jobs[0], timedelta(hours=1), record) is True
    last = queries.queue_log()[-1]
    assert (last.job_id, last.status) == (later, "queued")
    assert last.traceback.additional_context == context
    assert queries.retry_job(jobs[1], timedelta(milliseconds=50)) is True
    [again] = wait_for(lambda: claim(queries, {"a": 0}))
    assert (again.id, again.attempts, again.payload, again.priority) == (soon, 1, b"s", 3)
    assert again.headers == {"h": 1}
    assert again.execute_after >= jobs[1].updated + timedelta(milliseconds=50)
    assert timedelta(minutes=59) < queries.next_deferred_eta(["a"]) <= timedelta(hours=1)
    assert queries.retry_job(123456, timedelta(0)) is False


def test_release_jobs_hands_back_only_this_workers_picked_jobs(queries):
    ids = queries.enqueue(["a"] * 3, [None] * 3)
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    first = claim(queries, {"a": 0}, batch=2, worker=mine)
    claim(queries, {"a": 0}, worker=theirs)
    record = TracebackRecord.from_exception(RuntimeError("shutdown"), job_id=first[0].id)
    records = {first[0].id: record, ids[2]: record}
    assert queries.release_jobs(records, mine) == [first[0].id]
    assert queries.release_jobs({}, mine) == []
    assert queries.queued_work(["a"]) == 1
    assert queries.queue_log()[-1].traceback.exception_message == "shutdown"
    [again] = claim(queries, {"a": 0})  # due at once, attempts unchanged
    assert (again.id, again.attempts) == (first[0].id, 0)


def test_last_errors_gives_each_jobs_newest_failure_record(queries):
    held, retried, clean, done = queries.enqueue(["a"] * 4, [None] * 4)
    jobs = {j.id: j for j in claim(queries, {"a": 0})}
    fail(queries, jobs[held], record_of("held", held))
    queries.retry_job(jobs[retried], timedelta(0), record_of("first", retried))
    [job] = claim(queries, {"a": 0})
    queries.retry_job(job, timedelta(hours=1), record_of("second", retried))
    fail(queries, jobs[clean])
    queries.log_jobs([(jobs[done], "exception", record_of("gone", done))])
    errors = queries.last_errors([held, retried, clean, done, 999])
    assert sorted(errors) == [held, retried]
    assert (errors[held].status, errors[held].summary) == ("failed", "ValueError: held")
    assert (errors[retried].status, errors[retried].summary) == ("queued", "ValueError: second")
    assert errors[held].record.job_id == held
    assert queries.last_errors([]) == {}


# Bulk actions


def test_bulk_requeue_walks_the_planned_held_jobs_in_batches(queries):
    queries.enqueue(["a", "a", "a", "b", "a"], [None] * 5)
    jobs = claim(queries, {"a": 0, "b": 0})
    for job in jobs[:4]:
        queries.retry_job(job, timedelta(0))
    for job in claim(queries, {"a": 0, "b": 0}, batch=4):
        fail(queries, job)
    plan = queries.plan_bulk("requeue")
    assert (plan.count, plan.last_id, plan.entrypoints) == (4, 4, None)
    fail(queries, jobs[4])  # held after the plan: left alone
    counts: list[int] = []
    result = queries.run_bulk(plan, batch_size=3, on_batch=counts.append)
    assert (result.action, result.done, result.batches, result.kept) == ("requeue", 4, 2, 0)
    assert counts == [3, 1] and result.ids == (1, 2, 3, 4)
    assert result.by_entrypoint == {"a": 3, "b": 1}
    assert [j.id for j in queries.list_failed_jobs()] == [jobs[4].id]
    assert {j.attempts for j in claim(queries, {"a": 0, "b": 0})} == {0}


def test_bulk_requeue_keeps_a_held_job_whose_dedupe_key_is_taken(queries):
    [held] = queries.enqueue("a", None, dedupe_key="k")
    fail(queries, claim(queries, {"a": 0})[0])
    queries.enqueue("a", None, dedupe_key="k")
    plan = queries.plan_bulk("requeue", entrypoints="a")
    result = queries.run_bulk(plan)
    assert (plan.count, result.done, result.kept) == (1, 0, 1)
    assert [j.id for j in queries.list_failed_jobs()] == [held]


def test_bulk_cancel_and_purge_touch_only_their_statuses(adapter, queries):
    events = adapter.events()
    queued, picked, held, deferred, other = queries.enqueue(
        ["a"] * 5, [None] * 5, execute_after=[None, None, None, timedelta(hours=1), None]
    )
    jobs = claim(queries, {"a": 0})
    fail(queries, jobs[2])
    for job in (jobs[0], jobs[3]):
        queries.release_jobs({job.id: record_of("back", job.id)}, job.queue_manager_id)
    purge = queries.plan_bulk("purge", entrypoints=["a", "a"])
    assert (purge.count, purge.entrypoints) == (3, ("a",))
    assert queries.run_bulk(purge).ids == (queued, deferred, other)
    assert dict(queries.job_status([queued, deferred])) == {queued: "deleted", deferred: "deleted"}
    events.take()
    cancel = queries.plan_bulk("cancel", entrypoints="a")
    result = queries.run_bulk(cancel)
    assert (cancel.count, result.done, result.ids) == (1, 1, (picked,))
    assert [j.id for j in queries.list_failed_jobs()] == [held]  # holds are never cancelled
    sent = [parse_event(p) for p in events.take()]
    assert [e.ids for e in sent if isinstance(e, CancellationEvent)] == [[picked]]


def test_bulk_actions_refuse_bad_requests(queries):
    with pytest.raises(ConfigurationError, match="bulk action"):
        queries.plan_bulk("delete", entrypoints="a")
    for action in ("cancel", "purge"):
        with pytest.raises(ConfigurationError, match="needs the entrypoints"):
            queries.plan_bulk(action)
        with pytest.raises(ConfigurationError, match="at least one"):
            queries.plan_bulk(action, entrypoints=[])
    plan = queries.plan_bulk("purge", entrypoints="a")
    assert (plan.count, plan.last_id) == (0, None)
    assert queries.run_bulk(plan).done == 0
    with pytest.raises(ConfigurationError, match="batch_size"):
        queries.run_bulk(plan, batch_size=0)


# Cancellation and notifications


def test_cancellation_removes_rows_and_notifies_listeners(adapter, queries):
    events = adapter.events()
    queued, picked = queries.enqueue(["a", "b"], [None, None])
    claim(queries, {"b": 0})
    events.take()
    assert sorted(queries.mark_job_as_cancelled([queued, picked, 424242])) == [queued, picked]
    assert queries.queue_size() == []
    assert dict(queries.job_status([queued, picked])) == {queued: "canceled", picked: "canceled"}
    payloads = events.take()
    assert kinds(payloads) == [("table_changed_event", "delete"), ("cancellation_event", None)]
    cancel = json.loads(payloads[1])
    assert cancel["ids"] == [queued, picked, 424242]
    assert cancel["channel"] == "ch_pgqueuer" and cancel["sent_at"].endswith("Z")
    assert payloads[1] == payloads[1].replace(" ", "")  # compact, as pydantic dumps it
    event = parse_event(payloads[1])
    assert isinstance(event, CancellationEvent) and event.ids == [queued, picked, 424242]
    assert queries.mark_job_as_cancelled([]) == [] and events.take() == []
    queries.notify_job_cancellation([7])
    assert [json.loads(p)["ids"] for p in events.take()] == [[7]]
    assert queries.queue_log()[-1].status == "canceled"  # no second log row for cancelled jobs


def test_many_cancelled_ids_are_split_into_events_under_the_payload_limit(adapter, queries):
    events = adapter.events()
    ids = list(range(1, 3001))
    queries.notify_job_cancellation(ids)
    payloads = events.take()
    assert len(payloads) > 1
    assert all(len(p.encode()) <= NOTIFY_PAYLOAD_LIMIT for p in payloads)
    assert [i for p in payloads for i in json.loads(p)["ids"]] == ids
    queries.notify_job_cancellation([])
    assert [json.loads(p)["ids"] for p in events.take()] == [[]]


def test_health_check_is_sent_to_listeners(adapter, queries):
    events = adapter.events()
    probe = uuid.uuid4()
    queries.notify_health_check(probe)
    [payload] = events.take()
    assert json.loads(payload)["type"] == "health_check_event"
    assert parse_event(payload).id == probe


def test_notifications_fire_on_insert_delete_truncate_and_on_requeues_not_claims(adapter, queries):
    events = adapter.events()
    [job_id] = queries.enqueue("a", None, dedupe_key="k")
    queries.enqueue("a", None, dedupe_key="k", on_conflict="skip")  # INSERT ran, nothing inserted
    with pytest.raises(DuplicateJobError):
        queries.enqueue("a", None, dedupe_key="k")  # failed statement: nothing sent
    assert kinds(events.take()) == [("table_changed_event", "insert")] * 2
    [job] = claim(queries, {"a": 0})
    queries.update_heartbeat([job_id])
    queries.requeue_jobs([job_id])  # not held: nothing changes, nothing sent
    queries.list_failed_jobs()
    queries.aggregate_logs()
    queries.insert_schedule({("s", "* * * * *"): timedelta(0)})
    assert events.take() == []
    # A retry wakes idle workers (an UPDATE; the statement's DELETE part runs too).
    queries.retry_job(job, timedelta(0))
    assert kinds(events.take()) == [("table_changed_event", op) for op in ("update", "delete")]
    [job] = claim(queries, {"a": 0})
    assert events.take() == []
    fail(queries, job)  # a hold frees a seat: update (and the DELETE runs)
    queries.log_jobs([(job_id, "successful", None)])
    queries.clear_queue("nothing")
    queries.clear_queue()
    assert kinds(events.take()) == [
        ("table_changed_event", op) for op in ("update",) + ("delete",) * 3 + ("truncate",)
    ]


def test_releases_requeues_and_bulk_actions_wake_idle_workers(adapter, queries):
    events = adapter.events()
    ids = queries.enqueue(["a"] * 4, [None] * 4)
    worker = uuid.uuid4()
    jobs = claim(queries, {"a": 0}, batch=3, worker=worker)
    events.take()
    queries.release_jobs({ids[0]: record_of("back", ids[0])}, worker)
    assert kinds(events.take()) == [("table_changed_event", "update")]
    for job in jobs[1:]:
        fail(queries, job)
    events.take()
    queries.requeue_jobs([ids[1]])
    assert kinds(events.take()) == [("table_changed_event", "update")]
    fail(queries, claim(queries, {"a": 0}, batch=1)[0])
    events.take()
    queries.run_bulk(queries.plan_bulk("requeue"), batch_size=1)  # one wake-up per batch
    assert kinds(events.take()) == [("table_changed_event", "update")] * 2


def test_table_changed_payload_is_spelled_like_the_trigger(adapter, queries):
    events = adapter.events()
    before = datetime.now(timezone.utc)
    queries.enqueue("a", None)
    [payload] = events.take()
    spelled = re.fullmatch(
        r'\{"channel" : "ch_pgqueuer", "operation" : "insert", '
        r'"sent_at" : "(?P<at>[^"]+)", "table" : "pgqueuer", "type" : "table_changed_event"\}',
        payload,
    )
    assert spelled, payload
    # json_build_object writes NOW() in the session's time zone, without trailing zeros.
    timestamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?[+-]\d\d(:\d\d)?"
    assert re.fullmatch(timestamp, spelled["at"])
    event = parse_event(payload)
    assert isinstance(event, TableChangedEvent)
    assert before - timedelta(seconds=5) < event.sent_at < before + timedelta(seconds=5)


# Inspection, cleanup and statistics


def test_queue_size_groups_and_orders_like_sql(queries):
    queries.enqueue(["b", "a", "a", "a"], [None] * 4, priority=[0, 1, 1, 0])
    claim(queries, {"b": 0})
    sizes = [(s.count, s.entrypoint, s.priority, s.status) for s in queries.queue_size()]
    assert sizes == [(1, "a", 0, "queued"), (1, "b", 0, "picked"), (2, "a", 1, "queued")]


def test_job_status_reports_latest_transition(queries):
    a, b = queries.enqueue(["a", "a"], [None, None])
    first, _ = claim(queries, {"a": 0})
    queries.log_jobs([(first, "successful", None)])
    assert queries.job_status([b, a, 99]) == [(a, "successful"), (b, "picked")]
    assert queries.job_status([]) == []


def test_clear_queue_by_entrypoint_logs_deleted_and_truncate_does_not(queries):
    queries.enqueue(["a", "b", "c", "d"], [None] * 4)
    queries.clear_queue("a")
    queries.clear_queue(["c", "d"])
    assert [s.entrypoint for s in queries.queue_size()] == ["b"]
    assert [log.status for log in queries.queue_log()][-3:] == ["deleted"] * 3
    queries.clear_queue()
    assert queries.queue_size() == []
    assert len(queries.queue_log()) == 7
    queries.clear_queue_log(["a", "c"])
    assert {log.entrypoint for log in queries.queue_log()} == {"b", "d"}
    queries.clear_queue_log()
    assert queries.queue_log() == []
    assert queries.enqueue("e", None) == [5]  # TRUNCATE does not reset the sequence


def test_aggregation_counts_each_log_row_once(adapter, queries):
    queries.enqueue(["a"] * 3, [None] * 3)
    claim(queries, {"a": 0})
    sessions = [adapter.session() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda session: session.aggregate_logs(), sessions))
    queries.aggregate_logs()
    stats = queries.log_statistics(100)
    counts: dict[str, int] = {}
    for bucket in stats:
        counts[bucket.status] = counts.get(bucket.status, 0) + bucket.count
    assert counts == {"queued": 3, "picked": 3}
    assert all(log.aggregated for log in queries.queue_log())
    assert queries.log_statistics(100, last=timedelta(hours=1)) == stats
    assert queries.log_statistics(limit=1) == stats[:1]


def test_statistics_are_kept_per_entrypoint_status_and_priority(queries):
    queries.enqueue(["a", "a", "b"], [None] * 3, priority=[0, 2, 0])
    [job] = claim(queries, {"b": 0})
    queries.log_jobs([(job, "successful", None)])
    totals: dict[tuple[str, str, int], int] = {}
    for bucket in queries.log_statistics():
        key = (bucket.entrypoint, bucket.status, bucket.priority)
        totals[key] = totals.get(key, 0) + bucket.count
    assert totals == {
        ("a", "queued", 0): 1,
        ("a", "queued", 2): 1,
        ("b", "queued", 0): 1,
        ("b", "picked", 0): 1,
        ("b", "successful", 0): 1,
    }
    queries.enqueue("c", None)
    [newest] = queries.log_statistics(limit=1)  # a later aggregation's buckets come first
    assert (newest.entrypoint, newest.status, newest.count) == ("c", "queued", 1)
    queries.clear_statistics_log("nothing")
    queries.clear_statistics_log(["b"])
    queries.clear_statistics_log("c")
    assert {s.entrypoint for s in queries.log_statistics()} == {"a"}
    queries.clear_statistics_log()
    assert queries.log_statistics() == []
    with pytest.raises(DatabaseError):
        queries.log_statistics(limit=-1)


def test_upkeep_reports_table_health_and_maintenance_runs(queries):
    health = queries.queue_table_health()
    assert isinstance(health, TableHealth) and health.owner
    queries.analyze_queue_table()
    queries.vacuum_queue_table()


def test_pruning_deletes_old_aggregated_log_rows_of_jobs_that_left_the_queue(queries):
    queries.enqueue(["a"] * 3, [None] * 3)
    finished, running, _ = claim(queries, {"a": 0})
    queries.log_jobs([(finished, "successful", None)])
    queries.aggregate_logs()
    queries.enqueue("a", None)  # a log row not yet aggregated

    def prune(table: str, keep: timedelta, batch: int) -> int:
        deleted, after = 0, None
        while True:
            step = queries.prune_expired(table, keep, after=after, batch_size=batch)
            assert step.locked
            deleted += step.deleted
            if step.done:
                return deleted
            after = step.last_id

    assert prune("log", timedelta(hours=1), 2) == 0
    assert prune("log", timedelta(0), 2) == 3  # the finished job's queued, picked, successful
    assert {log.job_id for log in queries.queue_log()} == {1, 2, 3, 4} - {finished.id}
    assert running.id in {log.job_id for log in queries.queue_log()}
    assert prune("statistics", timedelta(hours=1), 100) == 0
    assert prune("statistics", timedelta(0), 100) > 0
    # The log row that was not aggregated before pruning is counted now.
    assert [(s.entrypoint, s.status, s.count) for s in queries.log_statistics()] == [
        ("a", "queued", 1)
    ]
    step = queries.prune_expired("results", timedelta(0), after=None, batch_size=100)
    assert (step.deleted, step.done) == (0, True)


# Schedules


def test_schedules_register_once_and_are_claimed_when_due(queries):
    hourly = {("report", "0 * * * *"): timedelta(hours=1)}
    due = {("cleanup", "* * * * *"): timedelta(0)}
    queries.insert_schedule(hourly)
    queries.insert_schedule({**hourly, **due})
    assert [(s.id, s.entrypoint) for s in queries.peek_schedule()] == [
        (1, "report"),
        (3, "cleanup"),
    ]
    assert all(s.status == "queued" and s.last_run is None for s in queries.peek_schedule())
    assert queries.fetch_schedule(hourly) == []  # not due for an hour
    next_minute = {("cleanup", "* * * * *"): timedelta(minutes=1)}
    [claimed] = queries.fetch_schedule({**hourly, **next_minute, ("other", "* * * * *"): HB})
    assert (claimed.id, claimed.status) == (3, "picked")
    assert claimed.next_run.microsecond == 0
    assert timedelta(seconds=58) < claimed.next_run - claimed.updated <= timedelta(minutes=1)
    assert queries.fetch_schedule(next_minute) == []  # picked: not claimed twice
    queries.set_schedule_queued([claimed.id])
    [_, released] = queries.peek_schedule()
    assert released.status == "queued" and released.last_run >= claimed.updated
    assert queries.fetch_schedule({}) == []
    queries.insert_schedule({})


def test_a_schedule_heartbeat_is_refreshed_while_it_runs(queries):
    queries.insert_schedule({("report", "* * * * *"): timedelta(0)})
    [running] = queries.fetch_schedule({("report", "* * * * *"): timedelta(minutes=1)})
    queries.update_schedule_heartbeat([running.id, running.id, 999])
    queries.update_schedule_heartbeat([])
    [refreshed] = queries.peek_schedule()
    assert refreshed.heartbeat > running.heartbeat and refreshed.status == "picked"


def test_delete_and_clear_schedules(queries):
    queries.insert_schedule(
        {
            ("a", "* * * * *"): timedelta(0),
            ("b", "* * * * *"): timedelta(0),
            ("c", "0 * * * *"): timedelta(0),
        }
    )
    queries.delete_schedule(ids=[1], entrypoints=["c"])
    assert [s.entrypoint for s in queries.peek_schedule()] == ["b"]
    queries.delete_schedule()
    assert len(queries.peek_schedule()) == 1
    queries.clear_schedule()
    assert queries.peek_schedule() == []
