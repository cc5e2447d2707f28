"""``pgq-sync results``: the opt-in results table (install, uninstall, show, prune).

Registered on :data:`pgqueue_sync.cli.group.cli` when :mod:`pgqueue_sync.cli` is imported. The
table is pgqueue_sync's own (``{prefix}pgqueue_sync_results``); see
:mod:`pgqueue_sync.results`. ``show`` prints stored return values because it
is asked to; nothing here logs them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import click

from ..options import parse_duration
from ..results import PRUNE_BATCH_SIZE, Results, install_script, uninstall_script
from .formatting import table, to_json
from .group import cli, current_state, json_option

#: ``show``: result and error columns are clipped to this many characters (``--json``: full).
SHOW_WIDTH = 60


def _results() -> Results:
    state = current_state()
    return Results(state.driver, state.settings)


def _name() -> str:
    return current_state().settings.qualified_text("results_table")


@cli.group()
def results() -> None:
    """Stored job return values: the opt-in results table.

    Workers write it only with store_results=True (or an entrypoint's
    store_result=True). PgQueuer's tables are not touched and `pgq` ignores it.
    """


@results.command("install")
@click.option("--dry-run", is_flag=True, help="Print the SQL instead of running it.")
def install_results(dry_run: bool) -> None:
    """Create the results table (idempotent; also on an existing install)."""
    state = current_state()
    if dry_run:
        click.echo(install_script(state.settings))
        return
    _results().install()
    click.echo(f"installed the results table {_name()!r} in {state.resolved.describe()}")


@results.command("uninstall")
@click.option("--dry-run", is_flag=True, help="Print the SQL instead of running it.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def uninstall_results(dry_run: bool, yes: bool) -> None:
    """Drop the results table and every stored result."""
    state = current_state()
    if dry_run:
        click.echo(uninstall_script(state.settings))
        return
    if not yes and sys.stdin.isatty():
        click.confirm(f"drop the results table {_name()!r}?", abort=True)
    _results().uninstall()
    click.echo(f"dropped the results table {_name()!r}")


@results.command("show")
@click.argument("ids", nargs=-1, type=int, required=True)
@json_option
def show(ids: Sequence[int], as_json: bool) -> None:
    """Print the stored results of job IDS (exit 1 if none is stored)."""
    found = _results().get_results(ids)
    if as_json:
        keys = ("job_id", "entrypoint", "status", "result", "error", "created", "finished",
                "attempts")
        click.echo(to_json([
            {k: getattr(r, k) for k in keys}
            | {"queue_manager_id": None if r.queue_manager_id is None else str(r.queue_manager_id)}
            for r in found.values()
        ]))
    elif found:
        rows = [
            (r.job_id, r.entrypoint, r.status, r.finished, _clip(json.dumps(r.result)),
             _clip(r.error or ""))
            for r in found.values()
        ]
        click.echo(table(("job", "entrypoint", "status", "finished", "result", "error"), rows))
    missing = sorted(set(ids) - set(found))
    if missing:
        click.echo(f"no stored result for: {', '.join(map(str, missing))}", err=True)
    if not found:
        sys.exit(1)


@results.command("prune")
@click.option("--older-than", required=True, metavar="AGE",
              help="Delete results finished longer ago than this: 12h, 7d, 30d.")
@click.option("--batch-size", type=click.IntRange(min=1), default=PRUNE_BATCH_SIZE,
              show_default=True, help="Rows per statement; each batch is its own transaction.")
def prune_results(older_than: str, batch_size: int) -> None:
    """Delete stored results older than --older-than, in batches."""
    age = parse_duration(older_than, option="--older-than")
    deleted = _results().prune_results(age, batch_size=batch_size)
    click.echo(f"deleted {deleted} result(s) finished more than {older_than} ago")


def _clip(text: str) -> str:
    return text if len(text) <= SHOW_WIDTH else text[: SHOW_WIDTH - 1] + "…"
