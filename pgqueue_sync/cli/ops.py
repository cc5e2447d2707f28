"""Operator commands of ``pgq-sync``: listen, dashboard, schedules, stale, workers, backlog,
log and prune.

Registered on :data:`pgqueue_sync.cli.group.cli` when :mod:`pgqueue_sync.cli` is imported. Tables
fit the terminal (80 columns when the output is not a terminal and ``COLUMNS``
is unset) by clipping free-text columns, show times in UTC and ages relative to
the database clock; ``--json`` gives every value in full. Job payloads are
never printed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar, cast

import click
import psycopg
from psycopg import sql

from ..drivers.base import translate_errors
from ..drivers.psycopg import describe_conninfo
from ..models import AnyEvent, CancellationEvent, HealthCheckEvent, parse_event
from ..ops import (
    DEFAULT_PRUNE_BATCH_SIZE,
    LATENCY_WINDOW,
    THROUGHPUT_WINDOWS,
    Backlog,
    DashboardSnapshot,
    Latency,
    LiveWorker,
    LogEntry,
    OpsQueries,
    PrunableTable,
    PrunePlan,
    StaleJob,
    Throughput,
    Unserved,
)
from ..options import HEARTBEAT_TIMEOUT
from ..types import JOB_STATUS, JOB_STATUSES
from .formatting import parse_duration, table, to_json
from .group import Seconds, UsageProblem, _state, cli, json_option

#: Table width when the output is not a terminal and ``COLUMNS`` is unset.
DEFAULT_WIDTH = 80
#: A clipped column keeps at least this many characters (or its header's width).
MIN_CLIPPED_WIDTH = 8
#: ``listen``: longest single wait for a notification, so Ctrl-C and --count are prompt.
LISTEN_POLL_SECONDS = 1.0
#: ``dashboard``: seconds between frames unless ``--interval`` says otherwise.
DEFAULT_DASHBOARD_INTERVAL = 2.0
_ELLIPSIS = "…"
_CLEAR_SCREEN = "\x1b[2J"
_HOME = "\x1b[H"
_CLEAR_LINE_END = "\x1b[K"
_CLEAR_BELOW = "\x1b[J"
_F = TypeVar("_F", bound=Callable[..., Any])
#: The workers' default heartbeat timeout as the command line spells it (``30s``).
_HEARTBEAT_TIMEOUT_TEXT = f"{HEARTBEAT_TIMEOUT.total_seconds():g}s"


def _ops() -> OpsQueries:
    state = _state()
    return OpsQueries(state.driver, state.settings)


# -- listen ---------------------------------------------------------------------------------


@cli.command(short_help="Print queue events (NOTIFY) as they arrive.")
@click.option("--channel", default=None, help="Channel to LISTEN on.  [default: the queue's, "
              "ch_pgqueuer with the prefix applied]")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Exit after this many events.  [default: run until Ctrl-C]")
@json_option
def listen(channel: str | None, count: int | None, as_json: bool) -> None:
    """Print the queue's NOTIFY events as they arrive (one line each) until Ctrl-C.

    table_changed, cancellation and health_check events are parsed; any other
    payload is printed raw. --json prints one JSON object per line.
    """
    state = _state()
    settings = state.settings.with_overrides(channel=channel) if channel else state.settings
    conn = state.driver.connection
    try:
        with translate_errors():
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(settings.channel)))
        click.echo(f"listening on channel {settings.channel!r} (Ctrl-C to stop)", err=True)
        for received, notify in _notifications(conn, count):
            event = parse_event(notify.payload)
            click.echo(_event_json(event, notify, received) if as_json
                       else _event_line(event, notify, received))
    except KeyboardInterrupt:
        pass


def _notifications(
    conn: psycopg.Connection[Any], count: int | None
) -> Iterator[tuple[datetime, psycopg.Notify]]:
    # Short timeouts keep Ctrl-C prompt; events are yielded as they arrive.
    remaining = count
    while remaining is None or remaining > 0:
        with translate_errors():
            for notify in conn.notifies(timeout=LISTEN_POLL_SECONDS, stop_after=remaining):
                yield datetime.now(timezone.utc), notify
                if remaining is not None:
                    remaining -= 1
                    if not remaining:  # one packet may carry more than stop_after
                        return


def _event_line(event: AnyEvent | None, notify: psycopg.Notify, received: datetime) -> str:
    stamp = received.astimezone().strftime("%H:%M:%S.%f")[:-3]
    if event is None:
        return f"{stamp}  {'unknown':<13}  {_one_line(notify.payload)}"
    if isinstance(event, CancellationEvent):
        details = "ids " + ", ".join(str(i) for i in event.ids)
    elif isinstance(event, HealthCheckEvent):
        details = f"id {event.id}"
    else:
        details = f"{event.operation} on {event.table}"
    kind = event.type.removesuffix("_event")
    return f"{stamp}  {kind:<13}  {details}"


def _event_json(event: AnyEvent | None, notify: psycopg.Notify, received: datetime) -> str:
    if event is None:
        data: dict[str, Any] = {"type": "unknown", "channel": notify.channel,
                                "payload": notify.payload}
    else:
        data = _plain(event)
    data["received_at"] = received
    return json.dumps(data, default=_json_value, sort_keys=True)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


# -- dashboard ------------------------------------------------------------------------------


@cli.command(short_help="Live view: queue, throughput, wait/run times, workers, failures.")
@click.option("-i", "--interval", type=Seconds(minimum=0.1), default=None,
              help=f"Seconds between refreshes.  [default: {DEFAULT_DASHBOARD_INTERVAL:g}]")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=10, show_default=True,
              help="Rows per section.")
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@json_option
def dashboard(interval: float | None, limit: int, once: bool, as_json: bool) -> None:
    """A live view: queue per entrypoint (flagging work no worker takes), throughput,
    queue wait and run time p50/p95, workers and recent failures.

    Refreshed in place until Ctrl-C. --json prints one snapshot per line.
    """
    state = _state()
    ops = OpsQueries(state.driver, state.settings)
    source = describe_conninfo(state.resolved.conninfo)
    every = DEFAULT_DASHBOARD_INTERVAL if interval is None else interval
    live = not once and not as_json and sys.stdout.isatty()
    if live:
        click.echo(_CLEAR_SCREEN, nl=False)
    try:
        first = True
        while True:
            snapshot = ops.dashboard(limit)
            if as_json:
                click.echo(json.dumps(_plain(snapshot), default=_json_value, sort_keys=True))
            else:
                text = _dashboard_frame(snapshot, source, None if once else every)
                _show_frame(text, live=live, first=first)
            if once:
                return
            first = False
            time.sleep(every)
    except KeyboardInterrupt:
        pass


def _show_frame(text: str, *, live: bool, first: bool) -> None:
    if live:
        # Overwrite in place line by line (no full clear), so a refresh does not flicker.
        body = "".join(f"{line}{_CLEAR_LINE_END}\n" for line in text.splitlines())
        click.echo(_HOME + body + _CLEAR_BELOW, nl=False)
    else:
        click.echo(text if first else "\n" + text)


def _dashboard_frame(snapshot: DashboardSnapshot, source: str, every: float | None) -> str:
    title = f"pgq-sync dashboard  {source}"
    stamp = f"{_timestamp(snapshot.taken_at)} UTC"
    if every is not None:
        stamp += f", refreshed every {every:g}s (Ctrl-C quits)"
    minutes = f"{LATENCY_WINDOW.total_seconds() / 60:g} minutes"
    sections = [("Queue", _backlog_table(snapshot.backlog))]
    if snapshot.unserved:  # only when there is something to say
        sections.append((f"Ready, but no job of theirs picked in the last {minutes} nor running",
                         _unserved_table(snapshot.unserved)))
    sections += [
        ("Throughput (log, last 1 and 5 minutes)", _throughput_table(snapshot.throughput)),
        (f"Queue wait and run time (log, last {minutes})",
         _latency_table(snapshot.latency)
         or f"(no job was picked or finished in the last {minutes})"),
        ("Workers (connected, or holding jobs)", _workers_table(snapshot.workers)),
        ("Recent failures", _log_table(snapshot.failures)),
    ]
    parts = [_clip(title, _width()), stamp]
    for heading, body in sections:
        parts += ["", heading, body or "(none)"]
    return "\n".join(parts)


def _unserved_table(items: Sequence[Unserved]) -> str:
    rows = [(u.entrypoint, u.ready, _age(u.seconds_ready)) for u in items]
    return _fit_table(("entrypoint", "ready", "ready for"), rows, flex=(0,)) if rows else ""


def _latency_table(items: Sequence[Latency]) -> str:
    rows = [
        (t.entrypoint, t.picked, _duration(t.wait_p50), _duration(t.wait_p95), t.finished,
         _duration(t.run_p50), _duration(t.run_p95))
        for t in items
    ]
    headers = ("entrypoint", "picked", "wait p50", "wait p95", "done", "run p50", "run p95")
    return _fit_table(headers, rows, flex=(0,)) if rows else ""


def _throughput_table(by_window: dict[int, list[Throughput]]) -> str:
    short, long = (int(w.total_seconds()) for w in THROUGHPUT_WINDOWS)
    recent: dict[str, Throughput] = {t.entrypoint: t for t in by_window.get(short, [])}
    wider: dict[str, Throughput] = {t.entrypoint: t for t in by_window.get(long, [])}
    if not wider and not recent:
        return ""
    rows = []
    for name in sorted(set(recent) | set(wider), key=lambda n: (-_finished(wider, n), n)):
        one, five = recent.get(name), wider.get(name)
        rows.append((
            name,
            one.enqueued if one else 0,
            one.successful if one else 0,
            one.errors if one else 0,
            five.successful if five else 0,
            five.errors if five else 0,
            round(one.per_second, 1) if one else 0.0,
        ))
    headers = ("entrypoint", "enqueued/1m", "ok/1m", "errors/1m", "ok/5m", "errors/5m", "jobs/s")
    return _fit_table(headers, rows, flex=(0,))


def _finished(by_name: Mapping[str, Throughput], name: str) -> int:
    item = by_name.get(name)
    return item.finished if item else 0


# -- schedules ------------------------------------------------------------------------------


@cli.command(short_help="List (or --remove) the cron schedules.")
@click.option("-r", "--remove", "remove", multiple=True, metavar="ID_OR_ENTRYPOINT",
              help="Delete schedules with this id or entrypoint name (repeatable).")
@json_option
def schedules(remove: Sequence[str], as_json: bool) -> None:
    """List the cron schedules (the schedules table); --remove deletes some first."""
    state = _state()
    ops = OpsQueries(state.driver, state.settings)
    if remove:
        _remove_schedules(ops, remove, to_stderr=as_json)
    items = state.queries.peek_schedule()
    if as_json:
        click.echo(to_json([_plain(s) for s in items]))
        return
    if not items:
        click.echo("no schedules")
        return
    now = ops.server_now()
    rows = [
        (s.id, s.entrypoint, s.expression, s.status, _relative(s.next_run, now),
         _relative(s.last_run, now), _relative(s.heartbeat, now))
        for s in items
    ]
    headers = ("id", "entrypoint", "expression", "status", "next run", "last run", "heartbeat")
    _echo_table(headers, rows, flex=(1, 2))


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


# -- stale, workers, backlog ------------------------------------------------------------------


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
    jobs = _ops().stale_jobs(age, limit, heartbeat_timeout=timeout)
    if as_json:
        click.echo(to_json([_plain(j) for j in jobs]))
        return
    if not jobs:
        click.echo(f"no picked job has a heartbeat older than {shown}")
        return
    rows = [
        (j.id, j.entrypoint, j.priority, j.attempts, _short_id(j.queue_manager_id),
         _ago(j.seconds_since_heartbeat))
        for j in jobs
    ]
    _echo_table(("id", "entrypoint", "priority", "attempts", "worker", "heartbeat"), rows,
                flex=(1,))
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
    return textwrap.fill(note + ".", width=_width())


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
    items = _ops().live_workers(heartbeat_timeout=timeout)
    if as_json:
        click.echo(to_json([_plain(w) for w in items]))
    elif not items:
        click.echo("no worker is connected and none holds picked jobs")
    else:
        click.echo(_workers_table(items))


def _workers_table(items: Sequence[LiveWorker]) -> str:
    rows = []
    for w in items:
        first = w.sessions[0] if w.sessions else None
        pid = "-" if first is None else str(first.pid) + (
            f"+{len(w.sessions) - 1}" if len(w.sessions) > 1 else "")
        rows.append((
            _short_id(w.queue_manager_id), w.active_jobs, _ago(w.seconds_since_newest_heartbeat),
            w.seen, pid, (first.host if first else None) or "-",
            _age(first.seconds_connected) if first else "-", ", ".join(w.entrypoints) or "-",
        ))
    headers = ("worker", "jobs", "heartbeat", "seen", "pid", "host", "up", "entrypoints")
    return _fit_table(headers, rows, flex=(5, 7)) if rows else ""


@cli.command(short_help="Ready, deferred, picked and held jobs.")
@json_option
def backlog(as_json: bool) -> None:
    """Per entrypoint: jobs ready now, deferred, picked, held, and the oldest ready job's age."""
    items = _ops().backlog()
    if as_json:
        click.echo(to_json([_plain(b) for b in items]))
    elif not items:
        click.echo("the queue is empty")
    else:
        click.echo(_backlog_table(items))


