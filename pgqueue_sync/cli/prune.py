"""``pgq-sync prune``: delete old log and statistics rows in small batches."""

from __future__ import annotations

import sys

import click

from ..ops import DEFAULT_PRUNE_BATCH_SIZE, OpsQueries, PrunableTable, PrunePlan
from ..options import parse_duration
from .display import timestamp_text
from .group import UsageProblem, cli, current_state


@cli.command(short_help="Delete old log and statistics rows.")
@click.option("--older-than", required=True, metavar="AGE",
              help="Delete rows created longer ago than this: 12h, 7d, 30d.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_PRUNE_BATCH_SIZE,
              show_default=True, help="Rows per statement; each batch is its own transaction.")
@click.option("--log/--no-log", "prune_log", default=True, show_default=True,
              help="Prune the log table.")
@click.option("--statistics/--no-statistics", "prune_statistics", default=True,
              show_default=True, help="Prune the statistics table.")
@click.option("--dry-run", is_flag=True, help="Count the rows that would go; delete nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (asked only on a "
              "terminal).")
def prune(older_than: str, batch_size: int, prune_log: bool, prune_statistics: bool,
          dry_run: bool, yes: bool) -> None:
    """Delete log and statistics rows older than --older-than, in small batches.

    Never touches the queue table: queued, running and held jobs stay. Each
    batch commits on its own and skips rows other sessions have locked, so a
    prune never holds long locks or blocks workers. Progress goes to stderr.
    """
    if not (prune_log or prune_statistics):
        raise UsageProblem("nothing to prune: --no-log and --no-statistics together")
    age = parse_duration(older_than, option="--older-than")
    ops = current_state().ops
    cutoff = ops.cutoff(age)
    wanted: list[tuple[PrunableTable, bool]] = [("log", prune_log), ("stats", prune_statistics)]
    plans = [ops.prune_plan(table, cutoff) for table, chosen in wanted if chosen]
    summary = " and ".join(f"{p.count} {_table_label(p.table)} row(s)" for p in plans)
    click.echo(f"cutoff: created before {timestamp_text(cutoff)} UTC (older than {older_than})")
    if dry_run:
        click.echo(f"would delete {summary}")
        return
    if not yes and sys.stdin.isatty() and any(p.count for p in plans):
        click.confirm(f"delete {summary}?", abort=True)
    for plan in plans:
        _prune_one(ops, plan, batch_size)


def _prune_one(ops: OpsQueries, plan: PrunePlan, batch_size: int) -> None:
    name = ops.settings.qualified_text(
        "queue_table_log" if plan.table == "log" else "statistics_table")
    if not plan.count:
        click.echo(f"{name}: nothing to delete")
        return
    with click.progressbar(length=plan.count, label=f"pruning {name}", file=sys.stderr,
                           show_pos=True) as bar:
        result = ops.prune(plan, batch_size=batch_size, on_batch=bar.update)
    click.echo(f"{name}: deleted {result.deleted} row(s) in {result.batches} batch(es)")
    if result.left:
        click.echo(f"{name}: {result.left} old row(s) were locked by another session or "
                   "already gone; run prune again later", err=True)


def _table_label(table: PrunableTable) -> str:
    return "log" if table == "log" else "statistics"

