"""System checks: configuration (E001-E003) and the schema on the database (W001, E004-E006)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.core import checks
from django.core.checks import Tags
from django.core.management import call_command
from django.db import connection, connections
from django.test import override_settings
from psycopg import sql

from pgqueue_sync.contrib.django import checks as our_checks
from pgqueue_sync.contrib.django.conf import get_settings
from pgqueue_sync.contrib.django.db import DjangoDriver
from pgqueue_sync.contrib.django.installer import APP_LABEL, INSTALL_MIGRATION
from pgqueue_sync.results import Results
from pgqueue_sync.schema import Schema


def _ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


@pytest.fixture
def extra_alias() -> Iterator[Any]:
    """Add a ``DATABASES`` alias for one test (never connected unless the test does)."""
    added: list[str] = []

    def add(alias: str, settings: dict[str, Any]) -> None:
        both = {"default": connections.settings["default"], alias: settings}
        connections.settings[alias] = connections.configure_settings(both)[alias]
        added.append(alias)

    try:
        yield add
    finally:
        for alias in added:
            if hasattr(connections._connections, alias):
                connections[alias].close()
                del connections[alias]
            del connections.settings[alias]


# -- registration ------------------------------------------------------------------------------


def test_checks_are_registered_by_the_app() -> None:
    registered = checks.registry.registry.get_checks(include_deployment_checks=True)
    assert our_checks.check_configuration in registered
    assert our_checks.check_schema in registered
    assert Tags.database in our_checks.check_schema.tags


def test_a_plain_check_passes_without_touching_the_database() -> None:
    # No django_db mark: pytest-django makes any query fail this test.
    assert our_checks.check_configuration() == []
    assert our_checks.check_schema(databases=None) == []
    assert our_checks.check_schema() == []
    call_command("check", "pgqueue_sync")


def test_ready_registers_again_without_touching_the_database() -> None:
    from django.apps import apps

    before = len(checks.registry.registry.registered_checks)
    apps.get_app_config("pgqueue_sync").ready()  # tests may run ready() more than once
    assert len(checks.registry.registry.registered_checks) == before


def test_checks_skip_other_apps() -> None:
    from django.apps import apps

    others = [apps.get_app_config("auth")]
    with override_settings(PGQUEUE_SYNC={"BOGUS": 1}):
        assert our_checks.check_configuration(app_configs=others) == []
        assert _ids(our_checks.check_configuration()) == ["pgqueue_sync.E002"]


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ({"BOGUS": 1}, "unknown PGQUEUE_SYNC key(s) 'BOGUS'"),
        ("default", "must be a dict"),
        ({"DATABASE_ALIAS": 3}, "must be a str"),
        ({"TEST_MODE": "sometimes"}, "TEST_MODE"),
    ],
)
def test_invalid_setting_is_e002(setting: Any, fragment: str) -> None:
    with override_settings(PGQUEUE_SYNC=setting):
        [message] = our_checks.check_configuration()
    assert message.id == "pgqueue_sync.E002"
    assert isinstance(message, checks.Error)
    assert fragment in message.msg
    assert "PGQUEUE_SYNC" in message.hint


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ({"WORKER": {"dequeue_timeout": float("nan")}}, "['WORKER']['dequeue_timeout']"),
        ({"WORKER": {"heartbeat_timeout": float("inf")}}, "['WORKER']['heartbeat_timeout']"),
        ({"WORKER": {"shutdown_timeout": -1}}, "['WORKER']['shutdown_timeout']"),
        ({"WORKER": {"restart_delay": 1e18}}, "['WORKER']['restart_delay']"),
        ({"WORKER": {"wait_for_database": float("-inf")}}, "['WORKER']['wait_for_database']"),
        ({"POOL": {"timeout": float("nan")}}, "['POOL']['timeout']"),
        ({"POOL": {"max_lifetime": 1e300}}, "['POOL']['max_lifetime']"),
        ({"WORKER": {"concurrency": "8"}}, "['WORKER']['concurrency']"),
    ],
    ids=["nan dequeue", "inf heartbeat", "negative shutdown", "huge restart delay",
         "-inf wait", "nan pool timeout", "huge lifetime", "string concurrency"],
)
def test_impossible_worker_and_pool_values_are_e002(setting: Any, fragment: str) -> None:
    with override_settings(PGQUEUE_SYNC=setting):
        [message] = our_checks.check_configuration()
    assert message.id == "pgqueue_sync.E002"
    assert fragment in message.msg


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ({"PREFIX": "p" * 31}, "prefix of at most 30 bytes"),
        ({"SCHEMA": "s" * 64}, "longer than 63 bytes"),
        ({"PREFIX": 'x"; drop table t; --'}, "invalid prefix"),
    ],
    ids=["31-byte prefix", "64-byte schema", "injection"],
)
def test_names_postgres_would_truncate_or_refuse_are_e003(setting: Any, fragment: str) -> None:
    with override_settings(PGQUEUE_SYNC=setting):
        [message] = our_checks.check_configuration()
    assert message.id == "pgqueue_sync.E003"
    assert fragment in message.msg


def test_invalid_names_are_e003() -> None:
    with override_settings(PGQUEUE_SYNC={"PREFIX": "bad-prefix"}):
        [message] = our_checks.check_configuration()
    assert message.id == "pgqueue_sync.E003"
    assert "invalid prefix 'bad-prefix'" in message.msg
    with override_settings(PGQUEUE_SYNC={"SCHEMA": "no spaces"}):
        assert _ids(our_checks.check_configuration()) == ["pgqueue_sync.E003"]


def test_unknown_alias_is_e001() -> None:
    with override_settings(PGQUEUE_SYNC={"DATABASE_ALIAS": "nowhere"}):
        [message] = our_checks.check_configuration()
    assert message.id == "pgqueue_sync.E001"
    assert "'nowhere' is not in DATABASES" in message.msg
    assert "django.db.backends.postgresql" in message.hint


def test_non_postgresql_alias_is_e001(extra_alias: Any) -> None:
    extra_alias("lite", {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"})
    with override_settings(PGQUEUE_SYNC={"DATABASE_ALIAS": "lite"}):
        [message] = our_checks.check_configuration()
        # The database check leaves a non-PostgreSQL alias to E001.
        assert our_checks.check_schema(databases=["lite"]) == []
    assert message.id == "pgqueue_sync.E001"
    assert "'sqlite' backend" in message.msg


def test_psycopg2_is_e001(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db.backends.postgresql import psycopg_any

    monkeypatch.setattr(psycopg_any, "is_psycopg3", False)
    [message] = our_checks.check_configuration()
    assert message.id == "pgqueue_sync.E001"
    assert "psycopg2" in message.msg


# -- the database ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_schema_check_passes_on_the_migrated_database() -> None:
    assert our_checks.check_schema(databases=["default"]) == []
    assert our_checks.check_schema(databases=["other"]) == []
    # Through Django's runner, as `manage.py check --database default` does.
    messages = checks.run_checks(tags=[Tags.database], databases=["default"])
    assert [m for m in messages if m.id.startswith("pgqueue_sync.")] == []
    call_command("check", "--database", "default")


def _uninstall_in_this_transaction() -> None:
    # Inside the test's transaction: rolled back, schema and all, after the test.
    assert connection.in_atomic_block
    Schema(DjangoDriver("default"), get_settings().db_settings).uninstall()


@pytest.mark.django_db
def test_dropped_schema_is_e004_with_the_command_to_run() -> None:
    _uninstall_in_this_transaction()
    [message] = our_checks.check_schema(databases=["default"])
    assert message.id == "pgqueue_sync.E004"
    assert isinstance(message, checks.Error)
    assert "missing table 'pgqueuer'" in message.msg
    assert "missing trigger 'tg_pgqueuer_changed'" in message.msg
    assert "manage.py pgq_sync upgrade" in message.hint
    assert message.obj == "DATABASES['default']"


@pytest.mark.django_db
def test_partly_dropped_schema_is_e004() -> None:
    names = get_settings().db_settings
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL("ALTER TABLE {} DROP COLUMN slot").format(
            names.ident("queue_table")).as_string(cursor.cursor))
    [message] = our_checks.check_schema(databases=["default"])
    assert message.id == "pgqueue_sync.E004"
    assert "missing column 'pgqueuer.slot'" in message.msg


@pytest.mark.django_db
def test_missing_results_table_is_e005_when_tasks_use_us() -> None:
    names = get_settings().db_settings
    Results(DjangoDriver("default"), names).uninstall()
    [message] = our_checks.check_schema(databases=["default"])
    assert message.id == "pgqueue_sync.E005"
    assert "pgq_sync results install" in message.hint
    # Without a Tasks backend (and STORE_RESULTS off) the table is optional.
    with override_settings(TASKS={}):
        assert our_checks.check_schema(databases=["default"]) == []
        with override_settings(PGQUEUE_SYNC={"STORE_RESULTS": True}):
            assert _ids(our_checks.check_schema(databases=["default"])) == ["pgqueue_sync.E005"]


@pytest.mark.django_db
def test_unmigrated_database_is_only_a_warning() -> None:
    # `migrate` runs the database checks before migrating: a database the
    # migration has yet to set up must not be an error that stops it.
    _uninstall_in_this_transaction()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM django_migrations WHERE app = %s AND name = %s",
                       [APP_LABEL, INSTALL_MIGRATION])
    [message] = our_checks.check_schema(databases=["default"])
    assert message.id == "pgqueue_sync.W001"
    assert isinstance(message, checks.Warning)
    assert "manage.py migrate pgqueue_sync" in message.hint


def test_unreachable_database_is_e006(extra_alias: Any, django_db_blocker: Any) -> None:
    # Not a django_db test: the alias exists only here, so let it try to connect.
    broken = {**connections.settings["default"], "HOST": "127.0.0.1", "PORT": "1",
              "OPTIONS": {"connect_timeout": 2}}
    extra_alias("broken", broken)
    with override_settings(PGQUEUE_SYNC={"DATABASE_ALIAS": "broken"}, TASKS={}), \
            django_db_blocker.unblock():
        [message] = our_checks.check_schema(databases=["broken"])
    assert message.id == "pgqueue_sync.E006"
    assert "cannot inspect the queue schema on database 'broken'" in message.msg
