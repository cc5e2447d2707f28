"""The app's migration: it installs the schema, tolerates an existing one, keeps Django quiet."""

from __future__ import annotations

import importlib
import io
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, connections
from psycopg import sql

from pgqueue_sync import DBSettings
from pgqueue_sync.contrib.django.conf import get_settings
from pgqueue_sync.contrib.django.db import DjangoDriver
from pgqueue_sync.contrib.django.installer import ensure_schema, migration_applied
from pgqueue_sync.results import Results
from pgqueue_sync.schema import Schema

from .helpers import worker_connect

ROOT = Path(__file__).resolve().parents[2]
migration = importlib.import_module("pgqueue_sync.contrib.django.migrations.0001_initial")


def _editor(alias: str = "default") -> Any:
    """What RunPython passes: only ``schema_editor.connection`` is used."""
    return types.SimpleNamespace(connection=connections[alias])


def _schema(names: DBSettings | None = None) -> Schema:
    return Schema(DjangoDriver("default"), names or get_settings().db_settings)


def _results(names: DBSettings | None = None) -> Results:
    return Results(DjangoDriver("default"), names or get_settings().db_settings)


# -- Django's view of the migration ------------------------------------------------------------


@pytest.mark.django_db
def test_makemigrations_reports_no_changes() -> None:
    out = io.StringIO()
    call_command("makemigrations", "pgqueue_sync", check=True, dry_run=True, stdout=out)
    assert "No changes detected in app 'pgqueue_sync'" in out.getvalue()


def test_makemigrations_stays_quiet_with_configured_names() -> None:
    # db_table follows the names in the process that runs makemigrations: the
    # migration's model state computes them the same way as the models.
    # Its database does not exist (only the warning of the history check says
    # so); without Django's pool that is reported at once instead of at a timeout.
    env = {k: v for k, v in os.environ.items() if k != "PGQS_TEST_DJANGO_POOL"}
    env.update({"PGQUEUER_PREFIX": "custom_", "PYTHONPATH": str(ROOT),
                "DJANGO_SETTINGS_MODULE": "tests.django_tests.settings"})
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "django", "makemigrations", "pgqueue_sync",
         "--check", "--dry-run"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No changes detected in app 'pgqueue_sync'" in done.stdout


def test_migration_is_non_atomic_with_a_no_op_reverse() -> None:
    run_python = migration.Migration.operations[0]
    assert migration.Migration.atomic is False
    assert run_python.code is migration.install_queue_schema
    assert run_python.reverse_code is run_python.noop
    for operation in migration.Migration.operations[1:]:
        assert operation.options["managed"] is False


# -- what migrate installed --------------------------------------------------------------------


@pytest.mark.django_db
def test_test_database_was_installed_by_the_migration() -> None:
    assert _schema().verify("present") == []
    assert _results().is_installed()
    assert migration_applied("default")
    # ... exactly as pgq-sync install would have: nothing left for an upgrade.
    assert _schema().plan_upgrade() == []


# -- tolerance ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_install_step_on_an_installed_database_changes_nothing() -> None:
    migration.install_queue_schema(None, _editor())
    assert ensure_schema("default") == []
    assert _schema().verify("present") == []


@pytest.mark.django_db
def test_install_step_installs_a_fresh_database() -> None:
    # Inside the test's transaction: the drop and the reinstall roll back afterwards.
    _schema().uninstall()
    _results().uninstall()
    assert _schema().verify("absent") == []
    migration.install_queue_schema(None, _editor())
    assert _schema().verify("present") == []
    assert _results().is_installed()


@pytest.mark.django_db
def test_install_step_upgrades_an_older_schema() -> None:
    names = get_settings().db_settings
    with connection.cursor() as cursor:
        for statement in (
            sql.SQL("ALTER TABLE {} DROP COLUMN slot").format(names.ident("queue_table")),
            sql.SQL("DROP INDEX {}").format(sql.Identifier(names.index_name("job_id_status",
                                                                            "queue_table_log"))),
        ):
            cursor.execute(statement.as_string(cursor.cursor))
    _results().uninstall()
    assert _schema().verify("present") != []
    migration.install_queue_schema(None, _editor())
    assert _schema().verify("present") == []
    assert _schema().plan_upgrade() == []
    assert _results().is_installed()


