"""The fault-injection toolkit (tests/faults.py) against the real server."""

from __future__ import annotations

import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.faults import PgProxy, PrivateCluster, _Wire, terminate_backends
from tests.worker_helpers import wait_for

T = TypeVar("T")

MARKER = b"pgqs_marker"


def _connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    kwargs.setdefault("autocommit", True)
    kwargs.setdefault("connect_timeout", 5)
    return psycopg.connect(dsn, **kwargs)


def _proxy_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("pgproxy-")]


@pytest.fixture
def table(dsn: str) -> Iterator[str]:
    """A fresh table ``t(id int, note text)`` in the per-test database; returns its name."""
    name = f"t_{uuid.uuid4().hex[:8]}"
    with _connect(dsn) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int, note text)").format(sql.Identifier(name)))
    yield name


def _rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    with _connect(dsn) as conn:
        query = sql.SQL("SELECT id FROM {} ORDER BY id").format(sql.Identifier(table))
        return conn.execute(query).fetchall()


# --------------------------------------------------------------------------- plain proxying


def test_proxy_forwards_queries(pg_proxy: PgProxy, dsn: str) -> None:
    with _connect(pg_proxy.dsn(dsn)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT %s::int + 1", [41]).fetchone() == (42,)
        assert conn.info.port == pg_proxy.port
        assert pg_proxy.open_connections() == 1
        # Several MB each way: partial messages across reads, back-pressure.
        rows = conn.execute("SELECT repeat('x', 1000) FROM generate_series(1, 5000)").fetchall()
        assert len(rows) == 5000 and all(len(r[0]) == 1000 for r in rows)
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE big (v text)")
            with cur.copy("COPY big FROM STDIN") as copy:
                for i in range(20000):
                    copy.write_row([f"{i:08d}" * 20])
            assert cur.execute("SELECT count(*) FROM big").fetchone() == (20000,)
        with conn.pipeline():
            cur1 = conn.execute("SELECT 1")
            cur2 = conn.execute("SELECT %s::text", ["two"])
        assert cur1.fetchone() == (1,) and cur2.fetchone() == ("two",)
    wait_for(lambda: pg_proxy.open_connections() == 0, what="the pair to close")
    assert pg_proxy.accepted == 1 and pg_proxy.refused == 0


def test_dsn_rewrites_host_port_and_sslmode(pg_proxy: PgProxy) -> None:
    url = conninfo_to_dict(pg_proxy.dsn("postgresql://bob@db.example:6543/app?sslmode=require"))
    assert url == {
        "user": "bob",
        "dbname": "app",
        "host": "127.0.0.1",
        "port": str(pg_proxy.port),
        "sslmode": "disable",
    }
    keywords = conninfo_to_dict(
        pg_proxy.dsn("host=10.1.1.1 hostaddr=10.1.1.1 port=5433 user=u dbname=d")
    )
    assert keywords == {
        "host": "127.0.0.1",
        "port": str(pg_proxy.port),
        "user": "u",
        "dbname": "d",
        "sslmode": "disable",
    }


def test_stop_joins_threads_and_frees_the_port(server_dsn: str, dsn: str) -> None:
    params = conninfo_to_dict(server_dsn)
    proxy = PgProxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    with proxy:
        conn = _connect(proxy.dsn(dsn))
        conn.execute("SELECT 1")
        assert any(name.endswith("-accept") for name in _proxy_threads())
    try:
        assert _proxy_threads() == []
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            _connect(proxy.dsn(dsn), connect_timeout=2).close()
    finally:
        conn.close()


# --------------------------------------------------------------------------- cut / refuse


def test_cut_all_breaks_open_connections_only(pg_proxy: PgProxy, dsn: str) -> None:
    proxied = pg_proxy.dsn(dsn)
    with _connect(proxied) as first, _connect(proxied) as second:
        first.execute("SELECT 1")
        second.execute("SELECT 1")
        assert pg_proxy.open_connections() == 2
        assert pg_proxy.cut_all() == 2
        assert pg_proxy.open_connections() == 0
        with pytest.raises(psycopg.OperationalError):
            first.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            second.execute("SELECT 1")
    with _connect(proxied) as fresh:
        assert fresh.execute("SELECT 2").fetchone() == (2,)
    wait_for(lambda: pg_proxy.open_connections() == 0, what="the pair to close")
    assert pg_proxy.cut_all() == 0


def test_cut_all_during_a_running_query(pg_proxy: PgProxy, dsn: str) -> None:
    with _connect(pg_proxy.dsn(dsn)) as conn:
        conn.execute("SELECT 1")
        errors: list[BaseException] = []

        def run() -> None:
            try:
                conn.execute("SELECT pg_sleep(30)")
            except BaseException as exc:  # noqa: B036 - reported to the test thread
                errors.append(exc)

        worker = threading.Thread(target=run, name="test-sleeper", daemon=True)
        worker.start()
        try:
            with _connect(dsn) as admin:
                wait_for(
                    lambda: admin.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'"
                        " AND state = 'active' AND datname = current_database()"
                    ).fetchone(),
                    what="the query to start",
                )
            assert pg_proxy.cut_all() == 1
        finally:
            worker.join(10)
        assert not worker.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], psycopg.OperationalError)


