"""``pgq-sync autovac``: autovacuum parameters suited to a queue, and the figures that show bloat.

Registered on :data:`pgqueue_sync.cli.group.cli` when :mod:`pgqueue_sync.cli` is imported. The
statements and queries come from :mod:`pgqueue_sync.sql.autovac`, which also
says why each value was chosen; this module runs them in one transaction,
reads back ``pg_class.reloptions`` and ``pg_stat_user_tables``, and warns when
the server would not run autovacuum at all. See "Bloat and autovacuum" in
``docs/operating.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

from ..drivers.base import Driver
from ..errors import DatabaseError, PermissionDenied
from ..settings import DBSettings
from ..sql.autovac import (
    LOCK_TIMEOUT_MS,
    LOG_VACUUM_SCALE_FACTOR,
    LOG_VACUUM_THRESHOLD,
    QUEUE_ANALYZE_SCALE_FACTOR,
    QUEUE_VACUUM_COST_LIMIT,
    QUEUE_VACUUM_SCALE_FACTOR,
    QUEUE_VACUUM_THRESHOLD,
    SERVER_SETTINGS,
    TABLE_FIELDS,
    TABLE_FIGURES,
    TABLE_OWNERS,
    TUNINGS,
    lock_timeout_statement,
    reset_statements,
    script,
    set_statements,
    table_name,
    table_names,
    vacuum_statement,
)
from .display import ago_text, fit_table
from .formatting import to_json
from .group import cli, current_state, fail, json_option

#: SQLSTATE of a statement cancelled by ``lock_timeout``.
LOCK_NOT_AVAILABLE = "55P03"
#: Server setting values that mean "on" (as ``SHOW`` prints booleans, and synonyms).
_ON = frozenset({"on", "true", "yes", "1"})
#: The tables vacuumed every minute by the by-hand schedule; the others hourly.
_EVERY_MINUTE: tuple[str, ...] = ("queue_table",)


_HELP = f"""Set per-table autovacuum parameters suited to a job queue, in one transaction.

The queue table is vacuumed once {QUEUE_VACUUM_SCALE_FACTOR:.0%} of its rows (plus
{QUEUE_VACUUM_THRESHOLD:,}) are dead, with {QUEUE_VACUUM_COST_LIMIT:,} as its vacuum cost
limit, and re-analyzed at {QUEUE_ANALYZE_SCALE_FACTOR:.0%}; the log table at
{LOG_VACUUM_SCALE_FACTOR:.0%} dead or inserted rows (plus {LOG_VACUUM_THRESHOLD:,}). The
statistics and schedules tables keep the server's settings. Then prints each
table's live and dead rows, the dead rows at which autovacuum will vacuum it,
its last vacuums and its parameters, and warns when the server does not run
autovacuum.

