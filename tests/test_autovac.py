"""``pgq-sync autovac``: per-table autovacuum parameters, their reset, and the bloat figures.

Real PostgreSQL: each test works in its own copy of the template database.
The test server runs with autovacuum off, so the warning for that case is
checked for real; the other cases go through :func:`autovacuum_warning` with
made-up settings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgqueue_sync.cli import autovac as cli_autovac
from pgqueue_sync.cli import cli
from pgqueue_sync.cli.autovac import autovacuum_warning
from pgqueue_sync.errors import ConfigurationError
from pgqueue_sync.settings import DBSettings
from pgqueue_sync.sql.autovac import (
    LOG_TUNING,
    QUEUE_TUNING,
    TUNINGS,
    Parameter,
    reset_statements,
    set_statements,
)

from .test_cli import invoke, one_line_error, pgq_sync
from .worker_helpers import login_role, wait_for

#: What the apply must leave in pg_class.reloptions, spelled out (the constants'
#: values as the server stores them), so a change of value is a visible change here.
QUEUE_OPTIONS = [
    "autovacuum_vacuum_scale_factor=0.01",
    "autovacuum_vacuum_threshold=1000",
    "autovacuum_analyze_scale_factor=0.02",
    "autovacuum_analyze_threshold=1000",
    "autovacuum_vacuum_cost_limit=2000",
    "autovacuum_vacuum_cost_delay=2",
]
LOG_OPTIONS = [
    "autovacuum_vacuum_scale_factor=0.05",
    "autovacuum_vacuum_threshold=10000",
    "autovacuum_vacuum_insert_scale_factor=0.05",
    "autovacuum_vacuum_insert_threshold=10000",
]
TABLES = ("pgqueuer", "pgqueuer_log", "pgqueuer_statistics", "pgqueuer_schedules")


def reloptions(conn: psycopg.Connection[Any], table: str) -> list[str] | None:
    row = conn.execute("SELECT reloptions FROM pg_class WHERE oid = %s::regclass",
                       [table]).fetchone()
    assert row is not None
    return row[0]


def all_reloptions(conn: psycopg.Connection[Any],
                   tables: tuple[str, ...] = TABLES) -> dict[str, list[str] | None]:
    return {table: reloptions(conn, table) for table in tables}


def server_autovacuum(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SHOW autovacuum").fetchone()
    assert row is not None
    return str(row[0])


def show_json(dsn: str, *extra: str, **kwargs: Any) -> dict[str, Any]:
    result = invoke(dsn, *extra, "autovac", "--show", "--json", **kwargs)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


# -- dry run ---------------------------------------------------------------------------------


def test_dry_run_prints_the_statements_and_changes_nothing(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    result = invoke(dsn, "autovac", "--dry-run")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert 'ALTER TABLE "pgqueuer" SET (' in out
    assert 'ALTER TABLE "pgqueuer_log" SET (' in out
    for option in QUEUE_OPTIONS + LOG_OPTIONS:
        assert option.replace("=", " = ") in out
    assert out.index("BEGIN;") < out.index("ALTER TABLE") < out.index("COMMIT;")
    assert "pgqueuer_statistics" not in out  # the defaults suit it: nothing to set
    assert "pgqueuer_schedules" not in out
    assert all_reloptions(conn) == dict.fromkeys(TABLES)

    reset = invoke(dsn, "autovac", "--dry-run", "--reset")
    assert reset.exit_code == 0
    assert 'ALTER TABLE "pgqueuer" RESET (' in reset.stdout
    assert 'ALTER TABLE "pgqueuer_log" RESET (' in reset.stdout
    assert "= " not in reset.stdout.split("BEGIN;")[1]
    assert all_reloptions(conn) == dict.fromkeys(TABLES)


def test_dry_run_needs_no_database_and_names_prefixed_tables_in_their_schema() -> None:
    nowhere = "host=127.0.0.1 port=1 dbname=nothing connect_timeout=1"
    result = invoke(nowhere, "--schema", "jobs", "autovac", "--dry-run", prefix="acme_")
    assert result.exit_code == 0, result.output
    assert 'ALTER TABLE "jobs"."acme_pgqueuer" SET (' in result.stdout
    assert 'ALTER TABLE "jobs"."acme_pgqueuer_log" SET (' in result.stdout
    assert '"pgqueuer"' not in result.stdout
    assert "prefix='acme_' schema='jobs'" in result.stdout


# -- apply, reset, idempotence ---------------------------------------------------------------


def test_apply_sets_reloptions_exactly_as_declared(dsn: str, conn: psycopg.Connection[Any]) -> None:
    result = invoke(dsn, "autovac")
    assert result.exit_code == 0, result.output
    summary = "set 10 autovacuum parameters on pgqueuer and pgqueuer_log"
    assert result.stdout.splitlines()[0] == summary
    assert reloptions(conn, "pgqueuer") == QUEUE_OPTIONS
    assert reloptions(conn, "pgqueuer_log") == LOG_OPTIONS
    assert reloptions(conn, "pgqueuer_statistics") is None
    assert reloptions(conn, "pgqueuer_schedules") is None
    # The declaration and the spelled-out lists agree.
    assert QUEUE_TUNING.settings == QUEUE_OPTIONS and LOG_TUNING.settings == LOG_OPTIONS
    # Every parameter is one PostgreSQL applies: the effective values are ours.
    row = conn.execute(
        "SELECT option_value FROM pg_options_to_table("
        "(SELECT reloptions FROM pg_class WHERE oid = 'pgqueuer'::regclass)) "
        "WHERE option_name = 'autovacuum_vacuum_cost_limit'"
    ).fetchone()
    assert row == ("2000",)


def test_apply_is_idempotent_and_reset_removes_only_ours(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    # An operator's own parameter, set before: it stays through apply and reset.
    conn.execute("ALTER TABLE pgqueuer SET (fillfactor = 90)")
    for _ in range(2):
        result = invoke(dsn, "autovac")
        assert result.exit_code == 0, result.output
        assert sorted(reloptions(conn, "pgqueuer") or []) == sorted(["fillfactor=90",
                                                                     *QUEUE_OPTIONS])
        assert reloptions(conn, "pgqueuer_log") == LOG_OPTIONS
    for _ in range(2):
        result = invoke(dsn, "autovac", "--reset")
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[0] == (
            "reset 10 autovacuum parameters on pgqueuer and pgqueuer_log: the server's "
            "defaults apply again"
        )
        assert all_reloptions(conn) == {**dict.fromkeys(TABLES), "pgqueuer": ["fillfactor=90"]}


def test_rollback_is_pgqueuer_2s_name_for_reset(dsn: str, conn: psycopg.Connection[Any]) -> None:
    assert invoke(dsn, "autovac").exit_code == 0
    result = invoke(dsn, "autovac", "--rollback")
    assert result.exit_code == 0, result.output
    assert all_reloptions(conn) == dict.fromkeys(TABLES)


def test_apply_is_one_transaction(dsn: str, conn: psycopg.Connection[Any]) -> None:
    """The log table's ALTER fails, so the queue table's, which ran first, is undone."""
    conn.execute("DROP TABLE pgqueuer_log")
    result = pgq_sync("--dsn", dsn, "autovac")
    assert result.returncode == 1
    line = one_line_error(result)
    assert 'relation "pgqueuer_log" does not exist' in line and "pgq-sync install" in line
    assert reloptions(conn, "pgqueuer") is None


def test_apply_does_not_wait_for_running_workers(dsn: str, connect: Any) -> None:
    """A worker's open transaction (claimed, heartbeat, finished rows) does not block it:
    ALTER TABLE ... SET (autovacuum_*) takes SHARE UPDATE EXCLUSIVE, which row locks
    and ROW EXCLUSIVE do not conflict with."""
    worker = connect(autocommit=False)
    worker.execute("INSERT INTO pgqueuer (priority, entrypoint, status) "
                   "VALUES (0, 'a', 'queued'), (0, 'b', 'queued')")
    worker.commit()
    worker.execute("UPDATE pgqueuer SET status = 'picked', heartbeat = NOW() "
                   "WHERE entrypoint = 'a'")
    worker.execute("DELETE FROM pgqueuer WHERE entrypoint = 'b'")
    worker.execute("INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority) "
                   "VALUES (1, 'picked', 'a', 0)")
    try:
        started = time.monotonic()
        result = invoke(dsn, "autovac")
        assert result.exit_code == 0, result.output
        assert time.monotonic() - started < 5
    finally:
        worker.rollback()


def test_a_conflicting_lock_times_out_with_one_line_and_changes_nothing(
    dsn: str, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_autovac, "LOCK_TIMEOUT_MS", 300)
    vacuum_like = connect(autocommit=False)  # what a running VACUUM holds
    vacuum_like.execute("LOCK TABLE pgqueuer_log IN SHARE UPDATE EXCLUSIVE MODE")
    try:
        result = invoke(dsn, "autovac")
    finally:
        vacuum_like.rollback()
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "Error: could not lock the queue tables within 0.3s: another session is running "
        "VACUUM, ANALYZE, CREATE INDEX or ALTER TABLE on one of them; nothing was changed, "
        "run it again when that finishes"
    ]
    check = connect()
    assert all_reloptions(check) == dict.fromkeys(TABLES)


# -- prefix and schema -----------------------------------------------------------------------


def test_prefix_and_schema(empty_dsn: str) -> None:
    assert invoke(empty_dsn, "--schema", "jobs", "install", prefix="acme_").exit_code == 0
    result = invoke(empty_dsn, "--schema", "jobs", "autovac", prefix="acme_")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        "set 10 autovacuum parameters on jobs.acme_pgqueuer and jobs.acme_pgqueuer_log"
    )
    assert "jobs.acme_pgqueuer_statistics" in result.stdout
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        assert reloptions(conn, "jobs.acme_pgqueuer") == QUEUE_OPTIONS
        assert reloptions(conn, "jobs.acme_pgqueuer_log") == LOG_OPTIONS
        assert conn.execute("SELECT to_regclass('public.pgqueuer')").fetchone() == (None,)
        # The variables work as the options do.
        env = {"PGQUEUER_PREFIX": "acme_", "PGQUEUER_SCHEMA": "jobs"}
        reset = CliRunner().invoke(cli, ["--dsn", empty_dsn, "autovac", "--reset"], env=env,
                                   catch_exceptions=False)
        assert reset.exit_code == 0, reset.output
        assert reloptions(conn, "jobs.acme_pgqueuer") is None
        assert reloptions(conn, "jobs.acme_pgqueuer_log") is None
    data = show_json(empty_dsn, "--schema", "jobs", prefix="acme_")
    assert [t["table"] for t in data["tables"]] == [f"jobs.acme_{name}" for name in TABLES]


def test_missing_schema_is_one_line(empty_dsn: str) -> None:
    for args in (("autovac",), ("autovac", "--show")):
        result = pgq_sync("--dsn", empty_dsn, *args)
        assert result.returncode == 1
        line = one_line_error(result)
        assert 'relation "pgqueuer" does not exist' in line
        assert "pgq-sync install" in line


# -- permissions -----------------------------------------------------------------------------


@pytest.fixture
def stranger(server_dsn: str, dsn: str) -> Iterator[str]:
    """A LOGIN role that owns nothing and has no grants (PUBLIC's defaults only)."""
    with login_role(server_dsn, "pgqs_autovac") as name:
        yield name


def test_a_role_that_does_not_own_the_tables_gets_one_line_naming_the_owner(
    dsn: str, conn: psycopg.Connection[Any], stranger: str
) -> None:
    owner_row = conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class "
                             "WHERE oid = 'pgqueuer'::regclass").fetchone()
    assert owner_row is not None
    as_stranger = make_conninfo(dsn, user=stranger)
    result = pgq_sync("--dsn", as_stranger, "autovac")
    assert result.returncode == 1
    line = one_line_error(result)
    assert line == (
        f"Error: must be owner of table pgqueuer: only the tables' owner (role "
        f"{owner_row[0]!r}) or a superuser may change their storage parameters; run "
        "'pgq-sync autovac' connected as that role, or have it run the SQL of "
        "'pgq-sync autovac --dry-run'"
    )
    assert "grants" not in line  # the driver's hint for missing grants does not apply
    assert all_reloptions(conn) == dict.fromkeys(TABLES)
    # Looking needs no ownership.
    shown = pgq_sync("--dsn", as_stranger, "autovac", "--show")
    assert shown.returncode == 0, shown.stderr
    assert "pgqueuer_schedules" in shown.stdout


