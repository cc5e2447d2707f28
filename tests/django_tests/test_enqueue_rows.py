"""A Django task job is written exactly as every other enqueue writes a job.

The Tasks backend enqueues with its own statement (it also writes the task's
results row), built on the shared enqueue: the queue row, its ``queued`` log
row and the trigger's notification must match what :func:`enqueue` (that is,
``Queries.enqueue``) writes for the same entrypoint, payload, priority and time.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from django.db import transaction
from django.utils import timezone
from psycopg import sql

from pgqueue_sync.contrib.django import DjangoDriver, enqueue
from pgqueue_sync.contrib.django.conf import get_settings

from .shop import tasks


def _rows(table_field: str, where: str, job_id: int) -> list[dict[str, Any]]:
    """The rows of one job in ``table_field``, every column but the row's own id.

    ``headers_absent`` tells SQL NULL from JSON null, which Python reads alike.
    """
    names = get_settings().db_settings
    query = sql.SQL(
        "SELECT *, headers IS NULL AS headers_absent FROM {} WHERE " + where + " ORDER BY id"
        if table_field == "queue_table" else
        "SELECT * FROM {} WHERE " + where + " ORDER BY id"
    ).format(names.ident(table_field))
    rows = DjangoDriver().fetch(query, {"id": job_id})
    for row in rows:
        row.pop("id")
        row.pop("job_id", None)
    return rows


def _written(job_id: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The queue row and the log rows of ``job_id``."""
    return (_rows("queue_table", "id = %(id)s", job_id),
            _rows("queue_table_log", "job_id = %(id)s", job_id))


def _both_paths(run_after: datetime | None) -> tuple[Any, Any]:
    """Enqueue a task, then the same job through :func:`enqueue`, in one transaction
    (so ``NOW()`` is the same for both); the rows each wrote."""
    task = tasks.mark_sent if run_after is None else tasks.mark_sent.using(run_after=run_after)
    result = task.enqueue(7)
    [task_row], _ = _written(int(result.id))
    if run_after is not None and timezone.is_naive(run_after):  # USE_TZ=False: in TIME_ZONE
        run_after = timezone.make_aware(run_after)
    [job_id] = enqueue(task_row["entrypoint"], bytes(task_row["payload"]),
                       task_row["priority"], run_after)
    assert job_id is not None
    return _written(int(result.id)), _written(job_id)


@pytest.mark.django_db
@pytest.mark.parametrize("deferred", [False, True], ids=["now", "run_after"])
def test_a_task_job_and_its_log_row_are_those_of_any_enqueue(deferred: bool) -> None:
    run_after = timezone.now() + timedelta(hours=1) if deferred else None
    with transaction.atomic():
        (task_job, task_log), (plain_job, plain_log) = _both_paths(run_after)
    assert task_job == plain_job
    assert task_log == plain_log
    [row] = task_job
    assert row["status"] == "queued" and row["attempts"] == 0 and row["dedupe_key"] is None
    assert row["headers"] is None and not row["headers_absent"]  # JSON null, as PgQueuer
    assert [entry["status"] for entry in task_log] == ["queued"]



@pytest.mark.django_db(transaction=True)
def test_a_task_enqueue_wakes_the_workers_at_commit(
    committed: None, listener: psycopg.Connection[Any]
) -> None:
    with transaction.atomic():
        tasks.add.enqueue(1, 2)
        assert list(listener.notifies(timeout=0.3, stop_after=1)) == []
    [event] = [json.loads(n.payload) for n in listener.notifies(timeout=5.0, stop_after=1)]
    assert event["type"] == "table_changed_event" and event["operation"] == "insert"