def _backlog_table(items: Sequence[Backlog]) -> str:
    rows = [
        (b.entrypoint, b.ready, b.deferred, b.picked, b.held, _age(b.oldest_age_seconds))
        for b in items
    ]
    headers = ("entrypoint", "ready", "deferred", "picked", "held", "oldest ready")
    return _fit_table(headers, rows, flex=(0,)) if rows else ""


# -- log ------------------------------------------------------------------------------------


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
    entries = _ops().recent_log(
        entrypoint=entrypoint, statuses=[cast(JOB_STATUS, status)] if status else None,
        job_id=job_id, limit=limit,
    )
    if as_json:
        click.echo(to_json([_plain(e) for e in entries]))
    elif not entries:
        click.echo("no log rows match")
    else:
        click.echo(_log_table(entries))


def _log_table(entries: Sequence[LogEntry]) -> str:
    rows = [
        (_timestamp(e.created), e.job_id, e.entrypoint, e.status, e.error or "")
        for e in entries
    ]
    return _fit_table(("created (UTC)", "job", "entrypoint", "status", "error"), rows,
                      flex=(2, 4)) if rows else ""


# -- prune ----------------------------------------------------------------------------------


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
    state = _state()
    ops = OpsQueries(state.driver, state.settings)
    cutoff = ops.cutoff(age)
    wanted: list[tuple[PrunableTable, bool]] = [("log", prune_log), ("stats", prune_statistics)]
    plans = [ops.prune_plan(table, cutoff) for table, chosen in wanted if chosen]
    summary = " and ".join(f"{p.count} {_table_label(p.table)} row(s)" for p in plans)
    click.echo(f"cutoff: created before {_timestamp(cutoff)} UTC (older than {older_than})")
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


