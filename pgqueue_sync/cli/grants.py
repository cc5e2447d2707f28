"""``pgq-sync grants PART ROLE``: give a role the least privileges of a producer, worker or admin.

Registered on :data:`pgqueue_sync.cli.group.cli` when :mod:`pgqueue_sync.cli` is imported. The
statements come from :mod:`pgqueue_sync.sql.grants`; this module only asks the
database where the objects are (the schema of unqualified names, the real
names of the ``id`` sequences, whether the opt-in results table exists) and
runs them in one transaction. Run it as a superuser, or as the role owning the
objects and their schema. See ``docs/permissions.md``.
"""

from __future__ import annotations

from typing import Any, cast

import click
from psycopg import sql

from ..drivers.base import Driver
from ..settings import DBSettings
from ..sql.grants import (
    DEFAULT_SCHEMA,
    PARTS,
    SERIAL_TABLES,
    Part,
    Placement,
    grant_statements,
    privileges,
    schemas,
)
from .group import cli, current_state, fail

_ROLE_EXISTS = sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(role)s) AS found")
# The schema an unqualified name resolves to: the queue table's own, once it
# exists; before install (the admin's grants), where CREATE TABLE would put it.
_DEFAULT_SCHEMA = sql.SQL("""
SELECT COALESCE(
    (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = to_regclass(%(table)s)),
    current_schema()
) AS schema
""")
# The id sequence as PostgreSQL named it (it shortens long names, and an
# operator may rename it); no row when the table is missing.
_SEQUENCE = sql.SQL("""
SELECT n.nspname AS schema, c.relname AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(CASE WHEN to_regclass(%(table)s) IS NOT NULL
                               THEN pg_get_serial_sequence(%(table)s, 'id') END)
""")
_SCHEMA_EXISTS = sql.SQL(
    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %(schema)s) AS found"
)
_TABLE_EXISTS = sql.SQL("SELECT to_regclass(%(table)s) IS NOT NULL AS found")


@cli.command(short_help="Grant a role the privileges of a producer, worker or admin.")
@click.argument("part", type=click.Choice(PARTS))
@click.argument("role")
@click.option("--dry-run", is_flag=True, help="Print the SQL instead of running it.")
def grants(part: str, role: str, dry_run: bool) -> None:
    """Grant ROLE the least privileges PART needs on the queue's objects.

    producer: enqueue, job status, waiting for completion, stored results,
    cancel. worker: everything a running worker and scheduler need, plus the
    producer's part. admin: CREATE on the schema, for install and upgrade (the
    admin should own the objects: install them as that role). ROLE must exist
    and is case-sensitive. Run again after 'pgq-sync upgrade' created objects,
    and after 'pgq-sync results install'.
    """
    state = current_state()
    settings = state.settings
    driver = state.driver
    chosen = cast(Part, part)
    if not _fetch_flag(driver, _ROLE_EXISTS, {"role": role}):
        fail(f"role {role!r} does not exist (names are case-sensitive): create it first, "
              "e.g. CREATE ROLE name LOGIN")
    placement = _placement(driver, settings)
    with_results = chosen == "admin" or _fetch_flag(
        driver, _TABLE_EXISTS, {"table": settings.ident("results_table").as_string()}
    )
    if chosen == "admin":
        _require_schemas(driver, settings, placement)
    statements = grant_statements(
        chosen, settings, role, placement=placement, results=with_results
    )
    if dry_run:
        for statement in statements:
            click.echo(statement.as_string(driver.connection) + ";")
    else:
        with driver.transaction() as tx:
            for statement in statements:
                tx.execute(statement)
        click.echo(_summary(chosen, role, settings, placement, with_results))
    if not with_results:
        click.echo(f"note: the results table {settings.qualified_text('results_table')!r} is "
                   "not installed, so it was left out; run this again after "
                   "'pgq-sync results install'", err=True)


def _fetch_flag(driver: Driver, query: sql.SQL, params: dict[str, Any]) -> bool:
    return bool(driver.fetch(query, params)[0]["found"])


def _placement(driver: Driver, settings: DBSettings) -> Placement:
    """Where the objects are: the schema of unqualified names, the id sequences."""
    table = settings.ident("queue_table").as_string()
    default = driver.fetch(_DEFAULT_SCHEMA, {"table": table})[0]["schema"] or DEFAULT_SCHEMA
    sequences: dict[str, tuple[str, ...]] = {}
    for field in SERIAL_TABLES:
        rows = driver.fetch(_SEQUENCE, {"table": settings.ident(field).as_string()})
        if rows:
            sequences[field] = (rows[0]["schema"], rows[0]["name"])
    return Placement(default_schema=str(default), sequences=sequences)


def _require_schemas(driver: Driver, settings: DBSettings, placement: Placement) -> None:
    """The admin's grants are on schemas: each must exist already."""
    for name in schemas(privileges("admin"), settings, placement):
        if not _fetch_flag(driver, _SCHEMA_EXISTS, {"schema": name}):
            fail(f"schema {name!r} does not exist: create it owned by the admin role "
                  f"(CREATE SCHEMA {name} AUTHORIZATION role), then install with "
                  "--no-create-schema")


def _summary(
    part: Part, role: str, settings: DBSettings, placement: Placement, with_results: bool
) -> str:
    chosen = privileges(part, results=with_results)
    places = ", ".join(schemas(chosen, settings, placement))
    tables = sorted({settings.bare_name(p.target) for p in chosen if p.kind == "table"})
    objects = f"schema {places}" + (f" and {len(tables)} table(s)" if tables else "")
    return f"granted the {part} privileges to role {role!r} on {objects}"