Needs the tables' owner (or a superuser). Safe while workers run: the lock it
takes does not conflict with their reads and writes.
"""


@cli.command(short_help="Set autovacuum parameters suited to a queue; show dead rows.",
             help=_HELP)
@click.option("--dry-run", is_flag=True,
              help="Print the SQL instead of running it (needs no database).")
@click.option("--reset", "--rollback", "reset", is_flag=True,
              help="Remove the parameters this command sets, so the server's defaults apply "
              "again (--rollback is PgQueuer 2.x's name).")
@click.option("--show", is_flag=True,
              help="Only print the current parameters, dead rows and last vacuums; change "
              "nothing (needs no ownership).")
@json_option
def autovac(dry_run: bool, reset: bool, show: bool, as_json: bool) -> None:
    """``pgq-sync autovac``; its help is :data:`_HELP`."""
    _check_flags(dry_run=dry_run, reset=reset, show=show, as_json=as_json)
    state = current_state()
    settings = state.settings
    if dry_run:
        click.echo(script(settings, reset=reset), nl=False)
        return
    driver = state.driver
    if not show:
        changed = _apply(driver, settings, reset=reset)
        click.echo(_summary(settings, changed, reset=reset), err=as_json)
    server = driver.fetch(SERVER_SETTINGS)[0]
    figures = _figures(driver, settings)
    warning = autovacuum_warning(
        settings,
        autovacuum=str(server["autovacuum"]),
        track_counts=str(server["track_counts"]),
        disabled=[field for field, row in figures if row["found"]
                  and not row["autovacuum_enabled"]],
    )
    if as_json:
        click.echo(to_json({
            "server": {"autovacuum": server["autovacuum"],
                       "track_counts": server["track_counts"]},
            "tables": [_table_json(settings, field, row) for field, row in figures],
            "warning": warning,
        }))
    else:
        click.echo(_report(settings, figures))
    if warning:
        click.echo(warning, err=True)


def _check_flags(*, dry_run: bool, reset: bool, show: bool, as_json: bool) -> None:
    clashes = [("--show", "--dry-run", show and dry_run), ("--show", "--reset", show and reset),
               ("--json", "--dry-run", as_json and dry_run)]
    for first, second, clash in clashes:
        if clash:
            raise click.UsageError(f"{first} and {second} exclude each other",
                                   ctx=click.get_current_context())


def _apply(driver: Driver, settings: DBSettings, *, reset: bool) -> int:
    """Run the SET (or RESET) statements in one transaction; the parameters changed."""
    statements = reset_statements(settings) if reset else set_statements(settings)
    try:
        with driver.transaction() as tx:
            tx.execute(lock_timeout_statement(milliseconds=LOCK_TIMEOUT_MS))
            for statement in statements:
                tx.execute(statement)
    except PermissionDenied as exc:
        fail(_permission_problem(driver, settings, exc))
    except DatabaseError as exc:
        if exc.sqlstate != LOCK_NOT_AVAILABLE:
            raise
        fail(f"could not lock the queue tables within {LOCK_TIMEOUT_MS / 1000:g}s: another "
              "session is running VACUUM, ANALYZE, CREATE INDEX or ALTER TABLE on one of them; "
              "nothing was changed, run it again when that finishes")
    return sum(len(t.parameters) for t in TUNINGS)


def _summary(settings: DBSettings, changed: int, *, reset: bool) -> str:
    names = " and ".join(table_name(settings, t.field) for t in TUNINGS if t.parameters)
    if reset:
        return (f"reset {changed} autovacuum parameters on {names}: the server's defaults "
                "apply again")
    return f"set {changed} autovacuum parameters on {names}"


def _permission_problem(driver: Driver, settings: DBSettings, exc: PermissionDenied) -> str:
    """One line naming the fix: only the tables' owner may change storage parameters.

    The driver's own hint (``pgq-sync grants``) does not apply: no grant gives
    the right to ALTER a table.
    """
    cause = exc.__cause__
    text = str(cause if cause is not None else exc).strip()
    server_message = text.splitlines()[0] if text else "permission denied"
    names = table_names(settings, fields=[t.field for t in TUNINGS])
    try:
        owners = [str(row["owner"]) for row in driver.fetch(TABLE_OWNERS, {"names": names})]
    except DatabaseError:
        owners = []
    who = f" ({', '.join(f'role {owner!r}' for owner in owners)})" if owners else ""
    return (f"{server_message}: only the tables' owner{who} or a superuser may change their "
            "storage parameters; run 'pgq-sync autovac' connected as that role, or have it run "
            "the SQL of 'pgq-sync autovac --dry-run'")


def _figures(driver: Driver, settings: DBSettings) -> list[tuple[str, dict[str, Any]]]:
    rows = driver.fetch(TABLE_FIGURES, {"names": table_names(settings)})
    figures = list(zip(TABLE_FIELDS, rows, strict=True))
    if not figures[0][1]["found"]:
        fail(f'relation "{table_name(settings, "queue_table")}" does not exist; is the queue '
              "schema installed? run 'pgq-sync install' (and check PGQUEUER_PREFIX / "
              "PGQUEUER_SCHEMA)")
    return figures


def autovacuum_warning(
    settings: DBSettings,
    *,
    autovacuum: str,
    track_counts: str,
    disabled: Sequence[str] = (),
) -> str | None:
    """The warning for a server (or tables) where autovacuum will not run, or ``None``.

    ``autovacuum`` and ``track_counts`` are the server's settings as ``SHOW``
    prints them; ``disabled`` lists the table fields whose own
    ``autovacuum_enabled`` is false. The text says what to do: turn the
    setting on, or vacuum the tables on a schedule (the exact commands).
    """
    off = [name for name, value in (("autovacuum", autovacuum), ("track_counts", track_counts))
           if value.strip().lower() not in _ON]
    lines: list[str] = []
    if off:
        why = " and ".join(f"{name} is off" for name in off)
        needs = "" if "track_counts" not in off else (
            " (autovacuum needs track_counts to count dead rows)"
        )
        hourly = [field for field in TABLE_FIELDS if field not in _EVERY_MINUTE]
        lines += [
            f"warning: {why} on this server{needs}: per-table autovacuum parameters do nothing "
            "until autovacuum runs, and dead rows pile up in the queue tables",
            "  turn it on (as a superuser): "
            + " ".join(f"ALTER SYSTEM SET {name} = on;" for name in off)
            + " SELECT pg_reload_conf();",
            "  or vacuum the tables on a schedule as their owner, e.g. from cron:",
            f"    * * * * *   psql \"$DATABASE_URL\" -c "
            f"'{vacuum_statement(settings, _EVERY_MINUTE).as_string()}'",
            f"    17 * * * *  psql \"$DATABASE_URL\" -c "
            f"'{vacuum_statement(settings, hourly).as_string()}'",
        ]
    for field in disabled:
        lines.append(
            f"warning: autovacuum is disabled on table {table_name(settings, field)} "
            "(autovacuum_enabled=false in its storage parameters); to enable it: ALTER TABLE "
            f"{settings.ident(field).as_string()} RESET (autovacuum_enabled)"
        )
    return "\n".join(lines) or None


def _report(settings: DBSettings, figures: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    headers = ("table", "live", "dead", "vacuum at", "autovacuumed", "vacuumed", "indexes")
    rows = [
        (table_name(settings, field), row["live"], row["dead"], row["vacuum_at"],
         _when(row["seconds_since_autovacuum"]), _when(row["seconds_since_vacuum"]),
         _size(row["index_bytes"]))
        if row["found"] else (table_name(settings, field), None, None, None, "missing", None, None)
        for field, row in figures
    ]
    parameters = [
        (table_name(settings, field), *option.split("=", 1))
        for field, row in figures
        for option in row["reloptions"] or ()
    ]
    plain = [table_name(settings, field) for field, row in figures
             if row["found"] and not row["reloptions"]]
    out = ["Dead rows (autovacuum vacuums a table once its dead rows pass 'vacuum at')",
           fit_table(headers, rows, flex=(0,)), "", "Storage parameters (pg_class.reloptions)"]
    if parameters:
        out.append(fit_table(("table", "parameter", "value"), parameters, flex=(0, 2)))
    if plain:
        names = ", ".join(plain[:-1]) + (" and " if len(plain) > 1 else "") + plain[-1]
        out.append(f"{names}: none (the server's settings apply)")
    return "\n".join(out)


def _table_json(settings: DBSettings, field: str, row: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("found", "live", "dead", "vacuum_at", "modified_since_analyze",
            "inserted_since_vacuum", "last_autovacuum", "seconds_since_autovacuum",
            "last_vacuum", "seconds_since_vacuum", "last_autoanalyze", "last_analyze",
            "autovacuum_count", "vacuum_count", "table_bytes", "index_bytes",
            "autovacuum_enabled")
    options = dict(option.split("=", 1) for option in row["reloptions"] or ())
    return {"table": table_name(settings, field), **{k: row[k] for k in keys},
            "parameters": options}


def _when(seconds: float | None) -> str:
    return "never" if seconds is None else ago_text(seconds)


def _size(size: int | None) -> str:
    """Bytes as ``pg_size_pretty`` shows them: ``8192 bytes``, ``64 kB``, ``12 MB``."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("bytes", "kB", "MB", "GB"):
        if value < 10 * 1024:
            return f"{value:.0f} {unit}"
        value /= 1024
    return f"{value:.0f} TB"