@pytest.mark.django_db
def test_upgrade_reports_what_it_ran() -> None:
    names = get_settings().db_settings
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL("ALTER TABLE {} DROP COLUMN slot").format(
            names.ident("queue_table")).as_string(cursor.cursor))
    ran = ensure_schema("default")
    assert any("slot" in statement for statement in ran)


@pytest.mark.django_db
def test_install_step_skips_databases_without_the_queue() -> None:
    other = types.SimpleNamespace(connection=types.SimpleNamespace(alias="analytics"))
    migration.install_queue_schema(None, other)  # no connection named 'analytics' exists


def _find_pgq() -> str | None:
    beside = Path(sys.executable).parent / "pgq"
    return str(beside) if beside.exists() else shutil.which("pgq")


def _pgq(args: list[str], env_names: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run PgQueuer 1.6's own CLI against the test database."""
    settings = connections["default"].settings_dict
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("PGQUEUER_", "PG"))}
    libpq = {"HOST": "PGHOST", "PORT": "PGPORT", "USER": "PGUSER", "PASSWORD": "PGPASSWORD",
             "NAME": "PGDATABASE"}
    env.update({var: str(settings[key]) for key, var in libpq.items() if settings.get(key)})
    env.update(env_names)
    pgq = _find_pgq()
    assert pgq is not None
    return subprocess.run([pgq, *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture
def pgq_prefixed() -> Iterator[DBSettings]:
    """Names with their own prefix on the test database, dropped afterwards."""
    if _find_pgq() is None:
        pytest.skip("needs the pgq CLI (pgqueuer==1.6.0)")
    names = DBSettings(prefix="pgqmig_")
    try:
        yield names
    finally:
        with worker_connect() as conn:
            from pgqueue_sync import SyncPsycopgDriver

            driver = SyncPsycopgDriver(conn)
            Schema(driver, names).uninstall()
            Results(driver, names).uninstall()


@pytest.mark.django_db(transaction=True)
def test_migrate_tolerates_a_schema_installed_by_pgq(pgq_prefixed: DBSettings) -> None:
    env = {"PGQUEUER_PREFIX": "pgqmig_"}
    done = _pgq(["install"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _schema(pgq_prefixed).verify("present") == []
    assert not _results(pgq_prefixed).is_installed()

    assert ensure_schema("default", pgq_prefixed) == []  # PgQueuer's shape is ours
    assert _results(pgq_prefixed).is_installed()
    assert ensure_schema("default", pgq_prefixed) == []  # and again: idempotent
    verified = _pgq(["verify", "--expect", "present"], env)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.django_db(transaction=True)
def test_migrating_to_zero_keeps_the_queue() -> None:
    from pgqueue_sync.contrib.django import enqueue

    [job_id] = enqueue("shop.migration_zero")
    try:
        call_command("migrate", "pgqueue_sync", "zero", verbosity=0)
        assert not migration_applied("default")
        assert _schema().verify("present") == []
        assert [s for _, s in _queries_status(job_id)] == ["queued"]
    finally:
        call_command("migrate", "pgqueue_sync", verbosity=0)
        with worker_connect() as conn:
            names = get_settings().db_settings
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(
                names.ident("queue_table")), [job_id])
            conn.execute(sql.SQL("DELETE FROM {} WHERE job_id = %s").format(
                names.ident("queue_table_log")), [job_id])
    assert migration_applied("default")


def _queries_status(job_id: int) -> list[tuple[int, str]]:
    from pgqueue_sync.contrib.django import get_queries

    return [(int(i), str(s)) for i, s in get_queries().job_status([job_id])]
