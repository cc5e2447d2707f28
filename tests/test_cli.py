"""The ``pgq-sync`` command line against real PostgreSQL.

Most commands run in-process through click's runner; the error path, the
worker (``run``) and the PgQueuer interop run as real subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from psycopg.conninfo import conninfo_to_dict

from pgqueue_sync.cli import cli
from tests.test_schema_interop import _find_pgq

PGQ = _find_pgq()


def invoke(dsn: str, *args: str, prefix: str | None = None) -> Result:
    """``pgq-sync --dsn DSN ARGS`` in-process."""
    options = ["--dsn", dsn] + (["--prefix", prefix] if prefix else [])
    return CliRunner().invoke(cli, [*options, *args], catch_exceptions=False)


def pgq_sync(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m pgqueue_sync ARGS`` in a subprocess, with a clean environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGQUEUE", "PGQUEUER_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pgqueue_sync", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``Error:`` line of a failed command (and proof there is no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# -- schema -----------------------------------------------------------------------------------


def test_install_verify_and_refuse_a_second_install(empty_dsn: str) -> None:
    assert invoke(empty_dsn, "verify", "--expect", "absent").exit_code == 0
    result = invoke(empty_dsn, "install")
    assert result.exit_code == 0 and "installed the queue schema" in result.output
    assert invoke(empty_dsn, "verify", "--expect", "present").exit_code == 0
    again = invoke(empty_dsn, "install")
    assert again.exit_code == 1
    assert "already exist" in again.output and "pgq-sync upgrade" in again.output
    assert "the queue schema is already up to date" in invoke(empty_dsn, "upgrade", "--plan").output


def test_verify_names_each_missing_object_and_exits_1(empty_dsn: str) -> None:
    result = invoke(empty_dsn, "verify", "--expect", "present")
    assert result.exit_code == 1
    assert "missing table 'pgqueuer'" in result.output
    assert "missing trigger 'tg_pgqueuer_changed'" in result.output


def test_upgrade_plan_prints_sql_without_applying_it(conn: Any, dsn: str) -> None:
    conn.execute("DROP INDEX pgqueuer_picked_slot_idx")
    plan = invoke(dsn, "upgrade", "--plan")
    assert plan.exit_code == 0 and "pgqueuer_picked_slot_idx" in plan.output
    assert invoke(dsn, "verify", "--expect", "present").exit_code == 1  # plan changed nothing
    assert invoke(dsn, "upgrade").exit_code == 0
    assert invoke(dsn, "verify", "--expect", "present").exit_code == 0
    assert "already up to date" in invoke(dsn, "upgrade", "--plan").output


def test_dry_runs_print_sql_without_a_database() -> None:
    unreachable = "host=127.0.0.1 port=1 dbname=nowhere"
    installed = invoke(unreachable, "install", "--dry-run", "-d", "balanced")
    assert installed.exit_code == 0
    assert "CREATE UNLOGGED TABLE" in installed.output and "pgqueuer_log" in installed.output
    assert "DROP TABLE IF EXISTS" in invoke(unreachable, "uninstall", "--dry-run").output
    assert "SET UNLOGGED" in invoke(unreachable, "durability", "volatile", "--dry-run").output


def test_durability_switches_table_persistence(conn: Any, dsn: str) -> None:
    assert invoke(dsn, "durability", "balanced").exit_code == 0
    rows = conn.execute(
        "SELECT relname, relpersistence FROM pg_class WHERE relname IN "
        "('pgqueuer', 'pgqueuer_log', 'pgqueuer_statistics') ORDER BY relname"
    ).fetchall()
    assert rows == [("pgqueuer", "p"), ("pgqueuer_log", "u"), ("pgqueuer_statistics", "u")]


def test_uninstall_removes_everything(dsn: str) -> None:
    assert invoke(dsn, "uninstall", "--yes").exit_code == 0
    assert invoke(dsn, "verify", "--expect", "absent").exit_code == 0


@pytest.mark.interop
@pytest.mark.skipif(PGQ is None, reason="needs the pgq CLI (pgqueuer==1.6.0)")
def test_pgq_accepts_a_pgq_sync_install_and_uninstall(empty_dsn: str) -> None:
    assert pgq_sync("--dsn", empty_dsn, "install").returncode == 0
    params = conninfo_to_dict(empty_dsn)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("PG", "PGQUEUER_"))}
    env.update(PGHOST=str(params.get("host", "")), PGUSER=str(params.get("user", "")),
               PGPORT=str(params.get("port", "5432")), PGDATABASE=str(params["dbname"]))
    assert PGQ is not None

    def pgq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PGQ, *args], capture_output=True, text=True, env=env, timeout=60,
                              check=False)

    plan = pgq("upgrade", "--plan")
    assert plan.returncode == 0
    assert "PgQueuer schema is already up to date." in plan.stdout + plan.stderr
    assert pgq("verify", "--expect", "present").returncode == 0
    assert pgq_sync("--dsn", empty_dsn, "uninstall", "--yes").returncode == 0
    assert pgq("verify", "--expect", "absent").returncode == 0


# -- the queue --------------------------------------------------------------------------------


def test_enqueue_stores_payload_priority_delay_and_headers(conn: Any, dsn: str) -> None:
    result = invoke(dsn, "enqueue", "mail", "héllo", "-p", "7", "--delay", "5m",
                    "--headers", '{"trace": "abc"}')
    assert result.exit_code == 0
    job_id = int(result.output)
    row = conn.execute(
        "SELECT entrypoint, payload, priority, headers, execute_after - NOW() FROM pgqueuer "
        "WHERE id = %s", [job_id]
    ).fetchone()
    assert row[:4] == ("mail", "héllo".encode(), 7, {"trace": "abc"})
    assert timedelta(minutes=4) < row[4] <= timedelta(minutes=5)


def test_enqueue_dedupe_modes(dsn: str) -> None:
    assert invoke(dsn, "enqueue", "a", "--dedupe-key", "k").exit_code == 0
    duplicate = invoke(dsn, "enqueue", "a", "--dedupe-key", "k")
    assert duplicate.exit_code == 1 and "dedupe key 'k' is already queued" in duplicate.output
    skipped = invoke(dsn, "enqueue", "a", "--dedupe-key", "k", "--on-conflict", "skip")
    assert skipped.exit_code == 0 and skipped.output.startswith("skipped")
    assert invoke(dsn, "queue", "a", "via-the-pgq-name").exit_code == 0  # PgQueuer's spelling


def test_queue_size_table_and_json(dsn: str) -> None:
    assert "the queue is empty" in invoke(dsn, "queue-size").output
    for entrypoint, priority in (("a", 0), ("a", 0), ("b", 5)):
        invoke(dsn, "enqueue", entrypoint, "-p", str(priority))
    text = invoke(dsn, "queue-size").output.splitlines()
    assert text[0].split() == ["entrypoint", "priority", "status", "count"]
    assert [line.split() for line in text[2:]] == [["a", "0", "queued", "2"],
                                                   ["b", "5", "queued", "1"]]
    data = json.loads(invoke(dsn, "queue-size", "--json").output)
    assert {"entrypoint": "b", "priority": 5, "status": "queued", "count": 1} in data


def test_failed_lists_held_jobs_and_requeue_puts_them_back(conn: Any, dsn: str) -> None:
    held = int(invoke(dsn, "enqueue", "a", "secret-payload").output)
    queued = int(invoke(dsn, "enqueue", "a").output)
    conn.execute("UPDATE pgqueuer SET status = 'failed', attempts = 2 WHERE id = %s", [held])
    listing = invoke(dsn, "failed").output
    assert str(held) in listing and "secret-payload" not in listing
    [item] = json.loads(invoke(dsn, "failed", "--json").output)
    assert (item["id"], item["attempts"], item["payload_bytes"]) == (held, 2, 14)
    result = invoke(dsn, "requeue", str(held), str(queued))
    assert result.exit_code == 0
    assert f"requeued 1 job(s): {held}" in result.output
    assert f"not held jobs: {queued}" in result.output
    assert conn.execute("SELECT status, attempts FROM pgqueuer WHERE id = %s",
                        [held]).fetchone() == ("queued", 0)


def test_cancel_removes_queued_jobs_and_logs_canceled(conn: Any, dsn: str) -> None:
    job_id = int(invoke(dsn, "enqueue", "a").output)
    result = invoke(dsn, "cancel", str(job_id), "424242")
    assert result.exit_code == 0 and f"canceled 1 job(s): {job_id}" in result.output
    assert conn.execute("SELECT count(*) FROM pgqueuer").fetchone() == (0,)
    assert conn.execute("SELECT status FROM pgqueuer_log WHERE job_id = %s",
                        [job_id]).fetchall()[-1] == ("canceled",)


# -- user errors: one line, no traceback --------------------------------------------------------


def test_unreachable_database_is_one_line_exit_1() -> None:
    result = pgq_sync("--dsn", "postgresql://u:hunter2@127.0.0.1:1/db", "queue-size")
    assert result.returncode == 1
    line = one_line_error(result)
    assert "cannot connect to PostgreSQL" in line and "hunter2" not in line


def test_missing_schema_says_to_install(empty_dsn: str) -> None:
    result = pgq_sync("--dsn", empty_dsn, "queue-size")
    assert result.returncode == 1
    assert "pgq-sync install" in one_line_error(result)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--prefix", "bad name", "queue-size"), "invalid prefix 'bad name'"),
        (("enqueue", "a", "--delay", "soon"), "--delay must be seconds"),
        (("enqueue", "a", "--headers", "[1]"), "--headers must be a JSON object"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(dsn: str, args: tuple[str, ...], fragment: str) -> None:
    result = pgq_sync("--dsn", dsn, *args)
    assert result.returncode == 2
    assert fragment in one_line_error(result)


def test_every_command_has_help() -> None:
    names = [name for name, command in cli.commands.items() if not command.hidden]
    assert {"install", "uninstall", "upgrade", "verify", "durability", "queue-size", "enqueue",
            "failed", "requeue", "cancel", "run", "demo"} <= set(names)
    for name in names:
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, name


# -- the worker and the demo ------------------------------------------------------------------

FACTORY = textwrap.dedent(
    """
    from __future__ import annotations
    import contextlib, os
    from psycopg_pool import ConnectionPool
    from pgqueue_sync import PgQueuer
    from pgqueue_sync.cli.dsn import resolve_dsn

    @contextlib.contextmanager
    def make(args):
        dsn = resolve_dsn(allow_embedded=False).conninfo
        with ConnectionPool(dsn, min_size=1, max_size=4, kwargs={"autocommit": True}) as pool:
            pgq = PgQueuer.from_psycopg_pool(pool)
            tag = args[0] if args else "none"

            @pgq.entrypoint("record")
            def record(job):
                with pool.connection() as conn:
                    conn.execute("INSERT INTO ran VALUES (%s, %s)", [job.id, tag])

            yield pgq
        print("factory closed", flush=True)

    def not_a_worker():
        return 42
    """
)


@pytest.fixture
def factory_dir(tmp_path: Path, conn: Any) -> Path:
    (tmp_path / "myworker.py").write_text(FACTORY)
    conn.execute("CREATE TABLE ran (job_id bigint, tag text)")
    return tmp_path


def test_run_drains_the_queue_with_a_context_manager_factory(
    conn: Any, dsn: str, factory_dir: Path
) -> None:
    ids = [int(invoke(dsn, "enqueue", "record").output) for _ in range(5)]
    result = pgq_sync("--dsn", dsn, "run", "myworker:make", "--mode", "drain",
                      "--dequeue-timeout", "1", "--", "from-cli", cwd=factory_dir)
    assert result.returncode == 0, result.stderr
    assert "factory closed" in result.stdout  # tear-down ran
    assert sorted(conn.execute("SELECT job_id, tag FROM ran").fetchall()) == [
        (i, "from-cli") for i in ids
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "target, fragment",
    [
        ("nosuchmodule:make", "cannot import module 'nosuchmodule'"),
        ("myworker:missing", "has no attribute 'missing'"),
        ("myworker:not_a_worker", "returned int"),
        ("myworker", "must look like 'module:function'"),
    ],
)
def test_run_reports_a_bad_factory_in_one_line(
    dsn: str, factory_dir: Path, target: str, fragment: str
) -> None:
    result = pgq_sync("--dsn", dsn, "run", target, cwd=factory_dir)
    assert result.returncode == 2
    assert fragment in one_line_error(result)


def test_demo_installs_and_processes_jobs(empty_dsn: str) -> None:
    result = pgq_sync("--dsn", empty_dsn, "demo", "--jobs", "6")
    assert result.returncode == 0, result.stderr
    assert "installed the queue schema" in result.stdout
    assert "processed the 6 demo jobs" in result.stdout and "6 successful" in result.stdout