# -- the figures -----------------------------------------------------------------------------


def test_show_reports_dead_rows_and_changes_nothing(
    dsn: str, conn: psycopg.Connection[Any], connect: Any
) -> None:
    churn = connect(autocommit=False)  # one transaction: no pruning between the steps
    churn.execute("INSERT INTO pgqueuer (priority, entrypoint, status) "
                  "SELECT 0, 'e', 'queued' FROM generate_series(1, 3000)")
    churn.execute("UPDATE pgqueuer SET status = 'picked' WHERE id <= 2000")
    churn.execute("DELETE FROM pgqueuer WHERE id <= 2000")
    churn.commit()
    churn.close()  # a backend flushes its statistics when it exits
    data = wait_for(lambda: (d := show_json(dsn))["tables"][0]["dead"] >= 4000 and d,
                    timeout=15, interval=0.2, what="the dead rows counted")
    queue = data["tables"][0]
    assert queue["table"] == "pgqueuer" and queue["found"] is True
    assert (queue["live"], queue["dead"]) == (1000, 4000)  # 2,000 updated, then deleted
    assert queue["last_autovacuum"] is None and queue["last_vacuum"] is None
    assert queue["vacuum_at"] == 50  # the server's default threshold; never analyzed
    assert queue["parameters"] == {} and queue["autovacuum_enabled"] is True
    assert queue["index_bytes"] > 0 and queue["table_bytes"] > 0
    assert data["server"]["track_counts"] == "on"
    assert [t["table"] for t in data["tables"]] == list(TABLES)
    assert all_reloptions(conn) == dict.fromkeys(TABLES)

    conn.execute("VACUUM (ANALYZE) pgqueuer")
    assert invoke(dsn, "autovac").exit_code == 0
    result = invoke(dsn, "autovac", "--show")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    queue_line = next(line for line in lines if line.startswith("pgqueuer "))
    # 1,000 + 0.01 x 1,000 live rows; vacuumed just now, never by autovacuum.
    assert queue_line.split()[:5] == ["pgqueuer", "1000", "0", "1010", "never"]
    assert "ago" in queue_line
    assert "pgqueuer      autovacuum_vacuum_cost_limit           2000" in lines
    assert lines[-1] == "pgqueuer_statistics and pgqueuer_schedules: none (the server's " \
                        "settings apply)"
    data = show_json(dsn)
    assert data["tables"][0]["parameters"]["autovacuum_vacuum_scale_factor"] == "0.01"
    assert data["tables"][1]["vacuum_at"] == 10_000


