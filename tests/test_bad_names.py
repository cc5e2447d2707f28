"""Hostile and over-long object names: refused before any SQL, or installed exactly.

PostgreSQL truncates identifiers past 63 bytes. Every name derived from the
prefix, the schema or a per-object setting must either fit (and then install,
enqueue, dedupe and uninstall under exactly that name) or be refused with an
error naming the setting and the longest length that works.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pgqueue_sync import ConfigurationError, Queries
from pgqueue_sync.app import PgQueuer
from pgqueue_sync.errors import DuplicateJobError
from pgqueue_sync.schema import Schema
from pgqueue_sync.settings import DBSettings
from pgqueue_sync.sql.names import derived_names

from .worker_helpers import pool_for

#: The longest prefix every derived name fits with (the results table's index
#: ``{prefix}pgqueue_sync_results_finished_idx`` is the longest default name).
LONGEST_PREFIX = 63 - len("pgqueue_sync_results_finished_idx")

HOSTILE = [
    "1starts_with_digit",
    "has-dash",
    "has space",
    'quote"d',
    "semi;colon",
    "drop table x; --",
    "nul\x00byte",
    "ümlaut",
    "dotted.name",
    "a" * (LONGEST_PREFIX + 1),
]


@pytest.mark.parametrize("prefix", HOSTILE, ids=repr)
def test_a_hostile_prefix_is_refused_naming_it(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="prefix") as caught:
        Queries(None, settings=DBSettings(prefix=prefix))  # type: ignore[arg-type]
    assert "Traceback" not in str(caught.value)


@pytest.mark.parametrize("schema", [*HOSTILE[:-1], "a" * 64],
                         ids=repr)
def test_a_hostile_schema_is_refused_naming_it(schema: str) -> None:
    with pytest.raises(ConfigurationError, match="schema"):
        DBSettings(db_schema=schema)


@pytest.mark.parametrize(
    "field",
    ["queue_table", "queue_table_log", "statistics_table", "schedules_table", "results_table",
     "queue_status_type", "function", "trigger", "channel"],
)
@pytest.mark.parametrize("value", ["x" * 64, 'a"b', "a;b", "a b"], ids=["64 bytes", "quote",
                                                                          "semicolon", "space"])
def test_a_hostile_object_name_is_refused_naming_the_setting(field: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Queries(None, settings=DBSettings(**{field: value}))  # type: ignore[arg-type]
    message = str(caught.value)
    assert field in message or field.replace("_", " ") in message or "name" in message
    assert value[:10] in message or "bytes" in message


def test_a_long_table_name_says_how_long_it_may_be() -> None:
    with pytest.raises(ConfigurationError, match=r"PGQUEUER_QUEUE_TABLE") as caught:
        Queries(None, settings=DBSettings(queue_table="q" * 50))  # type: ignore[arg-type]
    assert "at most 42 bytes" in str(caught.value)  # 63 - len("_picked_heartbeat_idx")


def test_a_prefix_one_byte_too_long_says_the_longest_that_works() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Schema(None, DBSettings(prefix="p" * (LONGEST_PREFIX + 1)))  # type: ignore[arg-type]
    assert f"prefix of at most {LONGEST_PREFIX} bytes" in str(caught.value)


def test_the_in_memory_adapter_refuses_the_same_names() -> None:
    from pgqueue_sync.testing.inmemory import InMemoryQueries

    with pytest.raises(ConfigurationError, match="prefix"):
        InMemoryQueries(settings=DBSettings(prefix="p" * (LONGEST_PREFIX + 1)))


def _object_names(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE nspname = %s UNION SELECT typname FROM pg_type t "
        "JOIN pg_namespace n ON n.oid = t.typnamespace WHERE nspname = %s "
        "UNION SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE nspname = %s UNION SELECT tgname FROM pg_trigger",
        (schema, schema, schema),
    ).fetchall()
    return {r[0] for r in rows}


def test_the_longest_prefix_installs_every_object_under_its_exact_name(empty_dsn: str) -> None:
    settings = DBSettings(prefix="p" * LONGEST_PREFIX)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        from pgqueue_sync.drivers import SyncPsycopgDriver

        schema = Schema(SyncPsycopgDriver(conn), settings)
        schema.install()
        schema.install_results()
        installed = _object_names(conn, "public")
        expected = {n.name for n in derived_names(settings)} - {
            # created by older PgQueuer versions only; upgrade drops them
            settings.index_name("heartbeat_id_id1_idx"),
            settings.legacy_statistics_status_type,
        }
        assert expected <= installed, sorted(expected - installed)
        queries = Queries(SyncPsycopgDriver(conn), settings=settings)
        # The dedupe index is recognised by name: a truncated name would turn a
        # duplicate into an anonymous unique violation.
        queries.enqueue("ep", None, dedupe_key="k")
        with pytest.raises(DuplicateJobError):
            queries.enqueue("ep", None, dedupe_key="k")
        schema.uninstall()
        schema.uninstall_results()
        assert not expected & _object_names(conn, "public")


def test_a_worker_runs_under_the_longest_prefix(empty_dsn: str) -> None:
    from pgqueue_sync.drivers import SyncPsycopgDriver

    settings = DBSettings(prefix="w" * LONGEST_PREFIX)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        Schema(SyncPsycopgDriver(conn), settings).install()
    with pool_for(empty_dsn) as pool:
        pgq = PgQueuer.from_psycopg_pool(pool, settings=settings)
        seen: list[int] = []
        pgq.entrypoint("ep")(lambda job: seen.append(job.id))
        ids = pgq.queries.enqueue(["ep"] * 5, [None] * 5)
        pgq.run(mode="drain", dequeue_timeout=1)
        assert sorted(seen) == sorted(ids)


def test_enqueue_finds_a_renamed_id_sequence(conn: psycopg.Connection[Any],
                                             queries: Queries) -> None:
    """The sequence is looked up (pg_get_serial_sequence), not named by convention."""
    conn.execute("ALTER SEQUENCE pgqueuer_id_seq RENAME TO renamed_by_the_dba")
    [first, second] = queries.enqueue(["a", "b"], [None, None])
    assert second == first + 1



def test_enqueue_follows_a_table_renamed_into_place(conn: psycopg.Connection[Any]) -> None:
    """A table renamed to the queue's name keeps its old sequence name."""
    from pgqueue_sync.drivers import SyncPsycopgDriver

    settings = DBSettings(queue_table="pgqueuer")
    conn.execute("ALTER TABLE pgqueuer RENAME TO old_queue")
    conn.execute("ALTER TABLE old_queue RENAME TO pgqueuer")  # sequence keeps its name
    conn.execute("ALTER SEQUENCE pgqueuer_id_seq RENAME TO old_queue_id_seq")
    queries = Queries(SyncPsycopgDriver(conn), settings=settings)
    assert queries.enqueue("ep", None)[0] >= 1
