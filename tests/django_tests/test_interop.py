"""Django-enqueued jobs and the real PgQueuer 1.6 (async) workers share one database."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from pgqueuer import Job as TheirJob
from pgqueuer import PgQueuer as AsyncPgQueuer
from pgqueuer.types import QueueExecutionMode
from psycopg.conninfo import make_conninfo

from pgqueue_sync import Job
from pgqueue_sync.contrib.django import enqueue, get_queries
from pgqueue_sync.contrib.django.db import worker_connection_params

from ..pgqueuer_helpers import async_worker, run_async_queries
from .helpers import drain_with_worker

pytestmark = pytest.mark.interop

#: PgQueuer's own short timeouts for tests (seconds).
THEIRS_FAST: dict[str, Any] = {"dequeue_timeout": timedelta(seconds=0.5)}
_LIBPQ = ("host", "port", "user", "password", "dbname")


def django_dsn() -> str:
    """The (test) database Django uses, as a DSN the asyncpg helpers understand."""
    params = worker_connection_params()
    return make_conninfo("", **{k: params[k] for k in _LIBPQ if params.get(k)})


@pytest.mark.django_db(transaction=True)
def test_a_pgqueuer_worker_runs_jobs_enqueued_in_a_django_transaction(committed: None) -> None:
    with transaction.atomic():
        ids = enqueue(["theirs"] * 3, [b"a", b"b", b"c"], [0, 5, 1], headers={"from": "django"})
    with pytest.raises(RuntimeError), transaction.atomic():
        enqueue("theirs", b"rolled back")
        raise RuntimeError("abort")
    seen: list[tuple[int, bytes | None, Any]] = []

    def register(pgq: AsyncPgQueuer) -> None:
        @pgq.entrypoint("theirs")
        async def theirs(job: TheirJob) -> None:
            seen.append((job.id, job.payload, job.headers))

    with async_worker(django_dsn(), register, mode=QueueExecutionMode.drain,
                      batch_size=1, **THEIRS_FAST) as worker:
        worker.join(timeout=20)
    assert [s[0] for s in seen] == [ids[1], ids[2], ids[0]]  # priority order
    assert {s[1] for s in seen} == {b"a", b"b", b"c"}
    assert all(s[2] == {"from": "django"} for s in seen)
    statuses = dict(get_queries().job_status([i for i in ids if i is not None]))
    assert set(statuses.values()) == {"successful"}


@pytest.mark.django_db(transaction=True)
def test_the_django_side_worker_runs_jobs_pgqueuer_enqueued(committed: None) -> None:
    [their_id] = run_async_queries(
        django_dsn(), lambda q: q.enqueue("ours", b"from pgqueuer", priority=3))
    seen: list[tuple[int, bytes | None]] = []

    def register(pgq: Any) -> None:
        @pgq.entrypoint("ours")
        def ours(job: Job) -> None:
            seen.append((job.id, job.payload))

    drain_with_worker(register)
    assert seen == [(their_id, b"from pgqueuer")]
    assert dict(get_queries().job_status([their_id])) == {their_id: "successful"}
