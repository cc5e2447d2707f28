"""Least privilege against a real server: roles get exactly what ``sql/grants.py`` generates.

Every test creates its own LOGIN roles (unique names; the test server trusts
local logins, so a DSN with ``user=<role>`` connects) and drops them afterwards.

* Sufficiency: a producer role and a worker role do all their part's work.
* Minimality: with any single generated privilege revoked, the operation that
  privilege is there for fails (``test_every_privilege_is_needed``).
* Errors: a role without grants gets :class:`PermissionDenied` naming the
  object and the fix; a drain-mode worker stops on it; the CLI prints one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgqueue_sync import (
    CompletionWatcher,
    DBSettings,
    DuplicateJobError,
    Job,
    PgQueuer,
    Queries,
    QueueExecutionMode,
    RetryRequested,
    SyncPsycopgDriver,
)
from pgqueue_sync.cli import cli
from pgqueue_sync.errors import DatabaseError, PermissionDenied
from pgqueue_sync.results import Results, StoredResult
from pgqueue_sync.schema import Schema
from pgqueue_sync.sql import grants
from pgqueue_sync.types import JobId, QueueManagerId

from .worker_helpers import make_pgq, pool_for, running, wait_for

ROOT = Path(__file__).resolve().parent.parent
EVERY_SECOND = "* * * * * *"
#: Schema used where a test needs the objects outside ``public``.
QUEUE_SCHEMA = "pgqs_perm"
#: A drain-mode worker lacking grants must have raised within this many seconds.
DRAIN_EXIT_TIMEOUT = 30.0
#: Waits for jobs, schedules and statistics (each a condition, never a bare sleep).
WORK_TIMEOUT = 30.0
FAR_FUTURE = timedelta(hours=1)
PROBE_SCHEDULE = ("probe", "0 * * * *")


# -- roles ----------------------------------------------------------------------------------


def role_dsn(dsn: str, role: str) -> str:
    """The DSN of ``dsn``'s database, logging in as ``role`` (trust auth)."""
    return make_conninfo(dsn, user=role, password="")


def run_sql(dsn: str, statements: Sequence[sql.Composed | sql.SQL]) -> None:
    """Run statements in one transaction as the superuser of ``dsn``."""
    with psycopg.connect(dsn) as conn, conn.transaction():
        for statement in statements:
            conn.execute(statement)


@dataclasses.dataclass
class Roles:
    """Creates LOGIN roles with unique names; :meth:`drop_all` removes them again."""

    server_dsn: str
    created: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def create(
        self,
        dsn: str,
        part: grants.Part | None = None,
        *,
        settings: DBSettings | None = None,
        results: bool = True,
    ) -> str:
        """A new role on the server; with ``part``, granted that part in ``dsn``'s database."""
        name = f"pgqs_role_{uuid.uuid4().hex[:10]}"
        run_sql(self.server_dsn, [sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name))])
        self.created.append((name, dsn))
        if part is not None:
            statements = grants.grant_statements(
                part, settings or DBSettings(), name, results=results
            )
            run_sql(dsn, statements)
        return name

    def drop_all(self) -> None:
        for name, dsn in reversed(self.created):
            with contextlib.suppress(psycopg.OperationalError):  # database already gone
                run_sql(dsn, [
                    sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(name)),
                    sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)),
                ])
            run_sql(self.server_dsn,
                    [sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name))])
        self.created.clear()


@pytest.fixture
def roles(server_dsn: str) -> Iterator[Roles]:
    factory = Roles(server_dsn)
    try:
        yield factory
    finally:
        factory.drop_all()


@contextlib.contextmanager
def queries_as(dsn: str, role: str, settings: DBSettings | None = None) -> Iterator[Queries]:
    """Queries over an autocommit connection logged in as ``role``."""
    with psycopg.connect(role_dsn(dsn, role), autocommit=True) as conn:
        yield Queries(SyncPsycopgDriver(conn), settings=settings or DBSettings())


