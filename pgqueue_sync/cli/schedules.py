"""``pgq-sync schedules``: list the cron schedules, or remove some."""

from __future__ import annotations

from collections.abc import Sequence

import click

from ..ops import OpsQueries
from .display import fit_table, plain, relative_text
from .formatting import to_json
from .group import cli, current_state, json_option


@cli.command(short_help="List (or --remove) the cron schedules.")
@click.option("-r", "--remove", "remove", multiple=True, metavar="ID_OR_ENTRYPOINT",
              help="Delete schedules with this id or entrypoint name (repeatable).")
@json_option
def schedules(remove: Sequence[str], as_json: bool) -> None:
    """List the cron schedules (the schedules table); --remove deletes some first."""
    state = current_state()
    ops = state.ops
    if remove:
        _remove_schedules(ops, remove, to_stderr=as_json)
    items = state.queries.peek_schedule()
    if as_json:
        click.echo(to_json([plain(s) for s in items]))
        return
    if not items:
        click.echo("no schedules")
        return
    now = ops.server_now()
    rows = [
        (s.id, s.entrypoint, s.expression, s.status, relative_text(s.next_run, now),
         relative_text(s.last_run, now), relative_text(s.heartbeat, now))
        for s in items
    ]
    headers = ("id", "entrypoint", "expression", "status", "next run", "last run", "heartbeat")
    click.echo(fit_table(headers, rows, flex=(1, 2)))


def _remove_schedules(ops: OpsQueries, targets: Sequence[str], *, to_stderr: bool) -> None:
    ids = {int(t) for t in targets if t.isdigit()}
    names = {t for t in targets if not t.isdigit()}
    removed = ops.delete_schedules(ids, names)
    described = ", ".join(f"{s.id} ({s.entrypoint} '{s.expression}')" for s in removed)
    click.echo(f"removed {len(removed)} schedule(s)" + (f": {described}" if removed else ""),
               err=to_stderr)
    unmatched = sorted(ids - {s.id for s in removed})
    unmatched_names = sorted(names - {s.entrypoint for s in removed})
    if unmatched or unmatched_names:
        missing = ", ".join([str(i) for i in unmatched] + unmatched_names)
        click.echo(f"no schedule matched: {missing}", err=True)

