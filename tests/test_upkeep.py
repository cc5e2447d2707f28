"""Queue upkeep: workers ANALYZE and VACUUM the queue table where autovacuum falls behind.

The test server runs with autovacuum off, as the issue's benchmark server does:
a backlog enqueued into a table the planner never analyzed made every claim
read and sort every queued job (617 jobs/s instead of about 8,000 for 200,000
jobs). These tests pin the decision and show a worker doing the chores, and a
role that does not own the table staying quiet after one line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgqueue_sync import DBSettings, Queries, SyncPsycopgDriver
from pgqueue_sync.models import TableHealth
from pgqueue_sync.worker import upkeep
from pgqueue_sync.worker.upkeep import (
    ANALYZE_MIN_ROWS,
    GRACE,
    VACUUM_BACKOFF,
    VACUUM_MIN_ROWS,
    Chores,
    QueueUpkeep,
    chores,
)

from .worker_helpers import login_role, make_pgq, pool_for, running, wait_for

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)
#: Whatever the server does (the embedded one runs autovacuum): this table opts
#: out, so only upkeep analyzes it and the tests stay deterministic.
NO_AUTOVACUUM = "ALTER TABLE pgqueuer SET (autovacuum_enabled = false)"


def flush_counters(conn: psycopg.Connection[Any]) -> None:
    """Publish this session's table counters now (a backend flushes them lazily,
    up to seconds later; a worker's upkeep simply sees them at a later tick)."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")


def health(**changes: Any) -> TableHealth:
    base: dict[str, Any] = {"reltuples": 100_000.0, "live": 100_000, "dead": 0, "modified": 0,
                            "analyzed": NOW, "vacuumed": NOW, "autovacuum": False,
                            "owner": True, "now": NOW}
    return TableHealth(**{**base, **changes})


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, Chores(analyze=False, vacuum=False)),
        ({"reltuples": -1.0, "live": 0, "modified": ANALYZE_MIN_ROWS}, Chores(True, False)),
        ({"reltuples": -1.0, "live": 0, "modified": 10}, Chores(False, False)),
        ({"modified": 9_999}, Chores(False, False)),  # under 10% of 100,000
        ({"modified": 10_000}, Chores(True, False)),
        ({"dead": VACUUM_MIN_ROWS}, Chores(False, True)),
        ({"live": 1_000_000, "reltuples": 1e6, "dead": 50_000}, Chores(False, False)),
        # Autovacuum on and recent: it keeps the statistics; dead rows are ours
        # anyway (it comes back once a minute at best).
        ({"autovacuum": True, "modified": 50_000, "dead": 50_000}, Chores(False, True)),
        # Autovacuum on but behind (or never ran): we analyze too.
        ({"autovacuum": True, "modified": 50_000, "dead": 50_000,
          "analyzed": NOW - GRACE - timedelta(seconds=1), "vacuumed": None}, Chores(True, True)),
    ],
    ids=["healthy", "never analyzed", "never analyzed, tiny", "few changes", "10% changed",
         "dead rows", "dead under 10%", "autovacuum recent", "autovacuum behind"],
)
def test_the_decision(changes: dict[str, Any], expected: Chores) -> None:
    assert chores(health(**changes)) == expected


