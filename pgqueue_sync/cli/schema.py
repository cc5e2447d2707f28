"""``pgq-sync`` schema commands: install, uninstall, upgrade, verify and durability."""

from __future__ import annotations

import sys

import click

from ..schema import durability_script, install_script, uninstall_script
from ..types import Durability
from .group import cli, confirm_database, current_state, fail


@cli.command()
@click.option(
    "-d",
    "--durability",
    type=click.Choice([d.value for d in Durability]),
    default=None,
    help="durable (default), balanced (log tables UNLOGGED) or volatile (all UNLOGGED).",
)
@click.option("--create-schema/--no-create-schema", default=True, help="CREATE SCHEMA if needed.")
@click.option("--dry-run", is_flag=True, help="Print the SQL instead of running it.")
@click.option("--results", "with_results", is_flag=True,
              help="Also create the opt-in results table (see 'pgq-sync results').")
@click.option("--yes", is_flag=True, help="Use libpq's defaults when no database is configured.")
def install(durability: str | None, create_schema: bool, dry_run: bool, with_results: bool,
            yes: bool) -> None:
    """Create the queue tables, enum, function and trigger (as `pgq install`)."""
    from ..results import install_script as results_script

    state = current_state()
    level = Durability(durability) if durability else None
    if dry_run:
        click.echo(install_script(state.settings, durability=level, create_schema=create_schema))
        if with_results:
            click.echo(results_script(state.settings))
        return
    confirm_database(state, yes, "install")
    state.schema_manager.install(durability=level, create_schema=create_schema)
    click.echo(f"installed the queue schema in {state.resolved.describe()}")
    if with_results:
        state.schema_manager.install_results()
        click.echo(f"installed the results table {state.settings.results_table!r}")


@cli.command()
@click.option("--dry-run", is_flag=True, help="Print the SQL instead of running it.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def uninstall(dry_run: bool, yes: bool) -> None:
    """Drop every queue object. Destroys all queued jobs and logs."""
    state = current_state()
    if dry_run:
        click.echo(uninstall_script(state.settings))
        return
    if not yes and sys.stdin.isatty():
        click.confirm(f"drop the queue schema in {state.resolved.describe()}?", abort=True)
    state.schema_manager.uninstall()
    click.echo("uninstalled the queue schema")


@cli.command()
@click.option("--plan", is_flag=True, help="Print the SQL the upgrade would run, change nothing.")
def upgrade(plan: bool) -> None:
    """Bring an older PgQueuer/pgq-sync schema to the 1.6.0 shape (idempotent)."""
    schema = current_state().schema_manager
    statements = schema.plan_upgrade() if plan else schema.upgrade()
    if not statements:
        click.echo("the queue schema is already up to date")
        return
    for statement in statements:
        click.echo(statement.rstrip().rstrip(";") + ";")
    if not plan:
        click.echo(f"-- applied {len(statements)} statement(s)", err=True)


@cli.command()
@click.option("--expect", type=click.Choice(["present", "absent"]), required=True)
def verify(expect: str) -> None:
    """Check that every queue object is present (or absent); exit 1 on a mismatch."""
    problems = current_state().schema_manager.verify(expect)  # type: ignore[arg-type]
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        fail(f"{len(problems)} problem(s): the schema is not {expect}")
    click.echo(f"the queue schema is {expect}")


@cli.command()
@click.argument("level", type=click.Choice([d.value for d in Durability]))
@click.option("--dry-run", is_flag=True, help="Print the SQL instead of running it.")
def durability(level: str, dry_run: bool) -> None:
    """Switch the tables between LOGGED and UNLOGGED (rewrites changed tables)."""
    state = current_state()
    if dry_run:
        click.echo(durability_script(state.settings, Durability(level)))
        return
    ran = state.schema_manager.set_durability(Durability(level))
    click.echo(f"durability is {level} ({len(ran)} table(s) changed)")