def test_refuse_for_a_while_then_accept(pg_proxy: PgProxy, dsn: str) -> None:
    proxied = pg_proxy.dsn(dsn)
    started = time.monotonic()
    pg_proxy.refuse(1.0)
    with pytest.raises(psycopg.OperationalError):
        _connect(proxied).close()
    assert pg_proxy.refused == 1

    def try_connect() -> bool:
        try:
            with _connect(proxied) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    wait_for(try_connect, timeout=10, what="refusal to end")
    assert time.monotonic() - started >= 0.95
    assert not pg_proxy.refusing


def test_refuse_until_accept_and_refuse_and_cut(pg_proxy: PgProxy, dsn: str) -> None:
    proxied = pg_proxy.dsn(dsn)
    with _connect(proxied) as conn:
        conn.execute("SELECT 1")
        assert pg_proxy.refuse_and_cut() == 1
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    for _ in range(3):
        with pytest.raises(psycopg.OperationalError):
            _connect(proxied).close()
    assert pg_proxy.refused == 3 and pg_proxy.refusing
    pg_proxy.accept()
    with _connect(proxied) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# --------------------------------------------------------------------------- lost replies


@pytest.mark.parametrize("params", [None, [1]], ids=["simple-query", "extended-query"])
def test_swallow_next_reply_commits_but_loses_the_reply(
    pg_proxy: PgProxy, dsn: str, table: str, params: list[int] | None
) -> None:
    insert = sql.SQL("INSERT INTO {} (id) VALUES (1) /* pgqs_marker */").format(
        sql.Identifier(table)
    )
    if params is not None:
        insert = sql.SQL("INSERT INTO {} (id) VALUES (%s) /* pgqs_marker */").format(
            sql.Identifier(table)
        )
    with _connect(pg_proxy.dsn(dsn)) as conn:
        assert conn.execute("SELECT 'before'").fetchone() == ("before",)
        event = pg_proxy.swallow_next_reply(MARKER)
        assert not event.is_set()
        with pytest.raises(psycopg.OperationalError):
            conn.execute(insert, params)
        assert event.wait(5)
        assert conn.closed or conn.broken
    assert _rows(dsn, table) == [(1,)]
    wait_for(lambda: pg_proxy.open_connections() == 0, what="the pair to close")
    # One shot: the same statement now goes through.
    with _connect(pg_proxy.dsn(dsn)) as conn:
        conn.execute(insert, params)
    assert _rows(dsn, table) == [(1,), (1,)]


def test_swallow_prepared_statement_executes_first(pg_proxy: PgProxy, dsn: str, table: str) -> None:
    """psycopg prepares a named statement with its own Sync: the Bind is what runs it."""
    insert = sql.SQL("INSERT INTO {} (id) VALUES (%s) /* pgqs_marker */").format(
        sql.Identifier(table)
    )
    with _connect(pg_proxy.dsn(dsn)) as conn:
        conn.execute(insert, [1], prepare=True)  # Parse (named) + Sync, then Bind/Execute
        event = pg_proxy.swallow_next_reply(MARKER)
        with pytest.raises(psycopg.OperationalError):
            conn.execute(insert, [2], prepare=True)  # Bind/Execute only
        assert event.wait(5)
    assert _rows(dsn, table) == [(1,), (2,)]


