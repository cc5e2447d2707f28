"""``pgq-sync`` job commands: enqueue, queue-size, failed, requeue, cancel and purge."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, cast

import click

from ..errors import DuplicateJobError
from ..options import parse_duration
from ..queries import BULK_BATCH_SIZE, BulkPlan, BulkResult, ErrorRecord
from .display import fit_table
from .formatting import parse_headers, table, to_json
from .group import UsageProblem, cli, current_state, fail, json_option

#: ``requeue``/``cancel`` with --all/--entrypoint list the ids up to this many jobs;
#: beyond it they print a count per entrypoint.
LISTED_IDS = 20


@cli.command("queue-size")
@json_option
def queue_size(as_json: bool) -> None:
    """Jobs in the queue table by entrypoint, priority and status."""
    stats = current_state().queries.queue_size()
    rows = sorted((s.entrypoint, s.priority, s.status, s.count) for s in stats)
    if as_json:
        keys = ("entrypoint", "priority", "status", "count")
        click.echo(to_json([dict(zip(keys, row, strict=True)) for row in rows]))
    elif not rows:
        click.echo("the queue is empty")
    else:
        click.echo(table(("entrypoint", "priority", "status", "count"), rows))


@cli.command()
@click.argument("entrypoint")
@click.argument("payload", required=False)
@click.option("-p", "--priority", type=int, default=0, show_default=True)
@click.option("--delay", default=None, help="Run no sooner than this: 30, 30s, 5m, 2h, 1d.")
@click.option("--dedupe-key", default=None, help="Refuse a second queued/picked job with this key.")
@click.option(
    "--on-conflict",
    type=click.Choice(["raise", "skip", "update_priority"]),
    default="raise",
    show_default=True,
    help="What a duplicate dedupe key does.",
)
@click.option("--headers", default=None, help="Job headers as a JSON object.")
def enqueue(
    entrypoint: str,
    payload: str | None,
    priority: int,
    delay: str | None,
    dedupe_key: str | None,
    on_conflict: str,
    headers: str | None,
) -> None:
    """Add a job; PAYLOAD is stored as the bytes given (UTF-8 text). Prints the new job id."""
    after = parse_duration(delay, option="--delay") if delay else None
    try:
        ids = current_state().queries.enqueue(
            entrypoint,
            # The bytes as given: fsencode undoes the surrogate escapes that stand
            # for argv bytes that are not UTF-8 (e.g. $'\xff').
            os.fsencode(payload) if payload is not None else None,
            priority,
            after,
            dedupe_key,
            parse_headers(headers),
            on_conflict=cast(Any, on_conflict),
        )
    except DuplicateJobError:
        fail(f"a job with dedupe key {dedupe_key!r} is already queued or running")
    if ids[0] is None:
        click.echo(f"skipped: a job with dedupe key {dedupe_key!r} is already queued or running")
        return
    click.echo(ids[0])


# PgQueuer's name for the same command, kept out of the help listing.
cli.add_command(
    click.Command(
        "queue", callback=enqueue.callback, params=enqueue.params, help=enqueue.help, hidden=True
    )
)


@cli.command()
@click.option("-n", "--limit", type=click.IntRange(min=1), default=25, show_default=True)
@json_option
def failed(limit: int, as_json: bool) -> None:
    """Jobs held with status 'failed' (entrypoints with on_failure='hold'), with the
    exception type and message of each one's last logged error."""
    queries = current_state().queries
    jobs = queries.list_failed_jobs(limit=limit)
    errors = queries.last_errors(j.id for j in jobs)
    if as_json:
        keys = ("id", "entrypoint", "priority", "attempts", "created", "updated")
        rows = [{k: getattr(j, k) for k in keys}
                | {"payload_bytes": len(j.payload or b""),
                   "last_error": _error_json(errors.get(j.id))}
                for j in jobs]
        click.echo(to_json(rows))
    elif not jobs:
        click.echo("no held jobs")
    else:
        # The priority is left to --json: the error needs the room.
        rows2 = [(j.id, j.entrypoint, j.attempts, j.updated,
                  errors[j.id].summary if j.id in errors else None) for j in jobs]
        headers = ("id", "entrypoint", "attempts", "held since (UTC)", "last error")
        click.echo(fit_table(headers, rows2, flex=(1, 4)))


def _error_json(error: ErrorRecord | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {
        "exception_type": error.record.exception_type,
        "exception_message": error.record.exception_message,
        "logged": error.logged,
        "status": error.status,
    }


@cli.command()
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "every", is_flag=True, help="Every held job.")
@click.option("--entrypoint", "entrypoints", multiple=True, metavar="EP",
              help="The held jobs of this entrypoint (repeatable).")
@click.option("--batch-size", type=click.IntRange(min=1), default=BULK_BATCH_SIZE,
              show_default=True, help="Jobs per statement with --all/--entrypoint; each "
              "batch is its own transaction.")
def requeue(ids: Sequence[int], every: bool, entrypoints: Sequence[str], batch_size: int) -> None:
    """Put held ('failed') jobs back in the queue with attempts reset, and wake the workers.

    Give job IDS, --all, or one or more --entrypoint.
    """
    _check_selection(ids, ("--all", every), ("--entrypoint", bool(entrypoints)))
    queries = current_state().queries
    if ids:
        done = queries.requeue_jobs(ids)
        _report("requeued", ids, done, "not held jobs")
        return
    plan = queries.plan_bulk("requeue", entrypoints=None if every else entrypoints)
    result = queries.run_bulk(plan, batch_size=batch_size)
    _report_bulk(result, "requeued", _nothing("held", plan))
    if result.kept:
        click.echo(f"kept {result.kept} job(s) held: an active job holds their dedupe key",
                   err=True)