def install_results(dsn: str, settings: DBSettings | None = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        Results(SyncPsycopgDriver(conn), settings or DBSettings()).install()


def count_rows(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
    found = row.fetchone()
    return int(found[0]) if found else 0


def pgq_sync(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m pgqueue_sync ARGS`` in a subprocess, without PGQUEUER_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGQUEUE", "PGQUEUER_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pgqueue_sync", *args],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# -- the generated statements -----------------------------------------------------------------


def rendered(statements: Sequence[sql.Composed]) -> list[str]:
    return [s.as_string() for s in statements]


def test_parts_name_the_prefixed_objects_in_their_schema() -> None:
    settings = DBSettings(prefix="app_", db_schema="jobs")
    worker = rendered(grants.grant_statements("worker", settings, "Worker Role"))
    assert worker[0] == 'GRANT USAGE ON SCHEMA "jobs" TO "Worker Role"'
    assert ('GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE "jobs"."app_pgqueuer" '
            'TO "Worker Role"') in worker
    assert 'GRANT USAGE ON SEQUENCE "jobs"."app_pgqueuer_id_seq" TO "Worker Role"' in worker
    assert not any("pgqueuer_log_id_seq" in s for s in worker)  # identity column
    producer = rendered(grants.grant_statements("producer", settings, "p", results=False))
    assert not any("statistics" in s or "schedules" in s or "results" in s for s in producer)
    assert set(grants.privileges("producer")) <= set(grants.privileges("worker"))
    assert rendered(grants.grant_statements("admin", settings, "a")) == [
        'GRANT USAGE, CREATE ON SCHEMA "jobs" TO "a"'
    ]
    assert all(p.reason for part in grants.PARTS for p in grants.privileges(part))


def test_unqualified_names_use_the_given_schema_and_sequence_names() -> None:
    placement = grants.Placement(
        default_schema="tenant", sequences={"queue_table": ("tenant", "renamed_seq")}
    )
    text = rendered(grants.grant_statements("producer", DBSettings(), "p", placement=placement))
    assert text[0] == 'GRANT USAGE ON SCHEMA "tenant" TO "p"'
    assert 'GRANT USAGE ON SEQUENCE "tenant"."renamed_seq" TO "p"' in text
    long_table = DBSettings(queue_table="q" * 60)
    assert grants.serial_sequence(long_table, "queue_table") == ("q" * 56 + "_id_seq",)


# -- sufficiency ------------------------------------------------------------------------------


def test_producer_role_enqueues_waits_reads_results_and_cancels(
    dsn: str, roles: Roles, conn: psycopg.Connection[Any]
) -> None:
    install_results(dsn)
    producer = roles.create(dsn, "producer")
    worker = roles.create(dsn, "worker")
    root = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
    with queries_as(dsn, producer) as queries:
        [first] = queries.enqueue("work", b"a", dedupe_key="k1")
        assert queries.enqueue("work", b"b", dedupe_key="k1", on_conflict="skip") == [None]
        assert queries.enqueue(
            "work", b"c", priority=7, dedupe_key="k1", on_conflict="update_priority"
        ) == [first]
        with pytest.raises(DuplicateJobError):
            queries.enqueue("work", b"d", dedupe_key="k1")
        batch = queries.enqueue(["work", "work"], [b"e", b"f"], dedupe_key=["k2", None])
        [later] = queries.enqueue("work", None, execute_after=FAR_FUTURE)
        assert dict(queries.job_status([first, later])) == {first: "queued", later: "queued"}
        assert sorted((s.priority, s.count) for s in root.queue_size()) == [(0, 3), (7, 1)]
        assert queries.mark_job_as_cancelled([later]) == [later]
        assert dict(queries.job_status([later])) == {later: "canceled"}
        ids = [first, *batch]
        with pool_for(role_dsn(dsn, worker)) as pool:
            pgq = make_pgq(pool, store_results=True)
            pgq.entrypoint("work")(lambda job: {"payload": job.payload.decode()})
            with running(pgq, dequeue_timeout=0.5, log_aggregation_interval=0), \
                    CompletionWatcher(role_dsn(dsn, producer)) as watcher:
                done = watcher.wait_for_all(ids, timeout=WORK_TIMEOUT)
        assert done == {i: "successful" for i in ids}
        stored = Results(queries.driver, DBSettings()).get_results(ids)
        assert {i: r.result for i, r in stored.items()} == {
            first: {"payload": "a"}, batch[0]: {"payload": "e"}, batch[1]: {"payload": "f"}
        }


def test_worker_role_runs_jobs_schedules_statistics_and_results(
    dsn: str, roles: Roles, conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    install_results(dsn)
    worker = roles.create(dsn, "worker")
    root = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
    fired = threading.Event()
    children: list[JobId] = []
    with pool_for(role_dsn(dsn, worker)) as pool:
        pgq = make_pgq(pool, store_results=True)
        register_handlers(pgq, children)
        pgq.schedule("tick", EVERY_SECOND, clean_old=True)(lambda schedule: fired.set())
        root.insert_schedule({("tick", "0 0 * * *"): FAR_FUTURE})  # clean_old removes it
        names = ["ok", "async_ok", "boom", "flaky", "spawn"]
        ids = dict(zip(names, root.enqueue(names, [b"a", None, None, None, None]), strict=True))
        with running(pgq, dequeue_timeout=0.5, log_aggregation_interval=0.2):
            final = {"boom": "failed"}
            wait_for(lambda: dict(root.job_status(ids.values())) == {
                i: final.get(n, "successful") for n, i in ids.items()
            }, timeout=WORK_TIMEOUT, what="every job final")
            assert fired.wait(WORK_TIMEOUT), "the schedule did not fire"
            wait_for(lambda: children and dict(root.job_status(children)).get(children[0])
                     == "successful", timeout=WORK_TIMEOUT, what="the enqueued child job")
            wait_for(lambda: count_rows(conn, "pgqueuer_statistics") > 0,
                     timeout=WORK_TIMEOUT, what="statistics written")
    stored = Results(root.driver, DBSettings()).get_results(ids.values())
    assert stored[ids["ok"]].result == {"echo": "a"}
    assert stored[ids["async_ok"]].result == "async"
    assert (stored[ids["boom"]].status, stored[ids["boom"]].error) == ("failed", "ValueError: no")
    assert [(s.entrypoint, s.expression) for s in root.peek_schedule()] == [("tick", EVERY_SECOND)]
    flaky = [e.status for e in root.queue_log() if e.job_id == ids["flaky"]]
    assert flaky.count("picked") == 2  # retried once
    assert "permission denied" not in caplog.text


def register_handlers(pgq: PgQueuer, children: list[JobId]) -> None:
    """One handler of each kind the worker test needs."""

    @pgq.entrypoint("ok")
    def ok(job: Job) -> dict[str, str]:
        return {"echo": (job.payload or b"").decode()}

    @pgq.entrypoint("async_ok")
    async def async_ok(job: Job) -> str:
        await asyncio.sleep(0)
        return "async"

    @pgq.entrypoint("boom", on_failure="hold")
    def boom(job: Job) -> None:
        raise ValueError("no")

    @pgq.entrypoint("flaky")
    def flaky(job: Job) -> None:
        if job.attempts < 1:
            raise RetryRequested(delay=timedelta(milliseconds=50), reason="once")

    @pgq.entrypoint("spawn")
    def spawn(job: Job) -> None:  # handlers enqueue: the worker has the producer's part
        children.extend(pgq.queries.enqueue("child", None))

    pgq.entrypoint("child")(lambda job: None)


# -- minimality: every privilege is needed ------------------------------------------------------


@dataclasses.dataclass
class Probe:
    """Connections for one probe: ``role`` (the role under test) and ``root``."""

    role: Queries
    root: Queries

    @property
    def settings(self) -> DBSettings:
        return self.role.settings


def enqueue(p: Probe) -> None:
    p.role.enqueue("ep", b"x")


def update_priority(p: Probe) -> None:
    p.role.enqueue("ep", None, dedupe_key="k", on_conflict="update_priority")


def cancel(p: Probe) -> None:
    [job_id] = p.root.enqueue("ep", None, execute_after=FAR_FUTURE)
    assert p.role.mark_job_as_cancelled([job_id]) == [job_id]


def job_status(p: Probe) -> None:
    p.role.job_status([1])


def read_results(p: Probe) -> None:
    Results(p.role.driver, p.settings).get_results([1])


def aggregate(p: Probe) -> None:
    p.root.enqueue("ep", None)  # a log row to fold: a new bucket draws an id
    p.role.aggregate_logs()
    assert p.root.log_statistics(limit=1)


def register_schedule(p: Probe) -> None:
    p.role.insert_schedule({PROBE_SCHEDULE: FAR_FUTURE})


def claim_schedule(p: Probe) -> None:
    p.role.fetch_schedule({PROBE_SCHEDULE: FAR_FUTURE})


def delete_schedule(p: Probe) -> None:
    p.role.delete_schedule(entrypoints=[PROBE_SCHEDULE[0]])


def store_result(p: Probe) -> None:
    """A worker's outcome write with a result. A failed results write is logged and
    the outcome recorded without it, so this probe checks the stored row itself."""
    [job_id] = p.root.enqueue("store", None)
    worker = QueueManagerId(uuid.uuid4())
    [job] = p.root.dequeue(1, {"store": 0}, worker, None, timedelta(seconds=30))
    p.role.log_jobs([(job, "successful", None)], results=[StoredResult(job, "1")],
                    queue_manager_id=worker)
    if Results(p.root.driver, p.settings).get_result(job_id) is None:
        raise ResultNotStored(f"the result of job {job_id} was not stored")


class ResultNotStored(AssertionError):
    """The results write failed (and was logged) while the outcome was recorded."""


#: (kind, target, privilege) -> the operation the privilege is there for.
PROBES: dict[tuple[str, str, str], Callable[[Probe], None]] = {
    ("schema", "", "USAGE"): enqueue,
    ("table", "queue_table", "SELECT"): enqueue,
    ("table", "queue_table", "INSERT"): enqueue,
    ("table", "queue_table", "UPDATE"): update_priority,
    ("table", "queue_table", "DELETE"): cancel,
    ("sequence", "queue_table", "USAGE"): enqueue,
    ("table", "queue_table_log", "SELECT"): job_status,
    ("table", "queue_table_log", "INSERT"): enqueue,
    ("table", "queue_table_log", "UPDATE"): aggregate,
    ("table", "results_table", "SELECT"): read_results,
    ("table", "statistics_table", "SELECT"): aggregate,
    ("table", "statistics_table", "INSERT"): aggregate,
    ("table", "statistics_table", "UPDATE"): aggregate,
    ("sequence", "statistics_table", "USAGE"): aggregate,
    ("table", "schedules_table", "SELECT"): claim_schedule,
    ("table", "schedules_table", "INSERT"): register_schedule,
    ("table", "schedules_table", "UPDATE"): claim_schedule,
    ("table", "schedules_table", "DELETE"): delete_schedule,
    ("sequence", "schedules_table", "USAGE"): register_schedule,
    ("table", "results_table", "INSERT"): store_result,
    ("table", "results_table", "UPDATE"): store_result,
}
WORKER_PRIVILEGES = grants.privileges("worker")


def key(item: grants.Privilege) -> tuple[str, str, str]:
    return (item.kind, item.target, item.privilege)


def test_every_generated_privilege_has_a_probe() -> None:
    assert sorted(key(p) for p in WORKER_PRIVILEGES) == sorted(PROBES)


@pytest.fixture
def schema_dsn(empty_dsn: str) -> str:
    """A database with the queue and results tables in :data:`QUEUE_SCHEMA`."""
    settings = DBSettings(db_schema=QUEUE_SCHEMA)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        Schema(SyncPsycopgDriver(conn), settings).install()
    install_results(empty_dsn, settings)
    return empty_dsn


@pytest.mark.parametrize(
    "dropped", [None, *WORKER_PRIVILEGES],
    ids=lambda p: "all" if p is None else "-".join(key(p)).strip("-"),
)
def test_every_privilege_is_needed(
    schema_dsn: str, roles: Roles, dropped: grants.Privilege | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With everything granted the probes pass; without one privilege, its probe fails
    on exactly that object."""
    caplog.set_level(logging.ERROR, logger="pgqueue_sync.queries.outcomes")
    settings = DBSettings(db_schema=QUEUE_SCHEMA)
    role = roles.create(schema_dsn)
    kept = [p for p in WORKER_PRIVILEGES if p != dropped]
    run_sql(schema_dsn, grants.statements(kept, settings, role))
    with psycopg.connect(schema_dsn, autocommit=True) as root_conn, \
            queries_as(schema_dsn, role, settings) as queries:
        probe = Probe(queries, Queries(SyncPsycopgDriver(root_conn), settings=settings))
        if dropped is None:
            for check in dict.fromkeys(PROBES.values()):
                check(probe)
            return
        with pytest.raises((PermissionDenied, ResultNotStored)) as caught:
            PROBES[key(dropped)](probe)
    told = caplog.text if caught.type is ResultNotStored else str(caught.value)
    assert denied_on(dropped, settings) in told, told


def denied_on(item: grants.Privilege, settings: DBSettings) -> str:
    """How the server names the object of ``item`` when refusing it."""
    if item.kind == "schema":
        return f"permission denied for schema {QUEUE_SCHEMA}"
    if item.kind == "sequence":
        return f"permission denied for sequence {grants.serial_sequence(settings, item.target)[-1]}"
    return f"permission denied for table {settings.bare_name(item.target)}"


@pytest.mark.parametrize("dropped", [None, "USAGE", "CREATE"])
def test_admin_privileges_install_upgrade_and_uninstall(
    empty_dsn: str, roles: Roles, dropped: str | None
) -> None:
    settings = DBSettings(db_schema=QUEUE_SCHEMA)
    run_sql(empty_dsn, [sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(QUEUE_SCHEMA))])
    admin = roles.create(empty_dsn)
    kept = [p for p in grants.privileges("admin") if p.privilege != dropped]
    run_sql(empty_dsn, grants.statements(kept, settings, admin))
    with psycopg.connect(role_dsn(empty_dsn, admin), autocommit=True) as conn:
        schema = Schema(SyncPsycopgDriver(conn), settings)
        if dropped is not None:
            with pytest.raises(PermissionDenied, match=f"permission denied for schema "
                                                       f"{QUEUE_SCHEMA}"):
                schema.install(create_schema=False)
            return
        # The defaults: CREATE SCHEMA is skipped for the existing schema, which would
        # otherwise need CREATE on the database.
        schema.install()
        schema.install_results()
        assert schema.upgrade() == []
        schema.uninstall()
        schema.uninstall_results()
        assert schema.verify("absent") == []


# -- after an upgrade: new objects need the grants again ------------------------------------------


def test_grants_must_be_run_again_for_objects_an_upgrade_creates(
    empty_dsn: str, roles: Roles
) -> None:
    admin = roles.create(empty_dsn, "admin")
    worker = roles.create(empty_dsn)
    admin_dsn = role_dsn(empty_dsn, admin)
    assert invoke(admin_dsn, "install").exit_code == 0
    assert invoke(admin_dsn, "results", "install").exit_code == 0
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'pgqueuer'")
        assert owner.fetchone() == (admin,)
    granted = invoke(admin_dsn, "grants", "worker", worker)  # the owner may grant
    assert granted.exit_code == 0, granted.output
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE pgqueuer_schedules")  # as an old install would lack it
    assert invoke(admin_dsn, "upgrade").exit_code == 0
    with queries_as(empty_dsn, worker) as queries:
        with pytest.raises(PermissionDenied, match="pgqueuer_schedules"):
            register_schedule(Probe(queries, queries))
        assert invoke(admin_dsn, "grants", "worker", worker).exit_code == 0
        register_schedule(Probe(queries, queries))
    assert invoke(admin_dsn, "results", "uninstall", "--yes").exit_code == 0
    assert invoke(admin_dsn, "uninstall", "--yes").exit_code == 0


# -- a role without grants ------------------------------------------------------------------------


def test_enqueue_without_grants_raises_permission_denied_naming_the_fix(
    dsn: str, roles: Roles
) -> None:
    role = roles.create(dsn)
    with queries_as(dsn, role) as queries, pytest.raises(PermissionDenied) as caught:
        queries.enqueue("ep", None)
    message = str(caught.value)
    assert message.startswith("permission denied for table pgqueuer: "), message
    assert "pgq-sync grants" in message and "docs/permissions.md" in message
    assert isinstance(caught.value, DatabaseError)
    assert (caught.value.sqlstate, caught.value.transient) == ("42501", False)


def test_drain_worker_without_grants_raises_instead_of_retrying(
    dsn: str, roles: Roles, queries: Queries
) -> None:
    role = roles.create(dsn)
    queries.enqueue("ep", None)
    failures: list[BaseException] = []
    with pool_for(role_dsn(dsn, role)) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("ep")(lambda job: None)

        def target() -> None:
            try:
                pgq.run(mode=QueueExecutionMode.drain, dequeue_timeout=0.5,
                        log_aggregation_interval=0)
            except BaseException as exc:  # inspected below
                failures.append(exc)

        thread = threading.Thread(target=target, name="test-drain-worker", daemon=True)
        thread.start()
        try:
            thread.join(DRAIN_EXIT_TIMEOUT)
            assert not thread.is_alive(), f"still running after {DRAIN_EXIT_TIMEOUT}s"
        finally:
            pgq.shutdown.set()
            thread.join(DRAIN_EXIT_TIMEOUT)
    assert len(failures) == 1 and isinstance(failures[0], PermissionDenied), failures
    assert "permission denied for table pgqueuer" in str(failures[0])


def test_cli_enqueue_without_grants_prints_one_line(dsn: str, roles: Roles) -> None:
    role = roles.create(dsn)
    line = one_line_error(pgq_sync("--dsn", role_dsn(dsn, role), "enqueue", "ep", "x"))
    assert "permission denied" in line and "pgq-sync grants" in line


# -- the CLI ------------------------------------------------------------------------------------


def invoke(dsn: str, *args: str) -> Any:
    """``pgq-sync --dsn DSN ARGS`` in-process."""
    return CliRunner().invoke(cli, ["--dsn", dsn, *args], catch_exceptions=False)


def test_cli_dry_run_prints_the_prefixed_objects(dsn: str, roles: Roles) -> None:
    role = roles.create(dsn)
    result = invoke(dsn, "--prefix", "app_", "grants", "worker", role, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line]
    assert all(line.startswith("GRANT ") and line.endswith(f' TO "{role}";') for line in lines)
    for table in ("app_pgqueuer", "app_pgqueuer_log", "app_pgqueuer_statistics",
                  "app_pgqueuer_schedules", "app_pgqueuer_id_seq"):
        assert f'"{table}"' in result.stdout
    assert "app_pgqueue_sync_results" not in result.stdout  # not installed: left out
    with psycopg.connect(dsn, autocommit=True) as conn:  # a dry run changes nothing
        check = conn.execute("SELECT has_table_privilege(%s, 'pgqueuer', 'INSERT')", [role])
        assert check.fetchone() == (False,)


def test_cli_grants_run_in_one_go_and_cover_the_results_table(dsn: str, roles: Roles) -> None:
    role = roles.create(dsn)
    result = invoke(dsn, "grants", "producer", role)
    assert result.exit_code == 0, result.output
    assert f"granted the producer privileges to role {role!r}" in result.stdout
    assert "not installed" in result.stderr
    install_results(dsn)
    assert invoke(dsn, "grants", "producer", role).exit_code == 0  # again: idempotent
    with queries_as(dsn, role) as queries:
        [job_id] = queries.enqueue("ep", None)
        assert Results(queries.driver, DBSettings()).get_results([job_id]) == {}


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["run", "dry-run"])
def test_cli_grants_to_a_missing_role_fail_with_one_line(dsn: str, dry_run: list[str]) -> None:
    line = one_line_error(pgq_sync("--dsn", dsn, "grants", "worker", "no_such_role_x", *dry_run))
    assert "role 'no_such_role_x' does not exist" in line