def test_the_autovacuum_off_warning_on_this_server(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    if server_autovacuum(conn) != "off":
        pytest.skip("this server runs autovacuum; the warning is checked with fake values")
    result = invoke(dsn, "autovac")
    assert result.exit_code == 0
    assert "warning" not in result.stdout
    warning = result.stderr.splitlines()
    assert warning[0].startswith("warning: autovacuum is off on this server: per-table "
                                 "autovacuum parameters do nothing until autovacuum runs")
    assert "ALTER SYSTEM SET autovacuum = on; SELECT pg_reload_conf();" in warning[1]
    assert warning[3].endswith("""psql "$DATABASE_URL" -c 'VACUUM (ANALYZE) "pgqueuer"'""")
    # --show warns too; --json carries it and keeps stdout JSON.
    assert result.stderr == invoke(dsn, "autovac", "--show").stderr
    data = show_json(dsn)
    assert data["server"]["autovacuum"] == "off"
    assert data["warning"].startswith("warning: autovacuum is off")


def test_the_warning_text_for_each_setting() -> None:
    settings = DBSettings(prefix="acme_", db_schema="jobs")
    assert autovacuum_warning(settings, autovacuum="on", track_counts="on") is None
    off = autovacuum_warning(settings, autovacuum="off", track_counts="on")
    assert off is not None
    assert off.splitlines() == [
        "warning: autovacuum is off on this server: per-table autovacuum parameters do nothing "
        "until autovacuum runs, and dead rows pile up in the queue tables",
        "  turn it on (as a superuser): ALTER SYSTEM SET autovacuum = on; "
        "SELECT pg_reload_conf();",
        "  or vacuum the tables on a schedule as their owner, e.g. from cron:",
        """    * * * * *   psql "$DATABASE_URL" -c 'VACUUM (ANALYZE) "jobs"."acme_pgqueuer"'""",
        """    17 * * * *  psql "$DATABASE_URL" -c 'VACUUM (ANALYZE) "jobs"."acme_pgqueuer_log", """
        """"jobs"."acme_pgqueuer_statistics", "jobs"."acme_pgqueuer_schedules"'""",
    ]
    counts = autovacuum_warning(settings, autovacuum="on", track_counts="off")
    assert counts is not None
    assert counts.startswith("warning: track_counts is off on this server (autovacuum needs "
                             "track_counts to count dead rows)")
    assert "ALTER SYSTEM SET track_counts = on; SELECT" in counts
    both = autovacuum_warning(settings, autovacuum="off", track_counts="off")
    assert both is not None and both.startswith(
        "warning: autovacuum is off and track_counts is off on this server")
    assert "ALTER SYSTEM SET autovacuum = on; ALTER SYSTEM SET track_counts = on;" in both
    table = autovacuum_warning(settings, autovacuum="on", track_counts="on",
                               disabled=["queue_table"])
    assert table == (
        "warning: autovacuum is disabled on table jobs.acme_pgqueuer (autovacuum_enabled=false "
        'in its storage parameters); to enable it: ALTER TABLE "jobs"."acme_pgqueuer" RESET '
        "(autovacuum_enabled)"
    )


def test_a_table_with_autovacuum_disabled_is_named(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("ALTER TABLE pgqueuer_log SET (autovacuum_enabled = off)")
    result = invoke(dsn, "autovac", "--show")
    assert result.exit_code == 0
    assert ("warning: autovacuum is disabled on table pgqueuer_log (autovacuum_enabled=false "
            "in its storage parameters)") in result.stderr
    assert show_json(dsn)["tables"][1]["autovacuum_enabled"] is False


# -- the rest of the toolchain after autovac -------------------------------------------------


def _pgq() -> str | None:
    found = shutil.which("pgq")
    beside = Path(sys.executable).parent / "pgq"
    return found or (str(beside) if beside.exists() else None)


def test_upgrade_verify_and_durability_accept_the_parameters(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    assert invoke(dsn, "autovac").exit_code == 0
    plan = invoke(dsn, "upgrade", "--plan")
    assert plan.exit_code == 0 and "already up to date" in plan.stdout, plan.output
    verify = invoke(dsn, "verify", "--expect", "present")
    assert verify.exit_code == 0 and verify.stderr == "", verify.output
    assert invoke(dsn, "durability", "balanced").exit_code == 0  # rewrites the log table
    assert reloptions(conn, "pgqueuer_log") == LOG_OPTIONS
    assert invoke(dsn, "durability", "durable").exit_code == 0
    pgq = _pgq()
    if pgq is None:
        pytest.skip("the pgq CLI (pgqueuer==1.6.0) is not installed")
    params = conninfo_to_dict(dsn)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("PG", "PGQUEUER_"))}
    libpq = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
             "dbname": "PGDATABASE"}
    env.update({var: str(params[key]) for key, var in libpq.items() if params.get(key)})
    for args in (["upgrade", "--plan"], ["upgrade"], ["verify", "--expect", "present"]):
        done = subprocess.run([pgq, *args], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        if args[0] == "upgrade":
            assert "PgQueuer schema is already up to date." in done.stdout + done.stderr
    assert reloptions(conn, "pgqueuer") == QUEUE_OPTIONS
    assert reloptions(conn, "pgqueuer_log") == LOG_OPTIONS


# -- flags and the pure SQL ------------------------------------------------------------------


@pytest.mark.parametrize("args, clash", [
    (("--show", "--dry-run"), "--show and --dry-run"),
    (("--show", "--reset"), "--show and --reset"),
    (("--json", "--dry-run"), "--json and --dry-run"),
])
def test_flags_that_exclude_each_other_are_a_usage_error(
    args: tuple[str, ...], clash: str
) -> None:
    result: Result = CliRunner().invoke(cli, ["--dsn", "host=127.0.0.1 port=1", "autovac", *args],
                                        prog_name="pgq-sync")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"Error: {clash} exclude each other (see 'pgq-sync autovac --help')"
    )


