"""Schema install, verify, durability and catalog-driven upgrade against real PostgreSQL.

Each test works in its own scratch database (dropped WITH (FORCE) afterwards).
The server comes from ``PGQUEUE_SYNC_TEST_DSN``.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgqueue_sync.drivers import SyncPsycopgDriver
from pgqueue_sync.errors import AlreadyInstalledError, SchemaNotInstalledError
from pgqueue_sync.schema import Schema
from pgqueue_sync.settings import DBSettings
from pgqueue_sync.sql import ddl
from pgqueue_sync.types import Durability

SERVER_DSN = os.environ.get(
    "PGQUEUE_SYNC_TEST_DSN", "host=127.0.0.1 port=5432 user=root dbname=postgres"
)


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


@pytest.fixture(scope="module")
def database_pool(request: pytest.FixtureRequest) -> Iterator[DatabasePool]:
    pool = _pool(request, "schema")
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def scratch(database_pool: DatabasePool) -> Iterator[Any]:
    """A factory of scratch databases, each with an autocommit connection.

    Every database is this test's own; the pool drops it WITH (FORCE) at module teardown.
    """
    created: list[ScratchDB] = []

    def make() -> ScratchDB:
        name = database_pool.take()
        # Scratch data need not survive a crash: skip the WAL flush on every commit.
        dsn = make_conninfo(SERVER_DSN, dbname=name, options="-c synchronous_commit=off")
        db = ScratchDB(name, dsn, psycopg.connect(dsn, autocommit=True))
        created.append(db)
        return db

    try:
        yield make
    finally:
        for db in created:
            db.conn.close()


@pytest.fixture
def db(scratch: Any) -> ScratchDB:
    return scratch()  # type: ignore[no-any-return]


def catalog(db: ScratchDB, namespace: str = "public") -> dict[str, list[tuple[Any, ...]]]:
    """What ``pgq upgrade`` compares (and a little more), in a comparable form.

    Columns are keyed by name, not position: an upgrade appends added columns.
    """
    q = {
        "columns": """
            SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   a.attidentity, pg_get_expr(d.adbin, d.adrelid), c.relpersistence
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
            WHERE n.nspname = %(ns)s AND c.relkind = 'r' ORDER BY 1, 2""",
        "indexes": """
            SELECT c.relname, pg_get_indexdef(c.oid) FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %(ns)s AND c.relkind = 'i' ORDER BY 1""",
        "constraints": """
            SELECT conname, contype, pg_get_constraintdef(con.oid) FROM pg_constraint con
            JOIN pg_namespace n ON n.oid = con.connamespace WHERE n.nspname = %(ns)s
            ORDER BY 1""",
        "sequences": """
            SELECT c.relname, format_type(s.seqtypid, NULL), s.seqmax, c.relpersistence
            FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(ns)s
            ORDER BY 1""",
        "enums": """
            SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_type t
            JOIN pg_enum e ON e.enumtypid = t.oid JOIN pg_namespace n ON n.oid = t.typnamespace
            WHERE n.nspname = %(ns)s GROUP BY 1 ORDER BY 1""",
        "functions": """
            SELECT p.proname, p.prosrc FROM pg_proc p
            JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %(ns)s ORDER BY 1""",
        "triggers": """
            SELECT t.tgname, c.relname, t.tgtype, p.proname FROM pg_trigger t
            JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc p ON p.oid = t.tgfoid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %(ns)s AND NOT t.tgisinternal ORDER BY 1""",
    }
    return {key: db.rows(query, {"ns": namespace}) for key, query in q.items()}


def relpersistence(db: ScratchDB, settings: DBSettings) -> dict[str, str]:
    out = {}
    for role, field in ddl.TABLE_FIELDS.items():
        regclass = settings.ident(field).as_string()
        (value,) = db.rows(
            "SELECT relpersistence FROM pg_class WHERE oid = %s::regclass", [regclass]
        )[0]
        out[role] = value
    return out


# -- install / verify / uninstall ---------------------------------------------------------

ALL_OBJECTS = [
    "table 'pgqueuer'",
    "table 'pgqueuer_log'",
    "table 'pgqueuer_statistics'",
    "table 'pgqueuer_schedules'",
    "enum 'pgqueuer_status'",
    "function 'fn_pgqueuer_changed'",
    "trigger 'tg_pgqueuer_changed'",
]


def test_install_verify_uninstall_lifecycle(db: ScratchDB) -> None:
    schema = db.schema()
    assert not schema.is_installed()
    assert schema.verify("absent") == []

    # A driver on a non-autocommit connection joins the caller's transaction.
    with psycopg.connect(db.dsn) as conn:
        Schema(SyncPsycopgDriver(conn), DBSettings()).install()
        conn.rollback()
    assert schema.verify("absent") == []

    schema.install()
    assert schema.verify("present") == []
    assert schema.is_installed()
    assert schema.plan_upgrade() == []
    assert schema.upgrade() == []
    assert db.rows("SELECT enum_range(NULL::pgqueuer_status)::text[]")[0][0] == list(
        ddl.STATUS_LABELS
    )
    assert db.rows("SELECT tgtype FROM pg_trigger WHERE tgname = 'tg_pgqueuer_changed'") == [
        (ddl.TRIGGER_TGTYPE,)
    ]
    (body,) = db.rows("SELECT prosrc FROM pg_proc WHERE proname = 'fn_pgqueuer_changed'")[0]
    assert body == ddl.function_body("ch_pgqueuer")
    indexes = {name for (name, _) in catalog(db)["indexes"]}
    assert {spec.name(DBSettings()) for spec in ddl.INDEXES} <= indexes
    assert schema.current_durability() == dict.fromkeys(ddl.TABLE_FIELDS, True)

    with pytest.raises(AlreadyInstalledError) as excinfo:
        schema.install()
    assert all(item in str(excinfo.value) for item in ALL_OBJECTS)
    assert schema.verify("absent") == [f"unexpected {item}" for item in ALL_OBJECTS]

    db.conn.execute("CREATE TYPE pgqueuer_statistics_status AS ENUM ('x')")
    schema.uninstall()
    assert schema.verify("absent") == []
    assert not schema.is_installed()
    assert db.rows("SELECT typname FROM pg_type WHERE typname LIKE 'pgqueuer%%'") == []
    assert schema.verify("present") == [f"missing {item}" for item in ALL_OBJECTS] + [
        "missing index 'pgqueuer_log_job_id_status'",
        "missing index 'pgqueuer_picked_slot_idx'",
    ]
    schema.uninstall()  # every drop is IF EXISTS

    # Any one object already present blocks the install, which then leaves nothing behind.
    db.conn.execute("CREATE TYPE pgqueuer_status AS ENUM ('queued')")
    with pytest.raises(AlreadyInstalledError, match="enum 'pgqueuer_status'") as excinfo:
        schema.install()
    assert "table" not in str(excinfo.value)
    assert db.rows("SELECT count(*) FROM pg_class WHERE relname LIKE 'pgqueuer%%'") == [(0,)]
    db.conn.execute("DROP TYPE pgqueuer_status")
    schema.install()
    assert schema.verify("present") == []


def test_trigger_notifies_once_per_statement_never_on_update(db: ScratchDB) -> None:
    db.schema().install()
    db.conn.execute("LISTEN ch_pgqueuer")
    db.conn.execute(
        "INSERT INTO pgqueuer (priority, status, entrypoint) "
        "SELECT 0, 'queued', 'ep' FROM generate_series(1, 3)"
    )
    db.conn.execute("UPDATE pgqueuer SET priority = 1")
    db.conn.execute("DELETE FROM pgqueuer")
    payloads = [n.payload for n in db.conn.notifies(timeout=0.2, stop_after=5)]
    assert len(payloads) == 2
    assert '"operation" : "insert"' in payloads[0]
    assert '"operation" : "delete"' in payloads[1]
    assert '"type" : "table_changed_event"' in payloads[0]

    # verify('present') names what a 1.6 worker would refuse to boot without
    db.conn.execute("ALTER TABLE pgqueuer DROP COLUMN slot")  # takes picked_slot_idx along
    db.conn.execute("ALTER TABLE pgqueuer_log DROP COLUMN traceback")
    assert db.schema().verify("present") == [
        "missing column 'pgqueuer.slot'",
        "missing column 'pgqueuer_log.traceback'",
        "missing index 'pgqueuer_picked_slot_idx'",
    ]
    assert db.schema().is_installed()
    db.schema().upgrade()
    assert db.schema().verify("present") == []


NAMED = [
    DBSettings(prefix="acme_"),
    DBSettings(db_schema="jobs"),
    DBSettings(prefix="acme_", db_schema="Jobs2"),
]


def test_install_with_prefix_and_schema(db: ScratchDB) -> None:
    """Three differently named installs side by side in one database."""
    for settings in NAMED:
        schema = db.schema(settings)
        schema.install()
        assert schema.verify("present") == []
        assert schema.plan_upgrade() == []
    assert db.schema().verify("absent") == []  # the default names are untouched

    for settings in NAMED:
        prefix, namespace = settings.prefix, settings.db_schema or "public"
        snapshot = catalog(db, namespace)
        tables = {row[0] for row in snapshot["columns"] if row[0].startswith(prefix)}
        assert tables == {f"{prefix}pgqueuer{s}" for s in ("", "_log", "_statistics", "_schedules")}
        indexdef = dict(snapshot["indexes"])[f"{prefix}pgqueuer_picked_slot_idx"]
        status = f"{prefix}pgqueuer_status"
        if settings.db_schema:
            status = f"{namespace}.{status}"  # the schema-qualified cast of §4.4
        assert f"'picked'::{status})" in indexdef
        (body,) = db.rows(
            "SELECT prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = %s AND proname = %s",
            [namespace, f"{prefix}fn_pgqueuer_changed"],
        )[0]
        assert body == ddl.function_body(f"{prefix}ch_pgqueuer")

    for settings in NAMED:
        db.schema(settings).uninstall()
        assert db.schema(settings).verify("absent") == []

    premade = DBSettings(db_schema="premade")
    assert "CREATE SCHEMA" not in db.schema(premade).install_sql(create_schema=False)
    db.conn.execute("CREATE SCHEMA premade")
    db.schema(premade).install(create_schema=False)
    assert db.schema(premade).verify("present") == []


def test_offline_sql_matches_install(scratch: Any) -> None:
    settings = DBSettings(prefix="off_", db_schema="offline", durability=Durability.balanced)
    a, b = scratch(), scratch()
    a.schema(settings).install()
    script = b.schema(settings).install_sql()
    assert script.startswith("-- pgqueue_sync")
    b.conn.execute(script)
    assert catalog(a, "offline") == catalog(b, "offline")
    b.conn.execute(b.schema(settings).uninstall_sql())
    assert b.schema(settings).verify("absent") == []


# -- durability ---------------------------------------------------------------------------


def test_durability_levels(db: ScratchDB) -> None:
    settings = DBSettings()
    schema = db.schema(settings)
    with pytest.raises(SchemaNotInstalledError):
        schema.set_durability(Durability.volatile)

    for level in Durability:
        schema.install(durability=level)
        unlogged = level.unlogged_tables()
        expected = {role: "u" if role in unlogged else "p" for role in ddl.TABLE_FIELDS}
        assert relpersistence(db, settings) == expected, level
        assert schema.current_durability() == {r: r not in unlogged for r in ddl.TABLE_FIELDS}
        assert schema.plan_upgrade() == []  # upgrade never touches durability
        schema.uninstall()

    volatile = DBSettings(durability=Durability.volatile)
    db.schema(volatile).install()  # the settings' level is the default
    assert set(relpersistence(db, settings).values()) == {"u"}
    schema.uninstall()

    schema.install()
    db.conn.execute("INSERT INTO pgqueuer (priority, status, entrypoint) VALUES (1, 'queued', 'e')")
    assert schema.set_durability(Durability.balanced) == [
        'ALTER TABLE "pgqueuer_log" SET UNLOGGED',
        'ALTER TABLE "pgqueuer_statistics" SET UNLOGGED',
    ]
    assert relpersistence(db, settings) == {
        "queue": "p", "log": "u", "statistics": "u", "schedules": "p",
    }  # fmt: skip
    assert schema.set_durability(Durability.balanced) == []
    assert len(schema.set_durability(Durability.volatile)) == 2
    assert set(relpersistence(db, settings).values()) == {"u"}
    assert len(schema.set_durability(Durability.durable)) == 4
    assert set(relpersistence(db, settings).values()) == {"p"}
    assert db.rows("SELECT count(*) FROM pgqueuer") == [(1,)]
    assert schema.durability_sql(Durability.volatile).count("SET UNLOGGED") == 4
    assert schema.durability_sql(Durability.durable).count("SET LOGGED") == 4


# -- upgrade ------------------------------------------------------------------------------


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


DATA_QUERIES = {
    "queue": "SELECT id, priority, status::text, entrypoint, payload, dedupe_key, headers::text,"
    " attempts FROM pgqueuer ORDER BY id",
    "log": "SELECT id, job_id, status::text, traceback::text FROM pgqueuer_log ORDER BY id",
    "statistics": "SELECT id, created, count FROM pgqueuer_statistics ORDER BY id",
    "schedules": "SELECT id, expression, entrypoint FROM pgqueuer_schedules ORDER BY id",
}


def test_upgrade_from_13_shaped_database(db: ScratchDB) -> None:
    make_13_shaped(db)
    schema = db.schema()
    before = {key: db.rows(q) for key, q in DATA_QUERIES.items()}
    assert "missing column 'pgqueuer.slot'" in schema.verify("present")

    plan = schema.plan_upgrade()
    text = "\n".join(plan)
    assert 'ADD COLUMN "slot" bigint' in text
    assert 'CREATE UNIQUE INDEX "pgqueuer_picked_slot_idx"' in text
    assert 'CREATE INDEX "pgqueuer_picked_heartbeat_idx"' in text
    assert "SET DEFAULT date_trunc('sec'::text, now())" in text
    assert 'DROP INDEX IF EXISTS "pgqueuer_heartbeat_id_id1_idx"' in text
    rebuild = ddl.rebuild_name("pgqueuer_statistics_unique_count")
    assert f'CREATE UNIQUE INDEX "{rebuild}"' in text
    assert f'ALTER INDEX "{rebuild}" RENAME TO "pgqueuer_statistics_unique_count"' in text
    assert text.index("WITH bucket AS") < text.index(f'CREATE UNIQUE INDEX "{rebuild}"')

    assert schema.upgrade() == plan
    assert schema.plan_upgrade() == []
    assert schema.upgrade() == []
    assert schema.verify("present") == []
    assert {key: db.rows(q) for key, q in DATA_QUERIES.items()} == before
    assert db.rows("SELECT count(*) FROM pgqueuer WHERE slot IS NOT NULL") == [(0,)]

    # ... and the catalog is now exactly that of a fresh install
    upgraded = catalog(db)
    schema.uninstall()
    schema.install()
    assert upgraded == catalog(db)


def make_10_shaped(db: ScratchDB) -> None:
    """An older layout: int4 ids, no 'failed' label, legacy statistics enum, old routines.

    Built from our own table DDL and rewound by hand, with rows in the queue.
    """
    settings = DBSettings()
    db.conn.execute(
        "CREATE TYPE pgqueuer_status AS ENUM "
        "('queued', 'picked', 'successful', 'exception', 'canceled', 'deleted')"
    )
    db.conn.execute("CREATE TYPE pgqueuer_statistics_status AS ENUM ('exception', 'successful')")
    for spec in ddl.TABLES:
        db.conn.execute(ddl.create_table(settings, spec.role, unlogged=False))
    db.conn.execute(
        """
        ALTER TABLE pgqueuer DROP COLUMN attempts, DROP COLUMN headers, DROP COLUMN slot;
        ALTER TABLE pgqueuer ALTER COLUMN id TYPE integer;
        ALTER SEQUENCE pgqueuer_id_seq AS integer;
        ALTER TABLE pgqueuer ALTER COLUMN execute_after DROP NOT NULL;
        ALTER TABLE pgqueuer_log DROP COLUMN traceback;
        ALTER TABLE pgqueuer_log ALTER COLUMN job_id TYPE integer;
        ALTER TABLE pgqueuer_statistics ALTER COLUMN status TYPE pgqueuer_statistics_status
            USING status::text::pgqueuer_statistics_status;
        ALTER TABLE pgqueuer_statistics
            ADD COLUMN time_in_queue interval NOT NULL DEFAULT '1 second';
        ALTER TABLE pgqueuer_statistics ALTER COLUMN time_in_queue DROP DEFAULT;
        ALTER TABLE pgqueuer_schedules
            DROP CONSTRAINT pgqueuer_schedules_expression_entrypoint_key;
        ALTER TABLE pgqueuer_schedules ALTER COLUMN status DROP DEFAULT;
        CREATE INDEX pgqueuer_log_not_aggregated
            ON pgqueuer_log (aggregated, status, entrypoint, priority);
        CREATE INDEX pgqueuer_heartbeat_id_id1_idx ON pgqueuer (heartbeat, id);
        CREATE FUNCTION fn_pgqueuer_changed() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN PERFORM pg_notify('ch_pgqueuer', 'x'); RETURN NULL; END; $$;
        CREATE TRIGGER tg_pgqueuer_changed AFTER INSERT OR UPDATE OR DELETE ON pgqueuer
            FOR EACH ROW EXECUTE FUNCTION fn_pgqueuer_changed();
        INSERT INTO pgqueuer (priority, status, entrypoint, payload)
            VALUES (1, 'queued', 'a', 'p'), (2, 'picked', 'b', NULL);
        INSERT INTO pgqueuer_statistics (count, priority, status, entrypoint, time_in_queue)
            VALUES (1, 0, 'successful', 'a', '1 second');
        """
    )


def test_upgrade_from_older_database(db: ScratchDB) -> None:
    schema = db.schema()
    schema.install()
    want = catalog(db)
    schema.uninstall()

    make_10_shaped(db)
    assert schema.is_installed()
    narrow = "\n".join(db.schema(DBSettings(widen_id=False)).plan_upgrade())
    assert "bigint" not in narrow.replace('"slot" bigint', "")

    ran = schema.upgrade()
    # the label went first (and committed), after its declared predecessor
    assert ran[0] == (
        "ALTER TYPE \"pgqueuer_status\" ADD VALUE IF NOT EXISTS 'failed' AFTER 'deleted'"
    )
    text = "\n".join(ran)
    assert 'ALTER TABLE "pgqueuer" ALTER COLUMN "id" TYPE bigint' in text
    assert 'ALTER SEQUENCE "public"."pgqueuer_id_seq" AS bigint' in text
    assert 'ALTER COLUMN "time_in_queue" DROP NOT NULL' in text
    assert ran[-1] == 'DROP TYPE IF EXISTS "pgqueuer_statistics_status"'
    assert schema.plan_upgrade() == []
    assert schema.verify("present") == []

    live = catalog(db)
    # the retired column is kept (only relaxed); everything else matches a fresh install
    extra = [row for row in live["columns"] if row[1] == "time_in_queue"]
    assert extra == [("pgqueuer_statistics", "time_in_queue", "interval", False, "", None, "p")]
    live["columns"].remove(extra[0])
    assert live == want
    assert db.rows("SELECT id, attempts, headers FROM pgqueuer ORDER BY id") == [
        (1, 0, None),
        (2, 0, None),
    ]
    assert db.rows("SELECT status::text FROM pgqueuer_statistics") == [("successful",)]


def test_upgrade_repairs_drift(db: ScratchDB) -> None:
    schema = db.schema()
    schema.install()

    # whitespace in the function body is not a difference, as for pgq upgrade
    body = ddl.function_body("ch_pgqueuer")
    reflowed = "\n  " + body.replace("\n", "\n\n\t").replace("    ", " ") + "\n"
    replace = (
        "CREATE OR REPLACE FUNCTION fn_pgqueuer_changed() RETURNS trigger LANGUAGE plpgsql AS "
    )
    db.conn.execute(sql.SQL(replace + "{}").format(sql.Literal(reflowed)))
    assert schema.plan_upgrade() == []

    # a differing index is rebuilt side by side; a differing body is replaced
    db.conn.execute("DROP INDEX pgqueuer_ep_ea_idx")
    db.conn.execute("CREATE INDEX pgqueuer_ep_ea_idx ON pgqueuer (entrypoint)")
    db.conn.execute(replace + "$$ BEGIN RETURN NULL; END; $$")
    # a rebuild cut off between its drop and its rename is finished
    name, temporary = "pgqueuer_log_created", ddl.rebuild_name("pgqueuer_log_created")
    db.conn.execute(f"ALTER INDEX {name} RENAME TO {temporary}")
    plan = schema.plan_upgrade()
    assert plan == [
        f'DROP INDEX IF EXISTS "{ddl.rebuild_name("pgqueuer_ep_ea_idx")}"',
        f'CREATE INDEX "{ddl.rebuild_name("pgqueuer_ep_ea_idx")}" ON "pgqueuer" USING btree '
        "(entrypoint, execute_after) WHERE (status = 'queued'::\"pgqueuer_status\")",
        'DROP INDEX IF EXISTS "pgqueuer_ep_ea_idx"',
        f'ALTER INDEX "{ddl.rebuild_name("pgqueuer_ep_ea_idx")}" RENAME TO "pgqueuer_ep_ea_idx"',
        f'ALTER INDEX "{temporary}" RENAME TO "{name}"',
        plan[-1],
    ]
    assert plan[-1].startswith('CREATE OR REPLACE FUNCTION "fn_pgqueuer_changed"()')
    assert schema.upgrade() == plan
    assert schema.plan_upgrade() == []

    # split statistics buckets are folded before the unique index is (re)built
    db.conn.execute(
        """
        DROP INDEX pgqueuer_statistics_unique_count;
        INSERT INTO pgqueuer_statistics (created, count, priority, status, entrypoint)
        VALUES ('2024-01-01 00:00:01.1+00', 3, 0, 'successful', 'a'),
               ('2024-01-01 00:00:01.7+00', 4, 0, 'successful', 'a'),
               ('2024-01-01 00:00:01.9+00', 5, 0, 'successful', 'a'),
               ('2024-01-01 00:00:01.5+00', 1, 0, 'exception', 'a'),
               ('2024-01-01 00:00:02+00', 2, 0, 'successful', 'a');
        """
    )
    ran = schema.upgrade()
    assert len(ran) == 2 and ran[0].startswith("WITH bucket AS")
    assert db.rows("SELECT id, count, status::text FROM pgqueuer_statistics ORDER BY id") == [
        (1, 12, "successful"),
        (4, 1, "exception"),
        (5, 2, "successful"),
    ]
    assert schema.plan_upgrade() == []


def test_upgrade_of_empty_database_installs(db: ScratchDB) -> None:
    settings = DBSettings(db_schema="fresh", durability=Durability.balanced)
    schema = db.schema(settings)
    ran = schema.upgrade()
    assert ran[0] == 'CREATE SCHEMA IF NOT EXISTS "fresh"'
    assert schema.verify("present") == []
    assert schema.plan_upgrade() == []
    assert relpersistence(db, settings)["log"] == "u"


def test_lock_key_matches_pgqueuer() -> None:
    assert ddl.advisory_lock_key(DBSettings()) == zlib.crc32(b"pgqueuer")
    assert ddl.advisory_lock_key(DBSettings(db_schema="s", prefix="p_")) == zlib.crc32(
        b"s.p_pgqueuer"
    )
