"""Live workers, stale re-picks and the dashboard's wait/run times, on real PostgreSQL.

Workers run in threads (``tests.worker_helpers.running``), which stops and joins
them in ``finally``; every wait is bounded. The CLI runs in-process at 80
columns, as in ``test_cli_ops``.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from pgqueue_sync import DBSettings, Job, Queries, SyncPsycopgDriver, options
from pgqueue_sync.app import PgQueuer
from pgqueue_sync.ops import (
    DEFAULT_STALE_THRESHOLD,
    UNSERVED_GRACE,
    OpsQueries,
    label_worker_session,
)
from pgqueue_sync.schema import Schema
from pgqueue_sync.sql.ops import WORKER_SESSION_PREFIX
from tests.test_cli_ops import invoke, ok
from tests.worker_helpers import make_pgq, pool_for, running, wait_for

SECRET = b"secret-payload-do-not-print"
PGQUEUER_HOLDER = uuid.UUID("a81c07d2-4b6e-4f0a-9c3d-0e5f7a8b9c10")
GONE_HOLDER = uuid.UUID("5c9e4a20-1b7f-4d8e-b2a6-0f3c8d7e1a94")


def workers_json(dsn: str, *global_options: str, **options: str) -> dict[str, dict[str, Any]]:
    """``pgq-sync [GLOBAL_OPTIONS] workers --json [--option value ...]`` by queue_manager_id."""
    extra = [arg for key, value in options.items() for arg in (f"--{key.replace('_', '-')}",
                                                                value)]
    data = json.loads(ok(dsn, *global_options, "workers", "--json", *extra))
    return {w["queue_manager_id"]: w for w in data}


def queue_oid(conn: psycopg.Connection[Any], table: str = "pgqueuer") -> int:
    row = conn.execute("SELECT to_regclass(%s)::oid::bigint", [table]).fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])


def sessions_named(conn: psycopg.Connection[Any], name: str) -> list[int]:
    rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                        [name]).fetchall()
    return [r[0] for r in rows]


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Handlers wait on this; set in teardown so no handler outlives its test."""
    event = threading.Event()
    try:
        yield event
    finally:
        event.set()


# -- workers ----------------------------------------------------------------------------------


def test_idle_worker_is_listed_by_its_session_then_busy_then_gone(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries, gate: threading.Event
) -> None:
    started = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)

        @pgq.entrypoint("resize_image")
        def resize_image(job: Job) -> None:
            started.set()
            gate.wait(30)

        worker_id = str(pgq.qm.queue_manager_id)
        name = f"{WORKER_SESSION_PREFIX}{worker_id} {queue_oid(conn)}"
        with running(pgq, dequeue_timeout=1):
            wait_for(lambda: pgq.qm.idle_waits > 0, what="the worker to be idle")
            [pid] = wait_for(lambda: sessions_named(conn, name), what="the named session")
            assert len(name.encode()) <= 63

            # Idle: listed from pg_stat_activity, holding nothing.
            idle = wait_for(lambda: workers_json(dsn).get(worker_id), what="listed while idle")
            assert idle["seen"] == "connected" and idle["active_jobs"] == 0
            assert idle["entrypoints"] == [] and idle["job_ids"] == []
            assert idle["seconds_since_newest_heartbeat"] is None
            [session] = idle["sessions"]  # the LISTEN connection only, not the pool's
            assert session["pid"] == pid and session["application_name"] == name
            assert session["backend_start"] and session["state"] == "idle"
            assert session["client_addr"] or session["client_port"] == -1
            text = ok(dsn, "workers")
            [row] = [line.split() for line in text.splitlines() if worker_id[:8] in line]
            assert row[:5] == [worker_id[:8], "0", "-", "connected", str(pid)]
            assert row[-1] == "-"  # no entrypoint known for an idle worker
            snapshot = json.loads(ok(dsn, "dashboard", "--once", "--json"))
            assert [w["queue_manager_id"] for w in snapshot["workers"]] == [worker_id]

            # Busy: the same row now carries the job it holds.
            [job_id] = queries.enqueue("resize_image", SECRET)
            assert started.wait(10), "the handler did not start"
            busy = workers_json(dsn)[worker_id]
            assert (busy["seen"], busy["active_jobs"]) == ("connected", 1)
            assert (busy["job_ids"], busy["entrypoints"]) == ([job_id], ["resize_image"])
            assert busy["seconds_since_newest_heartbeat"] < 30
            assert SECRET.decode() not in ok(dsn, "workers") + ok(dsn, "workers", "--json")
            gate.set()
            wait_for(lambda: workers_json(dsn)[worker_id]["active_jobs"] == 0,
                     what="the job to finish")
        # Stopped: the session is closed, so the worker is gone from the list.
        wait_for(lambda: not sessions_named(conn, name), what="the session to close")
        assert worker_id not in workers_json(dsn)
        assert ok(dsn, "workers").strip() == "no worker is connected and none holds picked jobs"


