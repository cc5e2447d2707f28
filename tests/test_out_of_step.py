"""A connection out of step with the server (a reply that is not its statement's).

PgBouncer in transaction mode handed a claim the reply to its own
``server_check_query`` (``{'?column?': 1}``) when a backend holding a LISTEN
was checked; every later statement on that client connection would then read
the reply to the one before. The claim checks that its reply has the job
columns: on a mismatch the psycopg drivers drop the connection and raise a
transient ``ConnectionFailed``, and the worker backs off and goes on instead
of dying of a ``KeyError``.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from pgqueue_sync import ConnectionFailed, SyncPsycopgDriver
from pgqueue_sync.drivers import SyncPsycopgPoolDriver
from pgqueue_sync.drivers.base import ExpectingColumns, check_reply

from .worker_helpers import make_pgq, running, wait_for

FOREIGN = "SELECT 1"


def foreign(*columns: str) -> ExpectingColumns:
    """A statement expecting ``columns`` that gets another reply, as PgBouncer gave one."""
    return ExpectingColumns(FOREIGN, columns)


def test_a_reply_without_the_expected_columns_drops_the_connection(conn):
    driver = SyncPsycopgDriver(conn)
    first = driver.connection
    with pytest.raises(ConnectionFailed, match="out of step") as caught:
        driver.fetch(foreign("id", "payload"))
    assert caught.value.transient
    assert first.closed
    # The driver reconnects for the next statement.
    good = ExpectingColumns("SELECT 2 AS id, NULL AS payload", ("id", "payload"))
    assert driver.fetch(good) == [{"id": 2, "payload": None}]
    assert driver.connection is not first


def test_the_pool_replaces_a_connection_found_out_of_step(dsn):
    with ConnectionPool(dsn, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
        driver = SyncPsycopgPoolDriver(pool)
        with pool.connection() as lent:
            backend = lent.info.backend_pid
        with pytest.raises(ConnectionFailed, match="out of step"):
            driver.fetch(foreign("id"))
        [row] = driver.fetch("SELECT pg_backend_pid() AS pid")
        assert row["pid"] != backend


class OneForeignReply:
    """A driver whose next claim gets a foreign reply, as PgBouncer gave one."""

    def __init__(self, driver: SyncPsycopgPoolDriver) -> None:
        self.driver = driver
        self.armed = threading.Event()
        self.tripped = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.driver, name)

    def fetch(self, query: Any, params: Any = None) -> Any:
        if (isinstance(query, ExpectingColumns) and self.armed.is_set()
                and not self.tripped.is_set()):
            self.tripped.set()
            return self.driver.fetch(foreign(*query.columns))
        return self.driver.fetch(query, params)


def test_a_worker_survives_a_claim_that_read_a_foreign_reply(dsn, queries, caplog):
    caplog.set_level("WARNING", logger="pgqueue_sync")
    done: list[int] = []
    with ConnectionPool(dsn, min_size=2, max_size=4, kwargs={"autocommit": True}) as pool:
        pgq = make_pgq(pool)
        faulty = OneForeignReply(pgq.qm.queries.driver)  # type: ignore[arg-type]
        pgq.qm.queries.driver = faulty  # type: ignore[assignment]
        pgq.entrypoint("job")(lambda job: done.append(job.id))
        with running(pgq, dequeue_timeout=0.5, log_aggregation_interval=0):
            faulty.armed.set()
            ids = queries.enqueue(["job"] * 5, [None] * 5)
            wait_for(faulty.tripped.is_set, what="the foreign reply")
            wait_for(lambda: sorted(done) == sorted(ids), timeout=30,
                     what="every job run after the fault")
    assert "out of step" in caplog.text


def test_other_drivers_get_the_check_after_the_fact(dsn):
    """A driver of another kind runs the statement as plain SQL; the claim then
    checks the rows it got."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = [dict(zip(["?column?"], row, strict=True))
                for row in conn.execute(FOREIGN).fetchall()]
    with pytest.raises(ConnectionFailed, match="missing \\['id'\\]"):
        check_reply(rows, foreign("id"))
    check_reply([{"id": 1}], foreign("id"))  # the right columns pass