def test_swallow_in_pipeline_delivers_nothing_after_the_marker(
    pg_proxy: PgProxy, dsn: str, table: str
) -> None:
    ident = sql.Identifier(table)
    with _connect(pg_proxy.dsn(dsn)) as conn:
        event = pg_proxy.swallow_next_reply(MARKER)
        with pytest.raises(psycopg.OperationalError), conn.pipeline():
            conn.execute(sql.SQL("INSERT INTO {} (id) VALUES (%s)").format(ident), [1])
            conn.execute(
                sql.SQL("INSERT INTO {} (id) VALUES (%s) /* pgqs_marker */").format(ident), [2]
            )
        assert event.wait(5)
    # One implicit transaction per Sync: both committed before the lost ReadyForQuery.
    assert _rows(dsn, table) == [(1,), (2,)]


def test_swallow_ignores_other_statements_and_connections(
    pg_proxy: PgProxy, dsn: str, table: str
) -> None:
    ident = sql.Identifier(table)
    event = pg_proxy.swallow_next_reply(b"pgqs_other_marker")
    with _connect(pg_proxy.dsn(dsn)) as bystander, _connect(pg_proxy.dsn(dsn)) as victim:
        bystander.execute(sql.SQL("INSERT INTO {} (id) VALUES (1)").format(ident))
        victim.execute(sql.SQL("INSERT INTO {} (id) VALUES (2)").format(ident))
        with pytest.raises(psycopg.OperationalError):
            victim.execute(
                sql.SQL("INSERT INTO {} (id) VALUES (%s) /* pgqs_other_marker */").format(ident),
                [3],
            )
        assert event.wait(5)
        bystander.execute(sql.SQL("INSERT INTO {} (id) VALUES (4)").format(ident))
    assert _rows(dsn, table) == [(1,), (2,), (3,), (4,)]


# --------------------------------------------------------------------------- wire tracking


def _msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _startup() -> bytes:
    body = struct.pack("!i", 196608) + b"user\0u\0database\0d\0\0"
    return struct.pack("!i", len(body) + 4) + body


def _feed_bytewise(feed: Callable[[bytes], Any], data: bytes) -> list[Any]:
    return [feed(data[i : i + 1]) for i in range(len(data))]


def test_wire_discards_from_the_marked_statement_in_a_pipeline() -> None:
    proxy = PgProxy("127.0.0.1", 1)  # never started: only the parser is exercised
    event = proxy.swallow_next_reply(MARKER)
    wire = _Wire(proxy)
    ssl_request = struct.pack("!ii", 8, 80877103)
    client = (
        ssl_request
        + _startup()
        + _msg(b"P", b"\0SELECT 1\0\0\0")
        + _msg(b"B", b"\0\0\0\0\0\0\0\0")
        + _msg(b"D", b"P\0")
        + _msg(b"E", b"\0\0\0\0\0")
        + _msg(b"P", b"\0INSERT /* pgqs_marker */\0\0\0")
        + _msg(b"B", b"\0\0\0\0\0\0\0\0")
        + _msg(b"D", b"P\0")
        + _msg(b"E", b"\0\0\0\0\0")
        + _msg(b"S")
    )
    results = _feed_bytewise(wire.from_client, client)
    to_server = b"".join(r[0] for r in results)
    to_client = b"".join(r[1] for r in results)
    assert to_client == b"N"
    assert to_server == client[len(ssl_request) :]
    assert wire.swallow is not None and wire.swallow.event is event

    before = (
        _msg(b"R", b"\0\0\0\0")
        + _msg(b"S", b"a\0b\0")
        + _msg(b"K", b"\0" * 8)
        + _msg(b"Z", b"I")
        + _msg(b"1")
        + _msg(b"2")
        + _msg(b"T", b"\0\0")
        + _msg(b"D", b"\0\1\0\0\0\1" + b"1")
        + _msg(b"C", b"SELECT 1\0")
    )
    marked = _msg(b"1") + _msg(b"2") + _msg(b"n") + _msg(b"C", b"INSERT 0 1\0")
    after = _msg(b"Z", b"I") + _msg(b"N", b"late\0")
    forwarded = b"".join(_feed_bytewise(wire.from_server, before + marked + after))
    assert forwarded == before
    assert wire.swallowed
    assert not event.is_set()  # set by the connection thread once both sockets are closed


