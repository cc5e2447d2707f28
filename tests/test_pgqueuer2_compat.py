"""A PgQueuer 2.x database beside us: the extra ``{statistics_table}_created`` index.

PgQueuer 2.0-2.3 keep the 1.6.0 tables and add one index on the statistics
table. Its definition is not published; these tests create it as a plain
btree on ``created`` (named after the statistics table, like 1.6.0's
``{log_table}_created``), by hand, as a PgQueuer 2 install or upgrade would,
for the default names, a prefix and a schema. Then: verify is clean, upgrade
plans nothing and keeps it, the CLI agrees, a worker drains jobs and its
aggregation fills the statistics table, uninstall removes it with the table,
and our install never creates it.

The Django system check E004 reports ``Schema.verify("present")`` as is
(``contrib.django.installer.inspect_schema``), so the Schema tests cover it.
Only PgQueuer 1.6.0 is installable here: 2.x itself is not exercised.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pgqueue_sync import Job, Queries
from pgqueue_sync.app import PgQueuer
from pgqueue_sync.cli import cli
from pgqueue_sync.drivers import SyncPsycopgDriver
from pgqueue_sync.schema import Schema, install_script
from pgqueue_sync.settings import DBSettings
from pgqueue_sync.sql import ddl
from tests.test_schema_interop import _find_pgq

from .worker_helpers import pool_for, running, wait_for

CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "prefix": {"PGQUEUER_PREFIX": "acme_"},
    "schema": {"PGQUEUER_SCHEMA": "jobs"},
}
#: The definition assumed for PgQueuer 2.x's index (not published in its notes).
PGQ2_TAIL = "USING btree (created)"

PGQ = _find_pgq()


def pgq2_index_name(settings: DBSettings) -> str:
    """PgQueuer 2.x's index name: it follows the statistics table name, as 1.6's do."""
    return settings.index_name("created", "statistics_table")


def create_pgq2_index(conn: psycopg.Connection[Any], settings: DBSettings) -> None:
    """What PgQueuer 2.0's install/upgrade adds (a plain, blocking CREATE INDEX)."""
    conn.execute(
        sql.SQL("CREATE INDEX {} ON {} (created)").format(
            sql.Identifier(pgq2_index_name(settings)), settings.ident("statistics_table")
        )
    )


def index_definition(conn: psycopg.Connection[Any], settings: DBSettings) -> str | None:
    """``pg_get_indexdef`` of the 2.x index in the tables' schema, or None if absent."""
    row = conn.execute(
        "SELECT pg_get_indexdef(c.oid) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'i' AND c.relname = %s "
        "AND n.nspname = coalesce(%s, current_schema())",
        [pgq2_index_name(settings), settings.db_schema],
    ).fetchone()
    return None if row is None else str(row[0])


def invoke(dsn: str, settings: DBSettings, *args: str) -> Result:
    """``pgq-sync --dsn DSN [--prefix P] [--schema S] ARGS`` in-process."""
    options = ["--dsn", dsn]
    if settings.prefix:
        options += ["--prefix", settings.prefix]
    if settings.db_schema:
        options += ["--schema", settings.db_schema]
    return CliRunner().invoke(cli, [*options, *args], catch_exceptions=False)


@pytest.fixture(autouse=True)
def _no_pgqueuer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads PGQUEUER_*: only the options given here may name the objects."""
    for key in list(os.environ):
        if key.upper().startswith("PGQUEUER_"):
            monkeypatch.delenv(key)


@pytest.fixture(params=list(CONFIGS))
def settings(request: pytest.FixtureRequest) -> DBSettings:
    return DBSettings.from_env(CONFIGS[request.param])


@pytest.fixture
def pgq2_db(
    empty_dsn: str, settings: DBSettings
) -> Iterator[tuple[psycopg.Connection[Any], Schema]]:
    """Our install, then PgQueuer 2.x's extra index; (connection, Schema)."""
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        schema = Schema(SyncPsycopgDriver(conn), settings)
        schema.install()
        assert index_definition(conn, settings) is None  # our install stays 1.6.0's
        create_pgq2_index(conn, settings)
        assert index_definition(conn, settings) is not None
        yield conn, schema


# -- install ---------------------------------------------------------------------------------