# -- formatting -------------------------------------------------------------------------------


def _echo_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                flex: Sequence[int]) -> None:
    click.echo(_fit_table(headers, rows, flex=flex))


def _fit_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
               flex: Sequence[int]) -> str:
    """``table()``, with the ``flex`` columns clipped until the table fits the width."""
    width = _width()
    texts = [[_text(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in texts)]) for i, h in enumerate(headers)]
    floors = {i: max(len(headers[i]), MIN_CLIPPED_WIDTH) for i in flex}
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    while excess > 0:
        widest = max(flex, key=lambda i: widths[i] - floors[i])
        if widths[widest] <= floors[widest]:
            break
        widths[widest] -= 1
        excess -= 1
    clipped = [
        [_clip(texts[r][i], widths[i]) if i in flex else value for i, value in enumerate(row)]
        for r, row in enumerate(rows)
    ]
    return table(headers, clipped)


def _width() -> int:
    if sys.stdout.isatty():
        return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
    try:
        return max(int(os.environ.get("COLUMNS", "")), 40)
    except ValueError:
        return DEFAULT_WIDTH


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + _ELLIPSIS


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return _timestamp(value)
    return str(value)


def _timestamp(value: datetime) -> str:
    """UTC, whatever the session's TimeZone, so every command and host agrees."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _short_id(value: uuid.UUID | None) -> str:
    """The first eight hex digits of a queue_manager_id: enough to tell workers apart."""
    return "-" if value is None else str(value)[:8]


def _age(seconds: float | None) -> str:
    """``42s``, ``3m07s``, ``2h05m`` or ``4d03h``."""
    if seconds is None:
        return "-"
    whole = max(int(seconds), 0)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _duration(seconds: float | None) -> str:
    """A measured duration: ``85ms``, ``4.2s``, ``3m07s``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return _age(seconds)


def _ago(seconds: float | None) -> str:
    return "-" if seconds is None else f"{_age(seconds)} ago"


def _relative(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    delta = (moment - now).total_seconds()
    return f"in {_age(delta)}" if delta >= 1 else _ago(-delta)


def _plain(value: Any) -> dict[str, Any]:
    """A dataclass as a JSON-ready dict (UUIDs as strings); datetimes stay for to_json()."""
    data: dict[str, Any] = dataclasses.asdict(value)
    return {key: _uuid_free(item) for key, item in data.items()}


def _uuid_free(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _uuid_free(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_uuid_free(v) for v in value]
    return value


def _json_value(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")