def test_jobs_held_without_a_session_are_listed_as_holding_or_stale(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries
) -> None:
    queries.enqueue(["sync_crm"] * 3, [SECRET] * 3)
    held = queries.dequeue(2, {"sync_crm": 0}, PGQUEUER_HOLDER, None, timedelta(seconds=30))
    [gone] = queries.dequeue(1, {"sync_crm": 0}, GONE_HOLDER, None, timedelta(seconds=30))
    conn.execute("UPDATE pgqueuer SET heartbeat = NOW() - interval '10 minutes' WHERE id = %s",
                 [gone.id])
    data = workers_json(dsn)
    assert set(data) == {str(PGQUEUER_HOLDER), str(GONE_HOLDER)}
    alive, dead = data[str(PGQUEUER_HOLDER)], data[str(GONE_HOLDER)]
    assert (alive["seen"], alive["sessions"], alive["active_jobs"]) == ("holding", [], 2)
    assert alive["job_ids"] == sorted(j.id for j in held)
    assert (dead["seen"], dead["job_ids"]) == ("stale", [gone.id])
    assert 595 < dead["seconds_since_newest_heartbeat"] < 660
    rows = {line.split()[0]: line.split() for line in ok(dsn, "workers").splitlines()[2:]}
    assert rows[str(PGQUEUER_HOLDER)[:8]][1:2] + rows[str(PGQUEUER_HOLDER)[:8]][4:6] == [
        "2", "holding", "-"]
    assert "stale" in rows[str(GONE_HOLDER)[:8]]
    # With a longer heartbeat timeout, the 10-minute-old one counts as alive.
    longer = workers_json(dsn, heartbeat_timeout="1h")
    assert longer[str(GONE_HOLDER)]["seen"] == "holding"


def test_only_workers_of_this_queue_are_listed(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries
) -> None:
    other = DBSettings(prefix="other_")
    Schema(SyncPsycopgDriver(conn), other).install()
    with pool_for(dsn) as pool:
        pgq = PgQueuer.from_psycopg_pool(pool, settings=other)

        @pgq.entrypoint("elsewhere")
        def elsewhere(job: Job) -> None:
            pass

        worker_id = str(pgq.qm.queue_manager_id)
        with running(pgq, dequeue_timeout=1):
            wait_for(lambda: pgq.qm.idle_waits > 0, what="the worker to be idle")
            listed = wait_for(lambda: workers_json(dsn, "--prefix", "other_").get(worker_id),
                              what="listed under its own prefix")
            assert listed["sessions"][0]["application_name"].endswith(
                f" {queue_oid(conn, 'other_pgqueuer')}")
            assert worker_id not in workers_json(dsn)  # the default queue's list


def test_label_without_a_queue_table_leaves_the_oid_out(
    conn: psycopg.Connection[Any],
) -> None:
    worker_id = uuid.uuid4()
    name = label_worker_session(conn, worker_id, DBSettings(prefix="nosuch_"))
    assert name == f"pgq-sync worker {worker_id}"
    widest = f"{WORKER_SESSION_PREFIX}{worker_id} {2**32 - 1}"
    assert len(widest.encode()) == 63  # PostgreSQL keeps 63 bytes of application_name
    assert label_worker_session(conn, worker_id, DBSettings()) == (
        f"pgq-sync worker {worker_id} {queue_oid(conn)}")


# -- stale ------------------------------------------------------------------------------------


