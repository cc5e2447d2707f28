"""``pgq-sync listen`` and ``pgq-sync dashboard``: the queue as it changes.

``listen`` prints each NOTIFY event; ``dashboard`` redraws a frame of queue,
throughput, wait/run times, workers and failures until Ctrl-C. Job payloads are
never printed.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import click
import psycopg
from psycopg import sql

from ..drivers.base import translate_errors
from ..drivers.psycopg import describe_conninfo
from ..models import AnyEvent, CancellationEvent, HealthCheckEvent, parse_event
from ..ops import (
    LATENCY_WINDOW,
    THROUGHPUT_WINDOWS,
    DashboardSnapshot,
    Latency,
    Throughput,
    Unserved,
)
from .display import (
    age_text,
    clip,
    duration_text,
    fit_table,
    json_value,
    plain,
    terminal_width,
    timestamp_text,
)
from .group import Seconds, cli, current_state, json_option
from .inspection import backlog_table, log_table, workers_table

#: ``listen``: longest single wait for a notification, so Ctrl-C and --count are prompt.
LISTEN_POLL_SECONDS = 1.0
#: ``dashboard``: seconds between frames unless ``--interval`` says otherwise.
DEFAULT_DASHBOARD_INTERVAL = 2.0
_CLEAR_SCREEN = "\x1b[2J"
_HOME = "\x1b[H"
_CLEAR_LINE_END = "\x1b[K"
_CLEAR_BELOW = "\x1b[J"


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
    state = current_state()
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
        data = plain(event)
    data["received_at"] = received
    return json.dumps(data, default=json_value, sort_keys=True)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


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
    state = current_state()
    ops = state.ops
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
                click.echo(json.dumps(plain(snapshot), default=json_value, sort_keys=True))
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
    stamp = f"{timestamp_text(snapshot.taken_at)} UTC"
    if every is not None:
        stamp += f", refreshed every {every:g}s (Ctrl-C quits)"
    minutes = f"{LATENCY_WINDOW.total_seconds() / 60:g} minutes"
    sections = [("Queue", backlog_table(snapshot.backlog))]
    if snapshot.unserved:  # only when there is something to say
        sections.append((f"Ready, but no job of theirs picked in the last {minutes} nor running",
                         _unserved_table(snapshot.unserved)))
    sections += [
        ("Throughput (log, last 1 and 5 minutes)", _throughput_table(snapshot.throughput)),
        (f"Queue wait and run time (log, last {minutes})",
         _latency_table(snapshot.latency)
         or f"(no job was picked or finished in the last {minutes})"),
        ("Workers (connected, or holding jobs)", workers_table(snapshot.workers)),
        ("Recent failures", log_table(snapshot.failures)),
    ]
    parts = [clip(title, terminal_width()), stamp]
    for heading, body in sections:
        parts += ["", heading, body or "(none)"]
    return "\n".join(parts)


def _unserved_table(items: Sequence[Unserved]) -> str:
    rows = [(u.entrypoint, u.ready, age_text(u.seconds_ready)) for u in items]
    return fit_table(("entrypoint", "ready", "ready for"), rows, flex=(0,)) if rows else ""


def _latency_table(items: Sequence[Latency]) -> str:
    rows = [
        (t.entrypoint, t.picked, duration_text(t.wait_p50), duration_text(t.wait_p95), t.finished,
         duration_text(t.run_p50), duration_text(t.run_p95))
        for t in items
    ]
    headers = ("entrypoint", "picked", "wait p50", "wait p95", "done", "run p50", "run p95")
    return fit_table(headers, rows, flex=(0,)) if rows else ""


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
    return fit_table(headers, rows, flex=(0,))


def _finished(by_name: Mapping[str, Throughput], name: str) -> int:
    item = by_name.get(name)
    return item.finished if item else 0

