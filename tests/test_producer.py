"""Producers: joining the caller's transaction, the pool driver, error translation."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from pgqueue_sync import (
    ConnectionFailed,
    Queries,
    SchemaNotInstalledError,
    SyncPsycopgDriver,
    SyncPsycopgPoolDriver,
)
from pgqueue_sync.drivers import connect as pgqs_connect


def listen(connect) -> psycopg.Connection[Any]:
    listener = connect()
    listener.execute("LISTEN ch_pgqueuer")
    return listener


def drain(listener, timeout=0.5):
    return [json.loads(n.payload) for n in listener.notifies(timeout=timeout)]


def test_rollback_leaves_no_job_and_no_notification(connect, settings, queries):
    listener = listen(connect)
    producer_conn = connect(autocommit=False)
    producer = Queries(SyncPsycopgDriver(producer_conn), settings=settings)
    with pytest.raises(RuntimeError), producer_conn.transaction():
        producer_conn.execute("SELECT 1")
        producer.enqueue("a", b"payload")
        raise RuntimeError("view failed")
    assert queries.queue_size() == []
    assert queries.queue_log() == []
    assert drain(listener) == []
    assert producer_conn.autocommit is False


def test_commit_makes_job_visible_and_notifies_once(connect, settings, queries):
    listener = listen(connect)
    producer_conn = connect(autocommit=False)
    producer = Queries(SyncPsycopgDriver(producer_conn), settings=settings)
    with producer_conn.transaction():
        producer_conn.execute("CREATE TEMP TABLE view_rows (x int)")
        producer.enqueue(["a", "a"], [b"1", b"2"])
        assert queries.queue_size() == []  # invisible before commit
        assert drain(listener, timeout=0.2) == []
    assert sum(s.count for s in queries.queue_size()) == 2
    events = drain(listener)
    assert len(events) == 1
    assert events[0]["type"] == "table_changed_event" and events[0]["operation"] == "insert"
    assert events[0]["table"] == "pgqueuer"


def test_driver_never_commits_an_implicit_transaction(connect, settings, queries):
    producer_conn = connect(autocommit=False)
    producer = Queries(SyncPsycopgDriver(producer_conn), settings=settings)
    producer.enqueue("a", None)
    producer.mark_job_as_cancelled([999])
    assert producer_conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert queries.queue_size() == []
    producer_conn.commit()
    assert sum(s.count for s in queries.queue_size()) == 1


def test_cancellation_in_caller_transaction_is_atomic(connect, settings, queries):
    [job_id] = queries.enqueue("a", None)
    listener = listen(connect)
    producer_conn = connect(autocommit=False)
    producer = Queries(SyncPsycopgDriver(producer_conn), settings=settings)
    with pytest.raises(RuntimeError), producer_conn.transaction():
        producer.mark_job_as_cancelled([job_id])
        raise RuntimeError("abort")
    assert sum(s.count for s in queries.queue_size()) == 1
    assert drain(listener) == []


def test_pool_driver_enqueues_and_claims(dsn, settings):
    with ConnectionPool(dsn, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
        queries = Queries(SyncPsycopgPoolDriver(pool), settings=settings)
        ids = queries.enqueue(["a"] * 3, [None] * 3)
        assert len(ids) == 3
        assert sorted(queries.mark_job_as_cancelled(ids[:1])) == ids[:1]
        assert sum(s.count for s in queries.queue_size()) == 2


def test_pool_driver_with_non_autocommit_connections_commits(dsn, settings):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        queries = Queries(SyncPsycopgPoolDriver(pool), settings=settings)
        queries.enqueue("a", None)
    with psycopg.connect(dsn) as check:
        assert check.execute("SELECT count(*) FROM pgqueuer").fetchone() == (1,)


def test_missing_schema_error_says_how_to_fix(empty_dsn, settings):
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        queries = Queries(SyncPsycopgDriver(conn), settings=settings)
        with pytest.raises(SchemaNotInstalledError, match="pgq-sync install"):
            queries.enqueue("a", None)


def test_connect_failure_is_one_clear_line():
    with pytest.raises(ConnectionFailed) as info:
        pgqs_connect("postgresql://nobody:secret@127.0.0.1:1/nowhere", connect_timeout=2)
    message = str(info.value)
    assert "127.0.0.1:1/nowhere" in message and "secret" not in message
    assert "\n" not in message


def test_closed_connection_is_rejected(connect):
    closed = connect()
    closed.close()
    with pytest.raises(ConnectionFailed, match="closed"):
        SyncPsycopgDriver(closed)