def test_install_does_not_declare_the_pgqueuer2_index(settings: DBSettings) -> None:
    name = pgq2_index_name(settings)
    assert name not in {index.name(settings) for index in ddl.INDEXES}
    assert [index.name(settings) for index in ddl.PGQUEUER2_INDEXES] == [name]
    assert f'"{name}"' not in install_script(settings)
    # Shorter than the statistics index we do create, so a prefix that fits
    # our names cannot make PostgreSQL truncate PgQueuer 2's.
    assert len(name) < len(settings.index_name(ddl.UNIQUE_COUNT_SUFFIX, "statistics_table"))


# -- verify and upgrade ----------------------------------------------------------------------


def test_verify_and_upgrade_leave_the_pgqueuer2_index_alone(
    pgq2_db: tuple[psycopg.Connection[Any], Schema], settings: DBSettings
) -> None:
    conn, schema = pgq2_db
    before = index_definition(conn, settings)
    assert before is not None and before.endswith(f" {PGQ2_TAIL}")
    assert schema.verify("present") == []
    assert schema.is_installed()
    assert schema.plan_upgrade() == []
    assert schema.upgrade() == []
    assert index_definition(conn, settings) == before


def test_cli_verify_and_upgrade_plan_accept_the_pgqueuer2_index(
    pgq2_db: tuple[psycopg.Connection[Any], Schema], empty_dsn: str, settings: DBSettings
) -> None:
    conn, _ = pgq2_db
    before = index_definition(conn, settings)
    verified = invoke(empty_dsn, settings, "verify", "--expect", "present")
    assert verified.exit_code == 0, verified.output
    assert "the queue schema is present" in verified.output
    plan = invoke(empty_dsn, settings, "upgrade", "--plan")
    assert plan.exit_code == 0, plan.output
    assert "the queue schema is already up to date" in plan.output
    assert "DROP" not in plan.output and pgq2_index_name(settings) not in plan.output
    upgraded = invoke(empty_dsn, settings, "upgrade")
    assert upgraded.exit_code == 0 and "already up to date" in upgraded.output
    assert index_definition(conn, settings) == before


@pytest.mark.parametrize("settings", [DBSettings()], ids=["default"])
def test_upgrade_of_an_older_database_keeps_the_pgqueuer2_index(
    pgq2_db: tuple[psycopg.Connection[Any], Schema], settings: DBSettings
) -> None:
    """A real upgrade that rebuilds an index on the very same statistics table."""
    conn, schema = pgq2_db
    conn.execute(
        """
        DROP INDEX pgqueuer_picked_heartbeat_idx;
        DROP INDEX pgqueuer_statistics_unique_count;
        CREATE UNIQUE INDEX pgqueuer_statistics_unique_count ON pgqueuer_statistics
            (priority, date_trunc('sec', created AT TIME ZONE 'UTC'), status, entrypoint);
        INSERT INTO pgqueuer_statistics (created, count, priority, status, entrypoint)
        VALUES ('2024-01-01 00:00:01+00', 3, 0, 'successful', 'a');
        """
    )
    before = index_definition(conn, settings)
    planned = schema.plan_upgrade()
    assert any("pgqueuer_picked_heartbeat_idx" in s for s in planned)
    assert any("pgqueuer_statistics_unique_count" in s for s in planned)
    assert not any(pgq2_index_name(settings) in s for s in planned)
    assert schema.upgrade() == planned
    assert schema.plan_upgrade() == [] and schema.verify("present") == []
    assert index_definition(conn, settings) == before


