"""Enqueue on Django's connection: the job shares the caller's transaction."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction
from django.db.utils import ConnectionHandler
from psycopg import sql

from pgqueue_sync.contrib.django import (
    DjangoConfigurationError,
    DjangoDriver,
    enqueue,
    enqueue_on_commit,
    get_queries,
)
from pgqueue_sync.contrib.django.conf import get_settings
from pgqueue_sync.errors import DuplicateJobError

from .helpers import worker_connect


def _queue() -> sql.Identifier:
    return get_settings().db_settings.ident("queue_table")


def _other_connection_sees(entrypoint: str) -> int:
    with worker_connect() as conn:
        query = sql.SQL("SELECT count(*) FROM {} WHERE entrypoint = %s").format(_queue())
        row = conn.execute(query, [entrypoint]).fetchone()
        assert row is not None
        return int(row[0])




def _notifications(conn: psycopg.Connection[Any], timeout: float) -> list[dict[str, Any]]:
    return [json.loads(n.payload) for n in conn.notifies(timeout=timeout, stop_after=1)]


@pytest.mark.django_db(transaction=True)
def test_commit_makes_the_job_visible_and_notifies_at_commit(
    committed: None, listener: psycopg.Connection[Any]
) -> None:
    with transaction.atomic():
        [job_id] = enqueue("commit.me", b"x")
        assert _other_connection_sees("commit.me") == 0
        assert _notifications(listener, 0.3) == []
    assert job_id is not None
    assert _other_connection_sees("commit.me") == 1
    events = _notifications(listener, 5.0)
    assert events and events[0]["type"] == "table_changed_event"
    assert events[0]["operation"] == "insert"


@pytest.mark.django_db(transaction=True)
def test_rollback_leaves_no_job_and_no_notification(
    committed: None, listener: psycopg.Connection[Any]
) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        enqueue("roll.back", b"x")
        raise RuntimeError("the view failed")
    assert _other_connection_sees("roll.back") == 0
    assert _notifications(listener, 0.5) == []


@pytest.mark.django_db(transaction=True)
def test_nested_atomic_rolls_back_only_the_savepoint(committed: None) -> None:
    with transaction.atomic():
        enqueue("nested.outer")
        with pytest.raises(RuntimeError), transaction.atomic():
            enqueue("nested.inner")
            raise RuntimeError("inner block fails")
    assert _other_connection_sees("nested.outer") == 1
    assert _other_connection_sees("nested.inner") == 0


@pytest.mark.django_db(transaction=True)
def test_outside_atomic_the_job_commits_at_once(committed: None) -> None:
    enqueue("autocommit.job")
    assert _other_connection_sees("autocommit.job") == 1
    assert connection.get_autocommit()


@pytest.mark.django_db(transaction=True)
def test_the_view_enqueues_in_its_transaction(committed: None, client: Any) -> None:
    response = client.get("/orders/", {"email": "v@example.com"})
    assert response.status_code == 200
    assert _other_connection_sees("shop.send_confirmation") == 1
    with pytest.raises(RuntimeError):
        client.get("/orders/", {"email": "w@example.com", "fail": "1"})
    assert _other_connection_sees("shop.send_confirmation") == 1


@pytest.mark.django_db(transaction=True)
def test_enqueue_never_manages_the_borrowed_connection(
    committed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with transaction.atomic():
        connection.ensure_connection()
        raw = connection.connection
        before = (raw.autocommit, raw.info.transaction_status)
        calls: list[str] = []
        for name in ("commit", "rollback", "transaction"):
            monkeypatch.setattr(type(raw), name, lambda *a, _n=name, **k: calls.append(_n))
        monkeypatch.setattr(type(raw), "autocommit", property(
            lambda self: False, lambda self, value: calls.append("set autocommit")))
        enqueue("hands.off")
        monkeypatch.undo()
        assert calls == []
        assert before[0] is False
        assert raw.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert _other_connection_sees("hands.off") == 1


@pytest.mark.django_db
def test_one_enqueue_is_one_counted_query(django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(1) as captured:
        enqueue(["a", "b", "c"], [b"1", b"2", b"3"])
    assert "unnest" in captured.captured_queries[0]["sql"]


@pytest.mark.django_db
def test_a_duplicate_inside_a_savepoint_is_recoverable() -> None:
    enqueue("dedupe", dedupe_key="k1")
    with pytest.raises(DuplicateJobError), transaction.atomic():
        enqueue("dedupe", dedupe_key="k1")
    # The outer transaction is intact: later statements work.
    assert enqueue("dedupe", dedupe_key="k1", on_conflict="skip") == [None]
    assert enqueue("dedupe", dedupe_key="k2")[0] is not None


@pytest.mark.django_db
def test_rows_read_through_django_decode_json_and_aware_times() -> None:
    [job_id] = enqueue("decoded", headers={"tenant": 7})
    query = sql.SQL("SELECT headers, created FROM {} WHERE id = %(id)s").format(_queue())
    [row] = DjangoDriver().fetch(query, {"id": job_id})
    assert row["headers"] == {"tenant": 7}
    assert isinstance(row["created"], datetime) and row["created"].tzinfo is not None
    # Django's own cursors keep Django's adapters (jsonb as text).
    with connection.cursor() as cursor:
        cursor.execute(query.as_string(), {"id": job_id})
        headers, _ = cursor.fetchone()
    assert isinstance(headers, str)


@pytest.mark.django_db
def test_get_queries_reads_the_queue_in_the_same_transaction() -> None:
    enqueue(["stats.a", "stats.a", "stats.b"])
    sizes = {(s.entrypoint, s.status): s.count for s in get_queries().queue_size()}
    assert sizes[("stats.a", "queued")] == 2
    assert sizes[("stats.b", "queued")] == 1


@pytest.mark.django_db(transaction=True)
def test_enqueue_on_commit_waits_for_the_commit(committed: None) -> None:
    with transaction.atomic():
        enqueue_on_commit("later.job", b"x")
        assert _other_connection_sees("later.job") == 0
    assert _other_connection_sees("later.job") == 1


def test_a_database_that_is_not_postgresql_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = ConnectionHandler({"default": {"ENGINE": "django.db.backends.sqlite3",
                                             "NAME": ":memory:"}})
    monkeypatch.setattr("pgqueue_sync.contrib.django.db.connections", handler)
    with pytest.raises(DjangoConfigurationError, match="'sqlite' backend"):
        DjangoDriver("default")
    with pytest.raises(DjangoConfigurationError, match="not in DATABASES"):
        DjangoDriver("missing")