def test_the_counters_come_from_the_server(
    queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    queries.enqueue(["ep"] * 50, [None] * 50)
    seen = queries.queue_table_health()
    assert seen.owner is True
    row = conn.execute("SHOW autovacuum").fetchone()
    assert row is not None and seen.autovacuum is (row[0] == "on")
    conn.execute("ALTER TABLE pgqueuer SET (autovacuum_enabled = false)")
    assert queries.queue_table_health().autovacuum is False  # the table opted out
    assert seen.now.tzinfo is not None


def test_a_worker_analyzes_and_vacuums_a_deep_queue(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(NO_AUTOVACUUM)
        queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
        for _ in range(25):
            queries.enqueue(["deep"] * 1_000, [None] * 1_000)
        flush_counters(conn)
        assert queries.queue_table_health().analyzed is None
        with pool_for(dsn) as pool:
            pgq = make_pgq(pool)
            pgq.entrypoint("deep")(lambda job: None)
            # Continuous, not drain: a fast drain may end before the upkeep thread
            # gets a connection on a loaded machine; the claim is about the worker.
            with running(pgq, dequeue_timeout=0.5, batch_size=100):
                wait_for(lambda: pgq.qm.upkeep is not None and pgq.qm.upkeep.analyzed >= 1,
                         timeout=30, what="the worker analyzed the queue table")
                wait_for(lambda: queries.queue_size() == [], timeout=60,
                         what="the queue drained")
        after = queries.queue_table_health()
        assert after.analyzed is not None and after.reltuples >= 0
        assert queries.queue_size() == []


def test_upkeep_can_be_turned_off(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(NO_AUTOVACUUM)
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("x")(lambda job: None)
        pgq.queries.enqueue(["x"] * 2_000, [None] * 2_000)
        pgq.run(mode="drain", dequeue_timeout=0.5, queue_upkeep=False)
        assert pgq.qm.upkeep is None
        assert pgq.queries.queue_table_health().analyzed is None


@pytest.fixture
def tenant(server_dsn: str, dsn: str) -> Iterator[str]:
    """A LOGIN role with full rights on the queue tables but not their owner."""
    with login_role(server_dsn, "pgqs_upkeep", databases=[dsn]) as name:
        role = sql.Identifier(name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(role))
            conn.execute(sql.SQL("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {}").format(role))
        yield name


def test_a_role_that_does_not_own_the_table_says_so_once(
    dsn: str, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(NO_AUTOVACUUM)
    as_tenant = psycopg.conninfo.make_conninfo(dsn, user=tenant)
    with psycopg.connect(as_tenant, autocommit=True) as conn:
        queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
        queries.enqueue(["t"] * 2_000, [None] * 2_000)
        flush_counters(conn)
        keeper = QueueUpkeep(queries)
        with caplog.at_level(logging.INFO, "pgqueue_sync.worker.upkeep"):
            for _ in range(3):
                keeper()
        lines = [r for r in caplog.records if r.name == "pgqueue_sync.worker.upkeep"]
        assert len(lines) == 1 and "does not own" in lines[0].getMessage()
        assert keeper.analyzed == keeper.vacuumed == 0
        assert queries.queue_table_health().analyzed is None


def _dead_rows(queries: Queries, conn: psycopg.Connection[Any], jobs: int) -> None:
    """Leave about ``jobs`` dead rows: enqueue, then delete them (as finished jobs are)."""
    queries.enqueue(["dead"] * jobs, [None] * jobs)
    conn.execute("DELETE FROM pgqueuer")
    flush_counters(conn)


def test_vacuums_are_spaced_and_back_off_while_they_remove_nothing(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A REPEATABLE READ snapshot taken before the rows died keeps them: VACUUM
    # cannot remove them, and the worker must not rescan the table every tick.
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn) as old:
        conn.execute(NO_AUTOVACUUM)
        queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
        old.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        old.execute("SELECT count(*) FROM pgqueuer")  # takes the snapshot
        _dead_rows(queries, conn, VACUUM_MIN_ROWS + 2_000)
        keeper = QueueUpkeep(queries)
        keeper()
        assert keeper.vacuumed == 1
        assert queries.queue_table_health().dead >= VACUUM_MIN_ROWS  # still there
        keeper()
        assert keeper.vacuumed == 1, "a futile VACUUM must not be repeated at once"
        assert keeper._vacuum_gap == VACUUM_BACKOFF
        old.rollback()  # the snapshot is gone: the next VACUUM can remove them

        monkeypatch.setattr(upkeep.time, "monotonic", lambda: keeper._next_vacuum + 1)
        keeper()
        assert keeper.vacuumed == 2
        assert queries.queue_table_health().dead < VACUUM_MIN_ROWS
        assert keeper._vacuum_gap == 0  # it worked: the next tick may vacuum again


def test_a_worker_vacuums_even_where_autovacuum_is_on(dsn: str) -> None:
    # On a stock server autovacuum visits once a minute at best; a drain leaves
    # dead claim-index entries much faster, so the worker does not wait for it.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE pgqueuer SET (autovacuum_enabled = true)")
        queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
        health = queries.queue_table_health()
        if not health.autovacuum:
            pytest.skip("the server runs with autovacuum off")
        _dead_rows(queries, conn, VACUUM_MIN_ROWS + 2_000)
        keeper = QueueUpkeep(queries)
        keeper()
        assert keeper.vacuumed == 1
        assert queries.queue_table_health().dead < VACUUM_MIN_ROWS


class _Counters:
    """Stands in for Queries: serves fixed counters (the decision, not the SQL, is tested)."""

    def __init__(self, health: TableHealth) -> None:
        self.health = health

    def queue_table_health(self) -> TableHealth:
        return self.health


def test_a_non_owner_stays_quiet_about_dead_rows_autovacuum_is_handling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters = _Counters(health(owner=False, autovacuum=True, dead=50_000))
    keeper = QueueUpkeep(counters)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, "pgqueue_sync.worker.upkeep"):
        keeper()
        assert not [r for r in caplog.records if r.name == "pgqueue_sync.worker.upkeep"]
        # Autovacuum has not vacuumed for longer than the grace: now it says so, once.
        counters.health = health(owner=False, autovacuum=True, dead=50_000,
                                 vacuumed=NOW - GRACE - timedelta(seconds=1))
        keeper()
        keeper()
    lines = [r for r in caplog.records if r.name == "pgqueue_sync.worker.upkeep"]
    assert len(lines) == 1 and "does not own" in lines[0].getMessage()