@pytest.mark.parametrize("settings", [DBSettings()], ids=["default"])
def test_extra_indexes_are_named_at_debug_and_kept(
    pgq2_db: tuple[psycopg.Connection[Any], Schema],
    settings: DBSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Any index we do not declare is tolerated; the 2.x one is recognised by name."""
    conn, schema = pgq2_db
    conn.execute("CREATE INDEX ops_own_entrypoint_idx ON pgqueuer (entrypoint)")
    with caplog.at_level(logging.DEBUG, logger="pgqueue_sync.schema.unmanaged"):
        assert schema.verify("present") == []
        assert schema.upgrade() == []
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(
        m.startswith("verify: PgQueuer 2.x index 'pgqueuer_statistics_created' on "
                     "pgqueuer_statistics (USING btree (created)) tolerated")
        for m in messages
    ), messages
    assert any(
        m.startswith("upgrade: index unknown to PgQueuer 1.6.0 'ops_own_entrypoint_idx' on "
                     "pgqueuer ")
        for m in messages
    ), messages
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG]
    remaining = conn.execute(
        "SELECT count(*) FROM pg_indexes WHERE indexname IN "
        "('ops_own_entrypoint_idx', 'pgqueuer_statistics_created')"
    ).fetchone()
    assert remaining == (2,)


# -- workers ---------------------------------------------------------------------------------


def test_worker_drains_and_aggregates_with_the_pgqueuer2_index(
    pgq2_db: tuple[psycopg.Connection[Any], Schema], empty_dsn: str, settings: DBSettings
) -> None:
    conn, _ = pgq2_db
    queries = Queries(SyncPsycopgDriver(conn), settings=settings)
    done: list[int] = []
    stats = settings.ident("statistics_table")
    total = sql.SQL("SELECT coalesce(sum(count), 0)::int FROM {}").format(stats)
    with pool_for(empty_dsn) as pool:
        pgq = PgQueuer.from_psycopg_pool(pool, settings=settings)

        @pgq.entrypoint("pgq2")
        def handler(job: Job) -> None:
            done.append(job.id)

        ids = queries.enqueue(["pgq2"] * 5, [None] * 5)
        # verify_structure runs at start: the extra index must not stop the worker.
        with running(pgq, dequeue_timeout=0.5, log_aggregation_interval=0.05):
            wait_for(lambda: sorted(done) == sorted(ids), what="all jobs done")
            # queued + picked + successful per job, folded in by the worker's aggregator
            wait_for(lambda: conn.execute(total).fetchone() == (15,), what="aggregated")
    assert queries.queue_size() == []
    assert dict(queries.job_status(ids)) == {i: "successful" for i in ids}
    statuses = conn.execute(
        sql.SQL("SELECT status::text, sum(count)::int FROM {} GROUP BY 1 ORDER BY 1").format(stats)
    ).fetchall()
    assert statuses == [("picked", 5), ("queued", 5), ("successful", 5)]
    # Folding more log rows into existing buckets goes through the ON CONFLICT
    # arbiter (the unique_count index), which the extra plain index does not disturb.
    queries.enqueue(["pgq2"] * 2, [None] * 2)
    queries.aggregate_logs()
    assert conn.execute(total).fetchone() == (17,)
    assert index_definition(conn, settings) is not None


# -- uninstall -------------------------------------------------------------------------------


def test_uninstall_removes_the_pgqueuer2_index_and_reinstall_omits_it(
    pgq2_db: tuple[psycopg.Connection[Any], Schema], empty_dsn: str, settings: DBSettings
) -> None:
    conn, schema = pgq2_db
    result = invoke(empty_dsn, settings, "uninstall", "--yes")
    assert result.exit_code == 0, result.output
    # DROP TABLE takes the table's indexes with it, ours and PgQueuer 2's alike.
    assert index_definition(conn, settings) is None
    assert schema.verify("absent") == []
    assert invoke(empty_dsn, settings, "verify", "--expect", "absent").exit_code == 0
    schema.install()
    assert index_definition(conn, settings) is None
    assert schema.verify("present") == [] and schema.plan_upgrade() == []


# -- PgQueuer 1.6.0's own tools on such a database -------------------------------------------


def _pgq(dsn: str, env_settings: Mapping[str, str], *args: str) -> tuple[int, str]:
    assert PGQ is not None
    params = conninfo_to_dict(dsn)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PG")}
    env.update(PGHOST=str(params.get("host", "")), PGUSER=str(params.get("user", "")),
               PGPORT=str(params.get("port", "5432")), PGDATABASE=str(params["dbname"]))
    env.update(env_settings)
    done = subprocess.run([PGQ, *args], capture_output=True, text=True, env=env, timeout=60,
                          check=False)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.interop
@pytest.mark.skipif(PGQ is None, reason="needs the pgq CLI (pgqueuer==1.6.0)")
@pytest.mark.parametrize("settings", [DBSettings()], ids=["default"])
def test_pgq_16_also_leaves_the_pgqueuer2_index_alone(
    pgq2_db: tuple[psycopg.Connection[Any], Schema], empty_dsn: str, settings: DBSettings
) -> None:
    """A mixed fleet may run PgQueuer 1.6's ``pgq upgrade`` too: it keeps the index."""
    conn, _ = pgq2_db
    before = index_definition(conn, settings)
    code, output = _pgq(empty_dsn, {}, "upgrade", "--plan")
    assert code == 0 and "PgQueuer schema is already up to date." in output, output
    code, output = _pgq(empty_dsn, {}, "verify", "--expect", "present")
    assert code == 0, output
    assert index_definition(conn, settings) == before