def test_wire_error_before_the_marker_is_delivered() -> None:
    proxy = PgProxy("127.0.0.1", 1)
    proxy.swallow_next_reply(MARKER)
    wire = _Wire(proxy)
    wire.from_client(
        _startup()
        + _msg(b"Q", b"SELECT 1\0")
        + _msg(b"P", b"\0bad sql\0\0\0")
        + _msg(b"B", b"\0\0\0\0\0\0\0\0")
        + _msg(b"P", b"\0SELECT /* pgqs_marker */\0\0\0")
        + _msg(b"S")
    )
    startup_reply = _msg(b"R", b"\0\0\0\0") + _msg(b"Z", b"I")
    query_reply = _msg(b"T", b"\0\0") + _msg(b"C", b"SELECT 1\0") + _msg(b"Z", b"I")
    error = _msg(b"E", b"Msyntax error\0\0")
    out = wire.from_server(startup_reply + query_reply + error + _msg(b"Z", b"E"))
    # The error answers the bad Parse: delivered. The server skipped the rest up to
    # Sync, so the ReadyForQuery already belongs to the marked statement: discarded.
    assert out == startup_reply + query_reply + error
    assert wire.swallowed


def test_wire_passes_everything_when_not_armed() -> None:
    wire = _Wire(PgProxy("127.0.0.1", 1))
    client = _startup() + _msg(b"Q", b"SELECT 'pgqs_marker'\0")
    assert wire.from_client(client) == (client, b"")
    server = _msg(b"Z", b"I") + _msg(b"T", b"\0\0") + _msg(b"C", b"SELECT 1\0") + _msg(b"Z", b"I")
    assert wire.from_server(server) == server
    assert not wire.swallowed


# --------------------------------------------------------------------------- backends


def test_terminate_backends(server_dsn: str, dsn: str) -> None:
    dbname = str(conninfo_to_dict(dsn)["dbname"])
    victims = [_connect(dsn, application_name="pgqs_victim") for _ in range(2)]
    bystander = _connect(dsn, application_name="pgqs_bystander")
    try:
        for conn in [*victims, bystander]:
            conn.execute("SELECT 1")
        assert terminate_backends(server_dsn, dbname, application_name="pgqs_victim") == 2
        for conn in victims:
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        assert bystander.execute("SELECT 1").fetchone() == (1,)
        # Connected to that very database itself, it spares only its own session.
        assert terminate_backends(dsn, dbname) == 1
        with pytest.raises(psycopg.OperationalError):
            bystander.execute("SELECT 1")
    finally:
        for conn in [*victims, bystander]:
            conn.close()


# --------------------------------------------------------------------------- private cluster


def _broken(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_private_dsn_has_the_schema(private_dsn: str) -> None:
    with _connect(private_dsn) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
        assert {"pgqueuer", "pgqueuer_log", "pgqueuer_statistics"} <= tables


def test_private_cluster_restart(private_cluster: PrivateCluster) -> None:
    private_cluster.ensure_started()
    assert private_cluster.is_ready()
    with _connect(private_cluster.dsn) as old:
        assert old.execute("SELECT 1").fetchone() == (1,)
        private_cluster.restart(mode="immediate")
        assert _broken(old)
    with _connect(private_cluster.dsn) as new:
        assert new.execute("SELECT 1").fetchone() == (1,)


def test_private_cluster_kill_then_private_dsn_starts_it(
    private_cluster: PrivateCluster, request: pytest.FixtureRequest
) -> None:
    private_cluster.ensure_started()
    with (
        PgProxy("127.0.0.1", private_cluster.port) as proxy,
        _connect(private_cluster.dsn) as direct,
        _connect(proxy.dsn(private_cluster.dsn)) as proxied,
    ):
        direct.execute("SELECT 1")
        proxied.execute("SELECT 1")
        private_cluster.kill()
        assert private_cluster.postmaster_pid() is None
        assert not private_cluster.is_ready()
        assert _broken(direct) and _broken(proxied)
        with pytest.raises(psycopg.OperationalError):
            _connect(proxy.dsn(private_cluster.dsn)).close()
        # The fixture starts a cluster that a previous test left down (after a crash here).
        target = request.getfixturevalue("private_dsn")
        assert private_cluster.is_ready()
        with _connect(proxy.dsn(target)) as again:
            assert again.execute("SELECT count(*) FROM pgqueuer").fetchone() == (0,)