@pytest.mark.parametrize("name, value, fragment", [
    ("autovacuum_freeze_max_age", 1, "unknown autovacuum parameter"),
    ("fillfactor", 70, "unknown autovacuum parameter"),
    ("autovacuum_vacuum_threshold", 1.5, "must be a whole number"),
    ("autovacuum_vacuum_threshold", True, "must be a number"),
    ("autovacuum_vacuum_scale_factor", "0.1", "must be a number"),
    ("autovacuum_vacuum_scale_factor", float("nan"), "must be between 0 and 100"),
    ("autovacuum_vacuum_scale_factor", float("inf"), "must be between 0 and 100"),
    ("autovacuum_vacuum_scale_factor", -0.1, "must be between 0 and 100"),
    ("autovacuum_vacuum_cost_limit", 0, "must be between 1 and 10000"),
    ("autovacuum_vacuum_cost_delay", 101, "must be between 0 and 100"),
])
def test_parameters_accept_only_valid_numbers(name: str, value: Any, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        Parameter(name, value)


def test_statements_quote_and_lower_case_the_configured_names() -> None:
    settings = DBSettings(prefix="Acme_", db_schema="Jobs")
    texts = [s.as_string() for s in set_statements(settings)]
    assert [t.splitlines()[0] for t in texts] == [
        'ALTER TABLE "jobs"."acme_pgqueuer" SET (',
        'ALTER TABLE "jobs"."acme_pgqueuer_log" SET (',
    ]
    resets = [s.as_string() for s in reset_statements(settings)]
    assert resets[0].splitlines()[1:] == [
        f"    {p.name}," for p in QUEUE_TUNING.parameters[:-1]
    ] + [f"    {QUEUE_TUNING.parameters[-1].name}", ")"]
    assert [t.field for t in TUNINGS] == ["queue_table", "queue_table_log"]
