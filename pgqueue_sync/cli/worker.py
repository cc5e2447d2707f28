"""``pgq-sync run`` (the worker, its options) and ``pgq-sync demo``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import click

from .. import launcher
from .. import processes as process_group
from ..errors import ConfigurationError
from ..options import (
    KEEP_LOG,
    KEEP_RESULTS,
    KEEP_STATISTICS,
    MIN_RETENTION,
    POLL_INTERVAL,
    parse_duration,
)
from ..types import QueueExecutionMode
from .group import (
    LOG_LEVELS,
    Seconds,
    State,
    UsageProblem,
    cli,
    confirm_database,
    current_state,
    one_line,
)

F = TypeVar("F", bound=Callable[..., Any])
#: The environment variable ``run --listen-dsn`` defaults to (read by click, here only).
LISTEN_DSN_VARIABLE = "PGQUEUE_SYNC_LISTEN_DSN"
#: ``run`` options that start worker processes under a supervisor (pgqueue_sync.processes).
PROCESS_OPTIONS = ("processes", "max_jobs_per_child", "max_memory_per_child")
#: What ``--keep-*`` options take to turn retention off (kept apart from "not given").
RETENTION_OFF = "off"


class RetentionWindow(click.ParamType):  # type: ignore[type-arg]
    """A retention window (``7d``, ``12h``, ``90m``, seconds) or ``off``.

    Converted to a ``timedelta``, or :data:`RETENTION_OFF`; shorter than
    :data:`~pgqueue_sync.options.MIN_RETENTION` fails with one line.
    """

    name = "duration|off"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta | str:
        if isinstance(value, timedelta):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = repr(value)
        text = str(value).strip().lower()
        if text == RETENTION_OFF:
            return RETENTION_OFF
        try:
            window = parse_duration(text, option="")
        except ConfigurationError as exc:
            self.fail(f"{one_line(exc)}, or 'off'", param, ctx)
        if window < MIN_RETENTION:
            self.fail(f"must be at least {MIN_RETENTION.total_seconds():g}s (e.g. 7d), or "
                      f"'off', got {value!r}", param, ctx)
        return window


def _retention_option(name: str, what: str, default: timedelta | None) -> Callable[[F], F]:
    variable = f"PGQUEUE_SYNC_KEEP_{name.upper()}"
    shown = "off" if default is None else f"{default.days}d"
    return click.option(
        f"--keep-{name}", type=RetentionWindow(), envvar=variable, default=None,
        help=f"Delete {what} older than this (7d, 12h, ...; 'off' keeps them) "
        f"(env {variable}).  [default: {shown}]",
    )


@cli.command()
@click.argument("factory")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Handler threads (jobs in flight) per worker.  [default: 10]")
@click.option("--batch-size", type=click.IntRange(min=1), default=10, show_default=True,
              help="Jobs claimed per statement.")
@click.option("--dequeue-timeout", type=Seconds(positive=True), default=30.0,
              show_default=True,
              help="Seconds between polls when no notification arrives.")
@click.option("--heartbeat-timeout", type=Seconds(positive=True), default=30.0,
              show_default=True,
              help="A picked job with an older heartbeat is re-picked (same on every worker).")
@click.option("--max-concurrent-tasks", type=click.IntRange(min=1), default=None,
              help="Cap on jobs this worker holds picked at once.")
@click.option("--mode", type=click.Choice([m.value for m in QueueExecutionMode]),
              default="continuous", show_default=True,
              help="drain: exit once no eligible work remains.")
@click.option("--shutdown-timeout", type=Seconds(), default=None,
              help="Seconds running jobs get to finish at shutdown; the rest go back to the "
              "queue.  [default: wait]")
@click.option("--wait-for-database", type=Seconds(), default=None,
              help="Seconds to keep retrying an unreachable database at start before "
              "exiting.  [default: 60]")
@click.option("--queue-upkeep/--no-queue-upkeep", default=None,
              help="ANALYZE/VACUUM the queue table where autovacuum falls behind (owner "
              "only).  [default: on]")
@click.option("--shutdown-on-listener-failure", is_flag=True,
              help="Stop when the LISTEN connection fails its health check.")
@click.option("--listen-dsn", metavar="DSN", envvar=LISTEN_DSN_VARIABLE, default=None,
              help="Open the LISTEN connection here (straight to PostgreSQL) while the "
              "factory's connections go through a pooler such as PgBouncer in transaction "
              f"mode (env {LISTEN_DSN_VARIABLE}).")
@click.option("--poll-only", is_flag=True,
              help="No LISTEN at all: look for jobs every --poll-interval (for poolers "
              "without a direct connection).")
@click.option("--poll-interval", type=Seconds(positive=True), default=None,
              help="Seconds between polls with --poll-only, or while the listener hears "
              f"nothing.  [default: {POLL_INTERVAL.total_seconds():g}]")
@_retention_option("log", "log rows (once aggregated, of jobs no longer queued)", KEEP_LOG)
@_retention_option("statistics", "statistics rows", KEEP_STATISTICS)
@_retention_option("results", "stored results (of jobs no longer queued)", KEEP_RESULTS)
@click.option("--restart-on-failure", is_flag=True, help="Rebuild and restart a failed worker.")
@click.option("--restart-delay", type=Seconds(), default=5.0, show_default=True,
              help="Seconds before a restart.")
@click.option("--processes", type=click.IntRange(min=1), default=None,
              help="Run N worker processes under a supervisor that replaces any that dies.  "
              "[default: one worker, in this process]")
@click.option("--max-jobs-per-child", type=click.IntRange(min=1), default=None, metavar="N",
              help="Replace a worker process once it has run N jobs (implies --processes 1).")
@click.option("--max-memory-per-child", type=click.IntRange(min=1), default=None, metavar="MB",
              help="Replace a worker process once its resident memory passes MB megabytes "
              "(implies --processes 1).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics and /healthz on this port (needs the 'metrics' extra).")
@click.option("--log-level", "run_log_level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
              default=None, help="Logging level of the worker.  [default: INFO]")
def run(factory: str, args: Sequence[str], restart_on_failure: bool, restart_delay: float,
        run_log_level: str | None, **options: Any) -> None:
    """Run the worker that FACTORY (module:function) builds; ARGS after -- go to the factory.

    The factory returns a PgQueuer, QueueManager or SchedulerManager, or a
    context manager yielding one. --dsn/--prefix/--schema are exported as
    PGQUEUE_SYNC_DSN, PGQUEUER_PREFIX and PGQUEUER_SCHEMA for the factory to read.
    Behind PgBouncer in transaction mode, add --listen-dsn or --poll-only
    (docs/pgbouncer.md).
    """
    if run_log_level:
        logging.getLogger().setLevel(run_log_level.upper())
    if options.get("poll_only") and options.get("listen_dsn"):
        raise UsageProblem(
            "--listen-dsn and --poll-only exclude each other: --poll-only runs no listener; "
            f"drop one (is {LISTEN_DSN_VARIABLE} set?)"
        )
    _export_globals(current_state())
    options = {k: v for k, v in options.items() if v is not None}
    options = {k: None if v is RETENTION_OFF else v for k, v in options.items()}
    group = {k: options.pop(k) for k in PROCESS_OPTIONS if k in options}
    if group:  # children are always replaced: --restart-on-failure adds nothing
        process_group.run(factory, args, processes=group.pop("processes", 1),
                          restart_delay=restart_delay, **group, **options)
        return
    launcher.run(
        factory, args, restart_on_failure=restart_on_failure, restart_delay=restart_delay,
        **options,
    )


def _export_globals(state: State) -> None:
    if state.explicit_dsn:
        os.environ["PGQUEUE_SYNC_DSN"] = state.explicit_dsn
    if state.prefix is not None:
        os.environ["PGQUEUER_PREFIX"] = state.prefix
    if state.schema is not None:
        os.environ["PGQUEUER_SCHEMA"] = state.schema


@cli.command()
@click.option("-n", "--jobs", type=click.IntRange(min=1, max=10_000), default=20, show_default=True)
@click.option("--yes", is_flag=True, help="Use libpq's defaults when no database is configured.")
def demo(jobs: int, yes: bool) -> None:
    """Install the schema if needed, enqueue demo jobs and process them with the worker."""
    from .demo import run_demo

    state = current_state()
    confirm_database(state, yes, "demo")
    click.echo(f"database: {state.resolved.describe()}")
    report = run_demo(state.resolved.conninfo, jobs=jobs, settings=state.settings, echo=click.echo)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(report.outcomes.items()))
    click.echo(f"processed the {report.enqueued} demo jobs in {report.seconds:.2f}s: {summary}")
    if report.leftovers:
        click.echo(f"also drained {report.leftovers} leftover demo job(s) of an earlier run")

