"""``pgq-sync`` inspection commands: stale, workers, backlog and log.

What the queue holds and who works on it, read without changing anything;
the tables here are also the dashboard's sections. Times are shown in UTC and
ages relative to the database clock. Job payloads are never printed.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import click

from ..ops import Backlog, LiveWorker, LogEntry, StaleJob
from ..options import HEARTBEAT_TIMEOUT, parse_duration
from ..types import JOB_STATUS, JOB_STATUSES
from .display import age_text, ago_text, fit_table, plain, short_id, terminal_width, timestamp_text
from .formatting import to_json
from .group import cli, current_state, json_option

_F = TypeVar("_F", bound=Callable[..., Any])
#: The workers' default heartbeat timeout as the command line spells it (``30s``).
_HEARTBEAT_TIMEOUT_TEXT = f"{HEARTBEAT_TIMEOUT.total_seconds():g}s"


def _heartbeat_timeout_option(func: _F) -> _F:
    return click.option(
        "--heartbeat-timeout", default=_HEARTBEAT_TIMEOUT_TEXT, show_default=True,
        metavar="AGE",
        help="The workers' heartbeat_timeout: any worker re-claims a picked job whose "
             "heartbeat is older.")(func)


@cli.command(short_help="Picked jobs whose heartbeat is too old.")
@click.option("-t", "--threshold", default=None, metavar="AGE",
              help="A picked job whose heartbeat is older than this is stale: 90, 90s, 5m, 1h."
                   "  [default: the heartbeat timeout]")
@_heartbeat_timeout_option
@click.option("-n", "--limit", type=click.IntRange(min=1), default=25, show_default=True,
              help="Jobs to show at most.")
@json_option
def stale(threshold: str | None, heartbeat_timeout: str, limit: int, as_json: bool) -> None:
    """Picked jobs whose heartbeat is older than the threshold (their worker may be gone).

    Says how many of them any running worker re-claims now: those whose
    heartbeat is older than the heartbeat timeout (on stderr, after the table;
    "repickable" in --json).
    """
    timeout = parse_duration(heartbeat_timeout, option="--heartbeat-timeout")
    shown = heartbeat_timeout if threshold is None else threshold
    age = timeout if threshold is None else parse_duration(threshold, option="--threshold")
    jobs = current_state().ops.stale_jobs(age, limit, heartbeat_timeout=timeout)
    if as_json:
        click.echo(to_json([plain(j) for j in jobs]))
        return
    if not jobs:
        click.echo(f"no picked job has a heartbeat older than {shown}")
        return
    rows = [
        (j.id, j.entrypoint, j.priority, j.attempts, short_id(j.queue_manager_id),
         ago_text(j.seconds_since_heartbeat))
        for j in jobs
    ]
    headers = ("id", "entrypoint", "priority", "attempts", "worker", "heartbeat")
    click.echo(fit_table(headers, rows, flex=(1,)))
    click.echo(_repick_note(jobs, heartbeat_timeout), err=True)


def _repick_note(jobs: Sequence[StaleJob], timeout: str) -> str:
    due = sum(1 for j in jobs if j.repickable)
    note = (f"will be re-picked: {due} of {len(jobs)} listed job(s). A picked job whose "
            f"heartbeat is older than the heartbeat timeout ({timeout}) is claimed again, "
            "attempts kept, by the next running worker that handles its entrypoint")
    if due < len(jobs):
        note += (f"; the other {len(jobs) - due} will be once their heartbeat is {timeout} "
                 "old, unless their worker sends one first")
    elif due:
        note += "; a job that stays listed means no running worker handles its entrypoint"
    return textwrap.fill(note + ".", width=terminal_width())


@cli.command(short_help="Workers: connected ones (idle included) and those holding jobs.")
@_heartbeat_timeout_option
@json_option
def workers(heartbeat_timeout: str, as_json: bool) -> None:
    """Workers of this queue: pgqueue_sync workers connected now (from pg_stat_activity,
    idle ones included) and every worker holding picked jobs (PgQueuer's too), with
    the jobs they hold and their heartbeat ages.

    "seen" is connected (an open pgq-sync worker session), holding (no such
    session, but heartbeats younger than the heartbeat timeout: a PgQueuer
    worker) or stale (older: the worker is most likely gone).
    """
    timeout = parse_duration(heartbeat_timeout, option="--heartbeat-timeout")
    items = current_state().ops.live_workers(heartbeat_timeout=timeout)
    if as_json:
        click.echo(to_json([plain(w) for w in items]))
    elif not items:
        click.echo("no worker is connected and none holds picked jobs")
    else:
        click.echo(workers_table(items))


def workers_table(items: Sequence[LiveWorker]) -> str:
    """``workers``'s table, also the dashboard's "Workers" section ("" when empty)."""
    rows = []
    for w in items:
        first = w.sessions[0] if w.sessions else None
        pid = "-" if first is None else str(first.pid) + (
            f"+{len(w.sessions) - 1}" if len(w.sessions) > 1 else "")
        rows.append((
            short_id(w.queue_manager_id), w.active_jobs, ago_text(w.seconds_since_newest_heartbeat),
            w.seen, pid, (first.host if first else None) or "-",
            age_text(first.seconds_connected) if first else "-", ", ".join(w.entrypoints) or "-",
        ))
    headers = ("worker", "jobs", "heartbeat", "seen", "pid", "host", "up", "entrypoints")
    return fit_table(headers, rows, flex=(5, 7)) if rows else ""


@cli.command(short_help="Ready, deferred, picked and held jobs.")
@json_option
def backlog(as_json: bool) -> None:
    """Per entrypoint: jobs ready now, deferred, picked, held, and the oldest ready job's age."""
    items = current_state().ops.backlog()
    if as_json:
        click.echo(to_json([plain(b) for b in items]))
    elif not items:
        click.echo("the queue is empty")
    else:
        click.echo(backlog_table(items))


def backlog_table(items: Sequence[Backlog]) -> str:
    """``backlog``'s table, also the dashboard's "Queue" section ("" when empty)."""
    rows = [
        (b.entrypoint, b.ready, b.deferred, b.picked, b.held, age_text(b.oldest_age_seconds))
        for b in items
    ]
    headers = ("entrypoint", "ready", "deferred", "picked", "held", "oldest ready")
    return fit_table(headers, rows, flex=(0,)) if rows else ""


@cli.command("log", short_help="Recent log rows, newest first.")
@click.option("--entrypoint", default=None, help="Only this entrypoint.")
@click.option("--status", type=click.Choice(JOB_STATUSES), default=None, help="Only this status.")
@click.option("--job-id", type=int, default=None, help="Only this job.")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="Rows to show at most.")
@json_option
def log_command(
    entrypoint: str | None, status: str | None, job_id: int | None, limit: int, as_json: bool
) -> None:
    """Recent rows of the log table (every status transition), newest first."""
    entries = current_state().ops.recent_log(
        entrypoint=entrypoint, statuses=[cast(JOB_STATUS, status)] if status else None,
        job_id=job_id, limit=limit,
    )
    if as_json:
        click.echo(to_json([plain(e) for e in entries]))
    elif not entries:
        click.echo("no log rows match")
    else:
        click.echo(log_table(entries))


def log_table(entries: Sequence[LogEntry]) -> str:
    """``log``'s table, also the dashboard's "Recent failures" section ("" when empty)."""
    rows = [
        (timestamp_text(e.created), e.job_id, e.entrypoint, e.status, e.error or "")
        for e in entries
    ]
    return fit_table(("created (UTC)", "job", "entrypoint", "status", "error"), rows,
                     flex=(2, 4)) if rows else ""