def test_stale_defaults_to_the_heartbeat_timeout_and_counts_re_picks(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries
) -> None:
    assert DEFAULT_STALE_THRESHOLD is options.HEARTBEAT_TIMEOUT
    old, recent, fresh = queries.enqueue(["send_email"] * 3, [SECRET] * 3)
    queries.dequeue(3, {"send_email": 0}, GONE_HOLDER, None, timedelta(seconds=30))
    conn.execute("UPDATE pgqueuer SET heartbeat = NOW() - interval '10 minutes' WHERE id = %s",
                 [old])
    conn.execute("UPDATE pgqueuer SET heartbeat = NOW() - interval '20 seconds' WHERE id = %s",
                 [recent])

    default = invoke(dsn, "stale")  # 30 s: only the 10-minute-old heartbeat
    assert [line.split()[0] for line in default.stdout.splitlines()[2:]] == [str(old)]
    assert "re-picked: 1 of 1 listed job(s)" in " ".join(default.stderr.split())
    [job] = json.loads(ok(dsn, "stale", "--json"))
    assert (job["id"], job["repickable"]) == (old, True)

    wider = invoke(dsn, "stale", "-t", "10s")
    assert [line.split()[0] for line in wider.stdout.splitlines()[2:]] == [str(old), str(recent)]
    note = " ".join(wider.stderr.split())
    assert "re-picked: 1 of 2 listed job(s)" in note and "the other 1 will be" in note
    by_id = {j["id"]: j["repickable"] for j in json.loads(ok(dsn, "stale", "-t", "10s",
                                                             "--json"))}
    assert by_id == {old: True, recent: False}
    shorter = invoke(dsn, "stale", "-t", "10s", "--heartbeat-timeout", "15s")
    assert "re-picked: 2 of 2 listed job(s)" in " ".join(shorter.stderr.split())
    assert "no picked job has a heartbeat older than 1h" in ok(dsn, "stale", "-t", "1h")

    # What the note promises: a worker with the default timeout re-claims exactly those.
    claimed = queries.dequeue(10, {"send_email": 0}, uuid.uuid4(), None,
                              options.HEARTBEAT_TIMEOUT)
    assert [j.id for j in claimed] == [old]
    assert fresh not in [j["id"] for j in json.loads(ok(dsn, "stale", "-t", "10s", "--json"))]


# -- dashboard: wait and run times, and the no-worker flag -------------------------------------

# (entrypoint, job_id, [(status, seconds before now)]), ids far from the queue's own.
HAND_MADE_LOG: list[tuple[str, int, list[tuple[str, float]]]] = [
    # waits 1, 2, 3, 4, 10 s; runs 0.5, 1, 1.5, 2, 6 s
    *[("timed", 900_000 + k, [("queued", 200 - 20 * k), ("picked", 200 - 20 * k - wait),
                              ("successful", 200 - 20 * k - wait - run)])
      for k, (wait, run) in enumerate([(1, 0.5), (2, 1), (3, 1.5), (4, 2), (10, 6)])],
    # queued before the 5-minute window: its wait (300 s) is found through the index
    ("slow", 900_100, [("queued", 400), ("picked", 100), ("successful", 40)]),
    # a stale re-pick: the second pick is not a wait; the run counts from it
    ("repicked", 900_200, [("queued", 100), ("picked", 90), ("picked", 50),
                           ("successful", 20)]),
    # a retried attempt (logged 'queued') is not a run; both picks are waits (5 s, 10 s)
    ("retried", 900_300, [("queued", 100), ("picked", 95), ("queued", 90), ("picked", 80),
                          ("exception", 70)]),
    # entirely before the window: ignored
    ("timed", 900_400, [("queued", 1200), ("picked", 1100), ("successful", 1000)]),
]


def insert_hand_made_log(conn: psycopg.Connection[Any]) -> None:
    rows = [(entrypoint, job_id, status, seconds)
            for entrypoint, job_id, steps in HAND_MADE_LOG for status, seconds in steps]
    with conn.transaction(), conn.cursor() as cur:  # one transaction: one NOW() for all rows
        cur.executemany(
            "INSERT INTO pgqueuer_log (created, job_id, status, priority, entrypoint) "
            "VALUES (NOW() - make_interval(secs => %s), %s, %s, 0, %s)",
            [(seconds, job_id, status, entrypoint) for entrypoint, job_id, status, seconds in rows],
        )


def make_ready(conn: psycopg.Connection[Any], queries: Queries, entrypoint: str,
               ready_for: str) -> int:
    [job_id] = queries.enqueue(entrypoint, SECRET)
    conn.execute("UPDATE pgqueuer SET created = NOW() - %s::interval, "
                 "execute_after = NOW() - %s::interval WHERE id = %s",
                 [ready_for, ready_for, job_id])
    return job_id