@cli.command()
@click.argument("ids", nargs=-1, type=int)
@click.option("--entrypoint", "entrypoints", multiple=True, metavar="EP",
              help="The queued and running jobs of this entrypoint (repeatable).")
@click.option("--batch-size", type=click.IntRange(min=1), default=BULK_BATCH_SIZE,
              show_default=True, help="Jobs per statement with --entrypoint; each batch is "
              "its own transaction.")
def cancel(ids: Sequence[int], entrypoints: Sequence[str], batch_size: int) -> None:
    """Cancel jobs: queued ones are removed, running ones see their cancellation token.

    Give job IDS or one or more --entrypoint (held jobs of those entrypoints stay).
    """
    _check_selection(ids, ("--entrypoint", bool(entrypoints)))
    queries = current_state().queries
    if ids:
        done = queries.mark_job_as_cancelled(ids)
        _report("canceled", ids, done, "not in the queue")
        return
    plan = queries.plan_bulk("cancel", entrypoints=entrypoints)
    result = queries.run_bulk(plan, batch_size=batch_size)
    _report_bulk(result, "canceled", _nothing("queued or running", plan))


@cli.command()
@click.argument("entrypoints", nargs=-1, required=True, metavar="EP...")
@click.option("--batch-size", type=click.IntRange(min=1), default=BULK_BATCH_SIZE,
              show_default=True, help="Jobs per statement; each batch is its own transaction.")
@click.option("--dry-run", is_flag=True, help="Count the jobs that would go; delete nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required when stdin "
              "is not a terminal).")
def purge(entrypoints: Sequence[str], batch_size: int, dry_run: bool, yes: bool) -> None:
    """Delete the queued jobs of entrypoints EP..., each logged 'deleted'.

    Running (picked) and held jobs are never touched, and jobs enqueued while it
    runs stay. Deletes in small batches that skip rows workers are claiming, so
    it never blocks them. Asks first on a terminal; elsewhere it needs --yes.
    """
    if not (yes or dry_run or sys.stdin.isatty()):
        raise UsageProblem("purge deletes jobs: pass --yes to confirm (stdin is not a "
                           "terminal, so it cannot ask)")
    queries = current_state().queries
    plan = queries.plan_bulk("purge", entrypoints=entrypoints)
    what = f"queued job(s) of {_names_text(plan)}"
    if dry_run:
        click.echo(f"would delete {plan.count} {what}")
        return
    if not plan.count:
        click.echo(f"no queued jobs of {_names_text(plan)}")
        return
    if not yes:
        click.confirm(f"delete {plan.count} {what}?", abort=True)
    with click.progressbar(length=plan.count, label="purging", file=sys.stderr,
                           show_pos=True) as bar:
        result = queries.run_bulk(plan, batch_size=batch_size, on_batch=bar.update)
    click.echo(f"deleted {result.done} {what} in {result.batches} batch(es)")
    _report_busy(result)


def _check_selection(ids: Sequence[int], *flags: tuple[str, bool]) -> None:
    """Job ids and each bulk flag exclude one another; one of them is required."""
    given = (["IDS"] if ids else []) + [name for name, used in flags if used]
    names = ["job IDS", *(name for name, _ in flags)]
    choices = ", ".join(names[:-1]) + f" or {names[-1]}"
    if len(given) > 1:
        raise click.UsageError(f"{' and '.join(given)} exclude each other: give {choices}",
                               ctx=click.get_current_context())
    if not given:
        raise click.UsageError(f"which jobs? give {choices}", ctx=click.get_current_context())


def _names_text(plan: BulkPlan) -> str:
    return "every entrypoint" if plan.entrypoints is None else ", ".join(plan.entrypoints)


def _nothing(kind: str, plan: BulkPlan) -> str:
    """What an empty bulk action says, e.g. ``no held jobs of resize_image``."""
    scope = "" if plan.entrypoints is None else f" of {_names_text(plan)}"
    return f"no {kind} jobs{scope}"


def _report_bulk(result: BulkResult, verb: str, nothing: str) -> None:
    if not result.done:
        click.echo(f"{verb} 0 job(s)" + ("" if result.kept or result.busy else f": {nothing}"))
    elif result.done <= LISTED_IDS:
        click.echo(f"{verb} {result.done} job(s): {', '.join(map(str, result.ids))}")
    else:
        split = ", ".join(f"{name} {n}" for name, n in result.by_entrypoint.items())
        click.echo(f"{verb} {result.done} job(s) in {result.batches} batch(es): {split}")
    _report_busy(result)


def _report_busy(result: BulkResult) -> None:
    if result.busy:
        click.echo(f"left {result.busy} job(s) that other sessions kept locked; run the "
                   "command again", err=True)


def _report(verb: str, asked: Sequence[int], done: Sequence[int], why: str) -> None:
    click.echo(f"{verb} {len(done)} job(s)" + (f": {', '.join(map(str, done))}" if done else ""))
    missed = sorted(set(asked) - set(done))
    if missed:
        click.echo(f"ignored {len(missed)} id(s), {why}: {', '.join(map(str, missed))}", err=True)

