"""Optional return values: the opt-in results table, written with the outcome, read, pruned."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg.conninfo import conninfo_to_dict

from pgqueue_sync import (
    CompletionWatcher,
    DBSettings,
    Job,
    PgQueuer,
    Queries,
    Results,
    RetryRequested,
    SchemaError,
    SchemaNotInstalledError,
    SyncPsycopgDriver,
)
from pgqueue_sync.cli import cli
from pgqueue_sync.drivers import SyncPsycopgPoolDriver
from pgqueue_sync.results import StoredResult, encode_result
from pgqueue_sync.schema import Schema

from .worker_helpers import make_pgq, pool_for, running

FAST = {"dequeue_timeout": 0.5, "log_aggregation_interval": 0}
RESULTS_TABLE = "pgqueue_sync_results"


@pytest.fixture
def results(conn: psycopg.Connection[Any], settings: DBSettings) -> Results:
    """The results table, installed in the test database."""
    stored = Results(SyncPsycopgDriver(conn), settings)
    stored.install()
    return stored


def drain(pgq: PgQueuer) -> None:
    pgq.run(mode="drain", **FAST)


class RecordingDriver(SyncPsycopgPoolDriver):
    """A pool driver that remembers the text of every statement it runs."""

    def __init__(self, pool: Any) -> None:
        super().__init__(pool)
        self.statements: list[str] = []

    def fetch(self, query: Any, params: Any = None) -> list[dict[str, Any]]:
        self.statements.append(query.as_string())
        return super().fetch(query, params)


# -- storing --------------------------------------------------------------------------------


def test_sync_and_async_handlers_store_their_return_values(dsn, queries, results):
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool, store_results=True)

        @pgq.entrypoint("sync")
        def sync_handler(job: Job) -> dict[str, Any]:
            return {"doubled": int(job.payload or b"0") * 2, "text": "é\u20ac"}

        @pgq.entrypoint("async")
        async def async_handler(job: Job) -> list[int]:
            await asyncio.sleep(0)
            return [1, 2, 3]

        @pgq.entrypoint("nothing")
        def nothing(job: Job) -> None:
            return None

        sync_id, async_id, none_id = queries.enqueue(
            ["sync", "async", "nothing"], [b"21", None, None]
        )
        drain(pgq)
    stored = results.get_results([sync_id, async_id, none_id])
    assert stored[sync_id].result == {"doubled": 42, "text": "é\u20ac"}
    assert stored[async_id].result == [1, 2, 3]
    assert stored[none_id].result is None
    one = stored[sync_id]
    assert (one.job_id, one.entrypoint, one.status, one.error) == (
        sync_id, "sync", "successful", None
    )
    assert one.attempts == 0 and one.queue_manager_id == pgq.qm.queue_manager_id
    assert one.created is not None and one.created <= one.finished
    assert results.get_result(sync_id) == one
    assert results.get_result(10**12) is None
    # The job's outcome is the usual one.
    assert dict(queries.job_status([sync_id, async_id, none_id])) == dict.fromkeys(
        [sync_id, async_id, none_id], "successful"
    )


def build_failing(pool: Any, calls: dict[str, int]) -> PgQueuer:
    """A worker storing results, whose handlers fail, hold and retry."""
    pgq = make_pgq(pool, store_results=True)

    @pgq.entrypoint("boom")
    def boom(job: Job) -> None:
        raise ValueError("bad input")

    @pgq.entrypoint("hold", on_failure="hold")
    def hold(job: Job) -> str:
        calls["hold"] = calls.get("hold", 0) + 1
        if calls["hold"] == 1:
            raise RuntimeError("parked")
        return "second time lucky"

    @pgq.entrypoint("flaky")
    def flaky(job: Job) -> int:
        if job.attempts == 0:
            raise RetryRequested(delay=timedelta(milliseconds=20))
        return job.attempts

    return pgq


def test_failures_holds_and_retries_store_their_outcome(dsn, queries, results):
    calls: dict[str, int] = {}
    with pool_for(dsn) as pool:
        boom_id, hold_id, flaky_id = queries.enqueue(["boom", "hold", "flaky"], [None] * 3)
        drain(build_failing(pool, calls))
        first = results.get_results([boom_id, hold_id, flaky_id])
        boom_result = first[boom_id]
        assert (boom_result.status, boom_result.error) == ("exception", "ValueError: bad input")
        assert first[boom_id].result is None
        assert (first[hold_id].status, first[hold_id].error) == ("failed", "RuntimeError: parked")
        assert (first[flaky_id].status, first[flaky_id].result) == ("successful", 1)
        assert first[flaky_id].attempts == 1
        # A requeued held job that then succeeds replaces its row.
        assert queries.requeue_jobs([hold_id]) == [hold_id]
        drain(build_failing(pool, calls))  # a drained worker does not run again
    again = results.get_result(hold_id)
    assert again is not None
    assert (again.status, again.result, again.error) == ("successful", "second time lucky", None)
    assert again.finished > first[hold_id].finished


class Secret:
    def __repr__(self) -> str:
        return "TOP-SECRET-VALUE"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ({1, 2}, "set"),
        (Secret(), "Secret"),
        ({"x": math.nan}, "dict"),
        ("nul \x00 inside", "str"),
        ("lone \ud800 surrogate", "str"),
        ([Secret()], "list"),
    ],
)
def test_unserialisable_values_are_logged_and_noted_not_stored(
    dsn, queries, results, caplog, value, kind
):
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool, store_results=True)
        pgq.entrypoint("weird")(lambda job: value)
        [job_id] = queries.enqueue("weird", None)
        with caplog.at_level(logging.WARNING, logger="pgqueue_sync"):
            drain(pgq)
    stored = results.get_result(job_id)
    assert stored is not None and stored.status == "successful" and stored.result is None
    assert stored.error is not None
    assert stored.error.startswith(f"result not stored: {kind} is not JSON-serialisable")
    assert dict(queries.job_status([job_id])) == {job_id: "successful"}  # outcome unaffected
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("not JSON-serialisable" in r.getMessage() for r in warnings)
    assert not any("TOP-SECRET" in r.getMessage() or "nul" in r.getMessage() for r in warnings)


def test_text_that_merely_looks_like_an_escaped_nul_is_stored(dsn, queries, results):
    [job_id] = queries.enqueue("x", None)
    [job] = queries.dequeue(1, {"x": 0}, uuid.uuid4(), None, timedelta(seconds=30))
    assert encode_result(job, "a \\u0000 b").value == '"a \\\\u0000 b"'
    assert encode_result(job, "a \x00 b").value is None
    queries.log_jobs([(job, "successful", None)], results=[encode_result(job, "a \\u0000 b")])
    stored = results.get_result(job_id)
    assert stored is not None and stored.result == "a \\u0000 b"


def test_storing_is_chosen_per_worker_and_per_entrypoint(dsn, queries, results):
    with pool_for(dsn) as pool:
        off_by_default = make_pgq(pool)
        off_by_default.entrypoint("opted_in", store_result=True)(lambda job: "in")
        off_by_default.entrypoint("plain")(lambda job: "not kept")
        on_by_default = make_pgq(pool, store_results=True)
        on_by_default.entrypoint("kept")(lambda job: "kept")
        on_by_default.entrypoint("opted_out", store_result=False)(lambda job: "not kept")
        ids = queries.enqueue(["opted_in", "plain"], [None, None])
        drain(off_by_default)
        more = queries.enqueue(["kept", "opted_out"], [None, None])
        drain(on_by_default)
    stored = results.get_results([*ids, *more])
    assert {stored[i].result for i in stored} == {"in", "kept"}
    assert set(stored) == {ids[0], more[0]}


# -- the hot path ------------------------------------------------------------------------------


def test_without_results_no_table_is_needed_and_no_statement_touches_it(dsn, queries):
    with pool_for(dsn) as pool:
        driver = RecordingDriver(pool)
        pgq = PgQueuer(driver, settings=DBSettings())
        pgq.entrypoint("ok")(lambda job: {"ignored": True})
        ids = queries.enqueue(["ok"] * 30, [None] * 30)
        drain(pgq)
    assert dict(queries.job_status(ids)) == dict.fromkeys(ids, "successful")
    assert not any(RESULTS_TABLE in text for text in driver.statements)
    assert not any("to_regclass" in text for text in driver.statements)  # no startup check


def test_results_ride_in_the_outcome_statement_not_an_extra_round_trip(dsn, queries, results):
    with pool_for(dsn) as pool:
        driver = RecordingDriver(pool)
        pgq = PgQueuer(driver, settings=DBSettings(), store_results=True)
        pgq.entrypoint("ok")(lambda job: job.id)
        ids = queries.enqueue(["ok"] * 30, [None] * 30)
        drain(pgq)
    assert {r.result for r in results.get_results(ids).values()} == set(ids)
    writes = [text for text in driver.statements if RESULTS_TABLE in text]
    assert writes, "results were written"
    # Every statement that writes results is an outcome write (a DELETE of the queue row).
    assert all('DELETE FROM "pgqueuer"' in text for text in writes)


def test_a_worker_storing_results_refuses_to_start_without_the_table(dsn, queries):
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool, store_results=True)
        pgq.entrypoint("ok")(lambda job: 1)
        with pytest.raises(SchemaError, match="pgq-sync results install"):
            drain(pgq)
        only_one = make_pgq(pool)
        only_one.entrypoint("ok", store_result=True)(lambda job: 1)
        with pytest.raises(SchemaError, match="pgqueue_sync_results"):
            drain(only_one)


def test_outcomes_are_recorded_even_if_results_cannot_be(dsn, queries, results, caplog):
    me = uuid.uuid4()
    queries.enqueue(["x", "x", "x"], [None] * 3)
    jobs = queries.dequeue(3, {"x": 0}, me, None, timedelta(seconds=30))
    results.uninstall()  # dropped behind the worker's back
    with caplog.at_level(logging.ERROR, logger="pgqueue_sync"):
        logged = queries.log_jobs(
            [(jobs[0], "successful", None)], results=[StoredResult(jobs[0], "1")]
        )
        queries.dequeue(
            3, {"x": 0}, me, None, timedelta(seconds=30),
            completed=[(jobs[1], "successful", None)], results=[StoredResult(jobs[1], "2")],
        )
    assert logged == [jobs[0].id]
    assert dict(queries.job_status([j.id for j in jobs[:2]])) == {
        jobs[0].id: "successful", jobs[1].id: "successful"
    }
    assert sum("could not store the results" in r.getMessage() for r in caplog.records) == 2


def test_cancelled_jobs_get_no_result_row(dsn, queries, results):
    me = uuid.uuid4()
    queries.enqueue("x", None)
    [job] = queries.dequeue(1, {"x": 0}, me, None, timedelta(seconds=30))
    queries.mark_job_as_cancelled([job.id])
    queries.log_jobs([(job, "successful", None)], results=[StoredResult(job, '"late"')])
    assert results.get_result(job.id) is None
    assert dict(queries.job_status([job.id])) == {job.id: "canceled"}


def test_in_memory_adapter_refuses_to_store_results():
    pgq = PgQueuer.in_memory()
    pgq.qm.store_results = True
    pgq.entrypoint("x")(lambda job: 1)
    with pytest.raises(Exception, match="in-memory adapter cannot store"):
        pgq.run(mode="drain", **FAST)


# -- reading ------------------------------------------------------------------------------------


def test_the_completion_watcher_returns_results(dsn, queries, results):
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool, store_results=True)
        pgq.entrypoint("square")(lambda job: int(job.payload) ** 2)
        pgq.entrypoint("boom")(lambda job: 1 / 0)
        with running(pgq, **FAST), CompletionWatcher(dsn) as watcher:
            [one] = queries.enqueue("square", b"7")
            stored = watcher.wait_for_result(one, timeout=10)
            assert stored is not None and stored.result == 49
            ids = queries.enqueue(["square", "boom", "square"], [b"2", None, b"3"])
            many = watcher.wait_for_results(ids, timeout=10)
    assert list(many) == ids
    assert [r.result if r else None for r in many.values()] == [4, None, 9]
    boom = many[ids[1]]
    assert boom is not None and boom.status == "exception"
    assert boom.error == "ZeroDivisionError: division by zero"


def test_reading_without_the_table_names_the_fix(queries):
    with pytest.raises(SchemaNotInstalledError, match="pgq-sync results install"):
        Results(queries).get_result(1)
    with pytest.raises(SchemaNotInstalledError, match="pgq-sync results install"):
        Results(queries).prune_results(timedelta(days=1))


# -- install, prune, CLI ------------------------------------------------------------------------


def test_install_is_idempotent_and_separate_from_the_queue_schema(conn, settings):
    driver = SyncPsycopgDriver(conn)
    schema = Schema(driver, settings)
    stored = Results(driver, settings)
    assert not stored.is_installed()
    schema.install_results()
    schema.install_results()
    assert stored.is_installed()
    # Our own verify and upgrade plan ignore it, as PgQueuer's do.
    assert schema.verify("present") == [] and schema.plan_upgrade() == []
    schema.uninstall()
    assert schema.verify("absent") == [] and stored.is_installed()
    schema.uninstall_results()
    assert not stored.is_installed()


def test_results_in_a_schema_with_a_prefix(empty_dsn):
    settings = DBSettings(prefix="acme_", db_schema="jobs")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        Schema(SyncPsycopgDriver(conn), settings).install()
        Schema(SyncPsycopgDriver(conn), settings).install_results()
        assert conn.execute(
            "SELECT to_regclass('jobs.acme_pgqueue_sync_results') IS NOT NULL"
        ).fetchone() == (True,)
        with pool_for(empty_dsn) as pool:
            pgq = PgQueuer.from_psycopg_pool(pool, settings=settings, store_results=True)
            pgq.entrypoint("ok")(lambda job: "in a schema")
            [job_id] = Queries(SyncPsycopgDriver(conn), settings=settings).enqueue("ok", None)
            drain(pgq)
        stored = Results(SyncPsycopgDriver(conn), settings).get_result(job_id)
    assert stored is not None and stored.result == "in a schema"


def _seed(conn: psycopg.Connection[Any], ages_in_days: list[float]) -> None:
    for i, days in enumerate(ages_in_days, start=1):
        conn.execute(
            f"INSERT INTO {RESULTS_TABLE} (job_id, entrypoint, status, result, finished) "
            "VALUES (%s, 'x', 'successful', '1', now() - %s * interval '1 day')",
            [i, days],
        )


def test_prune_deletes_only_old_results_in_batches(conn, results):
    _seed(conn, [10, 9, 8, 8, 30, 1, 0])
    assert results.prune_results(timedelta(days=7), batch_size=2) == 5
    assert sorted(results.get_results(range(1, 8))) == [6, 7]
    assert results.prune_results(timedelta(days=7)) == 0
    assert results.prune_results(0) == 2


def invoke(dsn: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--dsn", dsn, *args], catch_exceptions=False)


def test_cli_install_show_prune_and_uninstall(empty_dsn):
    dry = invoke(empty_dsn, "install", "--results", "--dry-run")
    assert dry.exit_code == 0 and f'CREATE TABLE IF NOT EXISTS "{RESULTS_TABLE}"' in dry.output
    done = invoke(empty_dsn, "install", "--results")
    assert done.exit_code == 0 and RESULTS_TABLE in done.output, done.output
    assert invoke(empty_dsn, "verify", "--expect", "present").exit_code == 0
    assert invoke(empty_dsn, "results", "install").exit_code == 0  # idempotent
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        _seed(conn, [10, 9, 1])
        conn.execute(f"UPDATE {RESULTS_TABLE} SET result = '{{\"a\": 1}}' WHERE job_id = 3")
    shown = invoke(empty_dsn, "results", "show", "3", "--json")
    assert shown.exit_code == 0 and '"a": 1' in shown.output and '"job_id": 3' in shown.output
    table = invoke(empty_dsn, "results", "show", "3", "99")
    assert table.exit_code == 0 and "successful" in table.output
    assert invoke(empty_dsn, "results", "show", "99").exit_code == 1
    pruned = invoke(empty_dsn, "results", "prune", "--older-than", "7d")
    assert pruned.exit_code == 0 and "deleted 2 result(s)" in pruned.output
    bad = CliRunner().invoke(cli, ["--dsn", empty_dsn, "results", "prune", "--older-than", "x"])
    assert bad.exit_code == 2
    assert invoke(empty_dsn, "results", "uninstall", "--yes").exit_code == 0
    gone = CliRunner().invoke(cli, ["--dsn", empty_dsn, "results", "show", "3"])
    assert gone.exit_code == 1 and "pgq-sync results install" in gone.output


# -- PgQueuer ignores the table -----------------------------------------------------------------


def _pgq() -> str | None:
    found = shutil.which("pgq")
    beside = Path(sys.executable).parent / "pgq"
    return found or (str(beside) if beside.exists() else None)


def _run_pgq(dsn: str, *args: str, env_extra: dict[str, str]) -> tuple[int, str]:
    pgq = _pgq()
    if pgq is None:
        pytest.skip("needs the pgq CLI (pgqueuer==1.6.0)")
    params = conninfo_to_dict(dsn)
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("PGQUEUER_", "PG", "PGQUEUE"))}
    libpq = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
             "dbname": "PGDATABASE"}
    env.update({var: str(params[key]) for key, var in libpq.items() if params.get(key)})
    env.update(env_extra)
    done = subprocess.run([pgq, *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.interop
@pytest.mark.parametrize("naming", ["default", "schema"])
def test_pgq_verify_and_upgrade_ignore_the_results_table(empty_dsn, naming):
    env = {"PGQUEUER_SCHEMA": "jobs"} if naming == "schema" else {}
    settings = DBSettings(db_schema=env.get("PGQUEUER_SCHEMA"))
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        schema = Schema(SyncPsycopgDriver(conn), settings)
        schema.install()
        schema.install_results()
        code, out = _run_pgq(empty_dsn, "upgrade", "--plan", env_extra=env)
        assert code == 0 and "PgQueuer schema is already up to date." in out, out
        code, out = _run_pgq(empty_dsn, "verify", "--expect", "present", env_extra=env)
        assert code == 0, out
        # The table depends on nothing of PgQueuer's: `pgq uninstall` still works.
        code, out = _run_pgq(empty_dsn, "uninstall", env_extra=env)
        assert code == 0, out
        code, out = _run_pgq(empty_dsn, "verify", "--expect", "absent", env_extra=env)
        assert code == 0, out
        assert Results(SyncPsycopgDriver(conn), settings).is_installed()
