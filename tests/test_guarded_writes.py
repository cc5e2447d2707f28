"""The worker's write contract, on PostgreSQL and on the in-memory twin alike.

A worker records its jobs' outcomes with ``queue_manager_id``: only rows still
``picked`` by that worker, in the claim the outcome belongs to (the claim's
``updated``), change. Sending the same write twice (after a lost reply) changes
nothing; another worker's or a newer claim's row is left alone. Retries travel in
the same statement and wake idle workers; ``poll_state`` says when the next picked
job goes stale.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from pgqueue_sync import DBSettings, Queries, SyncPsycopgDriver
from pgqueue_sync.queries import EntrypointExecutionParameter
from pgqueue_sync.testing import InMemoryDriver, InMemoryQueries

HB = timedelta(seconds=30)


@pytest.fixture(params=["postgresql", "in-memory"])
def q(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "in-memory":
        yield InMemoryQueries(InMemoryDriver(), settings=DBSettings())
        return
    conn = request.getfixturevalue("conn")
    yield Queries(SyncPsycopgDriver(conn), settings=DBSettings())


def claim(q: Any, worker: uuid.UUID, n: int = 10) -> list[Any]:
    return q.dequeue(n, {"a": 0}, worker, None, HB)


def history(q: Any, job_id: int) -> list[str]:
    return [e.status for e in q.queue_log() if e.job_id == job_id]


def test_a_resent_outcome_changes_nothing(q: Any) -> None:
    worker = uuid.uuid4()
    ids = q.enqueue(["a"] * 3, [None] * 3)
    done, held, again = claim(q, worker)
    outcomes = [(done, "successful", None), (held, "failed", None)]
    retries = [(again, timedelta(0), None)]
    first = q.log_jobs(outcomes, retries=retries, queue_manager_id=worker)
    assert sorted(first) == sorted(ids)
    assert q.log_jobs(outcomes, retries=retries, queue_manager_id=worker) == []
    assert history(q, done.id) == ["queued", "picked", "successful"]
    assert history(q, held.id) == ["queued", "picked", "failed"]
    assert history(q, again.id) == ["queued", "picked", "queued"]
    [retried] = claim(q, worker)
    assert (retried.id, retried.attempts) == (again.id, 1)


def test_a_write_for_an_older_claim_or_another_worker_is_ignored(q: Any) -> None:
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    q.enqueue(["a"] * 2, [None] * 2)
    first, other = claim(q, mine)
    # A retry of the first claim committed; the same worker then claims the job anew.
    q.log_jobs((), retries=[(first, timedelta(0), None)], queue_manager_id=mine)
    [renewed] = claim(q, mine)
    assert renewed.id == first.id and renewed.updated != first.updated
    # The old claim's retry, re-sent, must not retry the new run.
    assert q.log_jobs((), retries=[(first, timedelta(0), None)], queue_manager_id=mine) == []
    assert q.log_jobs([(other, "successful", None)], queue_manager_id=theirs) == []
    assert q.log_jobs([(renewed, "successful", None)], queue_manager_id=mine) == [first.id]
    assert history(q, first.id) == ["queued", "picked", "queued", "picked", "successful"]


def test_retries_and_holds_wake_listeners(q: Any, request: pytest.FixtureRequest) -> None:
    worker = uuid.uuid4()
    q.enqueue(["a"] * 2, [None] * 2)
    retried, held = claim(q, worker)
    payloads = _listen(q, request)
    q.log_jobs([(held, "failed", None)], retries=[(retried, timedelta(0), None)],
               queue_manager_id=worker)
    operations = [p for p in payloads() if '"update"' in p]
    assert len(operations) == 1, payloads()


def test_poll_state_tells_when_the_next_picked_job_goes_stale(q: Any) -> None:
    q.enqueue(["a", "b"], [None, None])
    q.dequeue(10, {"a": 0, "b": EntrypointExecutionParameter(stale_after=timedelta(seconds=5))},
              uuid.uuid4(), None, HB)
    state = q.poll_state(
        {"a": EntrypointExecutionParameter(),
         "b": EntrypointExecutionParameter(stale_after=timedelta(seconds=5))},
        timedelta(seconds=30),
    )
    assert state.stale_eta is not None
    assert timedelta(seconds=3) < state.stale_eta <= timedelta(seconds=5)
    only_a = q.poll_state({"a": EntrypointExecutionParameter()}, timedelta(seconds=30))
    assert timedelta(seconds=28) < only_a.stale_eta <= timedelta(seconds=30)
    assert dataclasses.replace(only_a, stale_eta=None).queued is False


def _listen(q: Any, request: pytest.FixtureRequest) -> Any:
    """A function returning the payloads received on the queue's channel since now."""
    if isinstance(q, InMemoryQueries):
        received: list[str] = []
        q.driver.add_listener(received.append)
        return lambda: received
    conn = request.getfixturevalue("connect")()  # closed by the fixture
    conn.execute("LISTEN ch_pgqueuer")
    seen: list[str] = []

    def payloads() -> list[str]:
        seen.extend(n.payload for n in conn.notifies(timeout=0.5, stop_after=10))
        return seen

    return payloads