def test_dashboard_wait_and_run_percentiles_match_a_hand_made_log(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries
) -> None:
    insert_hand_made_log(conn)
    snapshot = json.loads(ok(dsn, "dashboard", "--once", "--json"))
    latency = {t["entrypoint"]: t for t in snapshot["latency"]}
    assert set(latency) == {"timed", "slow", "repicked", "retried"}
    approx = pytest.approx
    timed = latency["timed"]
    assert (timed["picked"], timed["waited"], timed["finished"]) == (5, 5, 5)
    # percentile_cont: p50 is the middle value, p95 interpolates 80% from 4th to 5th
    assert (timed["wait_p50"], timed["wait_p95"]) == (approx(3.0, abs=1e-3),
                                                      approx(4 + 0.8 * 6, abs=1e-3))
    assert (timed["run_p50"], timed["run_p95"]) == (approx(1.5, abs=1e-3),
                                                    approx(2 + 0.8 * 4, abs=1e-3))
    assert timed["window_seconds"] == 300
    slow = latency["slow"]
    assert (slow["waited"], slow["wait_p50"], slow["run_p95"]) == (1, approx(300, abs=1e-3),
                                                                   approx(60, abs=1e-3))
    repicked = latency["repicked"]
    assert (repicked["picked"], repicked["waited"], repicked["finished"]) == (2, 1, 1)
    assert (repicked["wait_p50"], repicked["run_p50"]) == (approx(10, abs=1e-3),
                                                           approx(30, abs=1e-3))
    retried = latency["retried"]
    assert (retried["picked"], retried["waited"], retried["finished"]) == (2, 2, 1)
    assert (retried["wait_p50"], retried["wait_p95"]) == (approx(7.5, abs=1e-3),
                                                          approx(5 + 0.95 * 5, abs=1e-3))
    assert retried["run_p50"] == approx(10, abs=1e-3)

    text = ok(dsn, "dashboard", "--once")
    section = text.split("\nQueue wait and run time (log, last 5 minutes)\n")[1].split("\n\n")[0]
    rows = {line.split()[0]: line.split()[1:] for line in section.splitlines()[2:]}
    assert rows["timed"] == ["5", "3.0s", "8.8s", "5", "1.5s", "5.2s"]
    assert rows["slow"][1:3] == ["5m00s", "5m00s"]
    assert "Ready, but" not in text  # nothing waits


def test_dashboard_flags_ready_work_no_worker_takes(
    dsn: str, conn: psycopg.Connection[Any], queries: Queries
) -> None:
    insert_hand_made_log(conn)
    make_ready(conn, queries, "orphan", "2 minutes")          # flagged
    make_ready(conn, queries, "orphan", "1 minute")           # (same entrypoint)
    make_ready(conn, queries, "timed", "2 minutes")           # picked in the window
    make_ready(conn, queries, "just_arrived", "5 seconds")    # within the grace
    make_ready(conn, queries, "running_long", "2 minutes")    # a job of it is running:
    make_ready(conn, queries, "running_long", "3 minutes")
    [running_job] = queries.dequeue(1, {"running_long": 0}, PGQUEUER_HOLDER, None,
                                    timedelta(seconds=30))
    conn.execute("UPDATE pgqueuer_log SET created = NOW() - interval '10 minutes' "
                 "WHERE job_id = %s", [running_job.id])  # picked long before the window
    queries.enqueue("deferred", SECRET, execute_after=timedelta(hours=1))
    assert UNSERVED_GRACE == options.DEQUEUE_TIMEOUT

    snapshot = json.loads(ok(dsn, "dashboard", "--once", "--json"))
    [flag] = snapshot["unserved"]
    assert (flag["entrypoint"], flag["ready"], flag["window_seconds"]) == ("orphan", 2, 300)
    assert 115 < flag["seconds_ready"] < 180
    text = ok(dsn, "dashboard", "--once")
    heading = "Ready, but no job of theirs picked in the last 5 minutes nor running"
    section = text.split(f"\n{heading}\n")[1].split("\n\n")[0]
    assert [line.split()[:2] for line in section.splitlines()[2:]] == [["orphan", "2"]]
    assert SECRET.decode() not in text

    # Once its running job's heartbeat is stale, running_long is flagged too.
    conn.execute("UPDATE pgqueuer SET heartbeat = NOW() - interval '5 minutes' WHERE id = %s",
                 [running_job.id])
    ops = OpsQueries(SyncPsycopgDriver(conn), DBSettings())
    assert [u.entrypoint for u in ops.unserved()] == ["running_long", "orphan"]


def test_empty_dashboard_says_nothing_was_measured(dsn: str) -> None:
    text = ok(dsn, "dashboard", "--once")
    assert "(no job was picked or finished in the last 5 minutes)" in text
    assert "\nWorkers (connected, or holding jobs)\n(none)" in text
    snapshot = json.loads(ok(dsn, "dashboard", "--once", "--json"))
    assert (snapshot["latency"], snapshot["unserved"], snapshot["workers"]) == ([], [], [])
