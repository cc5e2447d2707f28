"""``manage.py pgq_sync <subcommand>``: the ``pgq-sync`` command line on Django's database.

Every ``pgq-sync`` subcommand (``install``, ``verify``, ``queue-size``,
``failed``, ``requeue`` ...) runs with ``--dsn`` taken from
``DATABASES[PGQUEUE_SYNC["DATABASE_ALIAS"]]`` and ``--prefix``/``--schema``
from ``PGQUEUE_SYNC`` (flags given on the command line win). ``worker`` runs
:func:`pgqueue_sync.contrib.django.worker.create_worker` through ``pgq-sync
run``, with ``PGQUEUE_SYNC["WORKER"]`` as the defaults of its flags::

    python manage.py pgq_sync worker --concurrency 8 -q emails
    python manage.py pgq_sync queue-size --json

From code: ``call_command("pgq_sync", "queue-size", "--json")`` (arguments as
strings; output goes to ``stdout=``/``stderr=`` when given). Click's user
errors become :class:`~django.core.management.CommandError` carrying click's
exit code.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click
from click.core import ParameterSource
from django.core.management.base import BaseCommand, CommandError, CommandParser

from .....cli.group import FactoryFailed, cli
from .....cli.worker import PROCESS_OPTIONS
from ...conf import SETTING, get_settings
from ...db import worker_conninfo
from ...errors import DjangoConfigurationError
from ...worker import FACTORY_PATH, _close_django_connections

WORKER = "worker"
#: Django's own options (value-taking ones first); they may come anywhere before ``--``.
_DJANGO_VALUED = ("-v", "--verbosity", "--settings", "--pythonpath")
_DJANGO_FLAGS = ("--traceback", "--no-color", "--force-color", "--skip-checks")
#: Options of the ``pgq-sync`` group that take a value (to find the subcommand).
_GROUP_VALUED = ("--dsn", "--prefix", "--schema", "--log-level")
_HELP = ("-h", "--help")
_DEFAULT_PROG = "manage.py pgq_sync"

GROUP_HELP = f"""pgq-sync on Django's database: the worker, the schema and the queue.

\b
The database is DATABASES[{SETTING}['DATABASE_ALIAS']]; --prefix/--schema
default to {SETTING}['PREFIX'/'SCHEMA']. Django's options (--settings,
--pythonpath, -v, --traceback, --no-color, --force-color, --skip-checks) may
come anywhere before '--'.
"""

WORKER_HELP = f"""Run the Django worker until SIGINT/SIGTERM (or, with --mode drain, until idle).

It imports each app's tasks module and {SETTING}['TASK_MODULES'], connects
its own pool to the database, and runs every @entrypoint and @schedule
declaration and every Django Tasks queue of the TASKS entries using
PgQueueSyncBackend. {SETTING}['WORKER'] holds the defaults of the run flags.
System checks run first, the database ones (schema installed) included.
"""


def split_argv(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split the command's arguments into Django's options and the click CLI's arguments.

    Django's options are recognised anywhere before a ``--`` (as ``manage.py``
    itself picks up ``--settings``); everything else goes to click, in order.
    """
    django: list[str] = []
    rest: list[str] = []
    pending = iter(tokens)
    for token in pending:
        if token == "--":
            rest += [token, *pending]
            break
        name, has_value, _ = token.partition("=")
        if name in _DJANGO_VALUED:
            django.append(token)
            if not has_value:
                django.extend(_take_one(pending))
        elif name in _DJANGO_FLAGS or _is_short_verbosity(token):
            django.append(token)
        else:
            rest.append(token)
    return django, rest


def _take_one(pending: Iterator[str]) -> list[str]:
    value = next(pending, None)
    return [] if value is None else [value]


def _is_short_verbosity(token: str) -> bool:
    return len(token) == 3 and token.startswith("-v") and token[2].isdigit()


class _PassThroughParser(CommandParser):
    """Django's parser for Django's options only; the rest is kept for click."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        django, rest = split_argv(list(args or []))
        parsed = super().parse_args(django, namespace)
        parsed.pgq_args = rest
        parsed.pgq_prog = _readable_prog(self.prog)
        return parsed


def _readable_prog(prog: str) -> str:
    # As manage.py's own help does for `python -m django`.
    program, _, rest = prog.strip().partition(" ")
    return f"python -m django {rest}" if program == "__main__.py" else prog.strip()


def subcommand_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in click arguments (``None`` for bare options)."""
    pending = iter(argv)
    for token in pending:
        if token == "--":
            return None
        if token in _GROUP_VALUED:
            next(pending, None)
        elif not token.startswith("-"):
            return token
    return None


def _asks_for_help(argv: Sequence[str]) -> bool:
    before_dashes = argv[: argv.index("--")] if "--" in argv else argv
    return any(token in _HELP for token in before_dashes)


class Command(BaseCommand):
    help = (
        "The pgq-sync command line on Django's database, plus 'worker'; "
        "'manage.py pgq_sync --help' lists the subcommands."
    )
    # handle() runs the checks itself: the database ones (is the schema
    # installed?) only for the worker, so that 'install' runs on a database
    # that has no schema yet.
    requires_system_checks: list[str] = []

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> Any:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # Both run_from_argv() and call_command() parse with this parser; argparse
        # would claim click's options (and --help), so Django's options are split
        # off first. The subclass adds behaviour only, no state.
        parser.__class__ = _PassThroughParser
        return parser

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--skip-checks", action="store_true", help="Skip system checks.")

    def print_help(self, prog_name: str, subcommand: str) -> None:
        """``manage.py help pgq_sync``: click's help, listing the subcommands."""
        run_click(["--help"], _readable_prog(f"{os.path.basename(prog_name)} {subcommand}"))

    def handle(self, *args: str, **options: Any) -> None:
        argv = [*options.get("pgq_args", ()), *args] or ["--help"]
        group = django_cli()
        subcommand = subcommand_of(argv)
        # Help (and a bad subcommand, which click reports) needs no settings or checks.
        if subcommand in group.commands and not _asks_for_help(argv):
            try:
                if not options.get("skip_checks"):
                    self._check_for(subcommand)
                argv = [*_connection_args(subcommand), *argv]
            except DjangoConfigurationError as exc:
                raise CommandError(str(exc), returncode=2) from exc
        color = True if options.get("force_color") else False if options.get("no_color") else None
        with _redirected(options.get("stdout"), options.get("stderr")):
            run_click(argv, options.get("pgq_prog") or _DEFAULT_PROG, color=color, group=group)

    def _check_for(self, subcommand: str | None) -> None:
        """Run the system checks; for the worker the database ones too (schema installed).

        Raises ``SystemCheckError`` (a ``CommandError``) on errors; prints warnings.
        """
        databases = [get_settings().database_alias] if subcommand == WORKER else None
        self.check(databases=databases)


def _connection_args(subcommand: str | None) -> list[str]:
    # The worker takes all of it from the settings itself (and `run` would
    # export these into os.environ, which would outlive an in-process call).
    if subcommand == WORKER:
        return []
    conf = get_settings()
    args = ["--dsn", worker_conninfo(conf.database_alias)]  # holds the password: never echo
    if conf.prefix is not None:
        args += ["--prefix", conf.prefix]
    if conf.schema is not None:
        args += ["--schema", conf.schema]
    return args


@contextlib.contextmanager
def _redirected(stdout: Any, stderr: Any) -> Iterator[None]:
    # click writes to sys.stdout/sys.stderr; honour call_command(stdout=...).
    with contextlib.ExitStack() as stack:
        if stdout is not None:
            stack.enter_context(contextlib.redirect_stdout(stdout))
        if stderr is not None:
            stack.enter_context(contextlib.redirect_stderr(stderr))
        yield


def run_click(
    argv: Sequence[str], prog: str, *, color: bool | None = None, group: click.Group | None = None
) -> None:
    """Run the Django flavour of the click CLI; user errors become ``CommandError``.

    Blocks for as long as the subcommand runs (the worker until it stops).
    ``SystemExit`` raised by a subcommand propagates unchanged.
    """
    try:
        (group or django_cli()).main(args=list(argv), prog_name=prog, standalone_mode=False,
                                     color=color)
    except click.exceptions.Abort as exc:
        raise CommandError("aborted", returncode=1) from exc
    except click.ClickException as exc:
        raise CommandError(_one_line(exc), returncode=exc.exit_code) from exc


def _one_line(exc: click.ClickException) -> str:
    if isinstance(exc, FactoryFailed):  # the summary line, then the user's traceback
        return exc.format_message()
    no_args_is_help = getattr(click.exceptions, "NoArgsIsHelpError", ())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, no_args_is_help) and ctx is not None:
        return f"'{ctx.command_path}' needs a subcommand; see '{ctx.command_path} --help'"
    message = " ".join(exc.format_message().split()) or type(exc).__name__
    if isinstance(exc, click.UsageError) and ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


def django_cli() -> click.Group:
    """The ``pgq-sync`` group with the ``worker`` subcommand added (built per call)."""
    group_class: Callable[..., click.Group] = type(cli)
    return group_class(
        name="pgq_sync", commands={**cli.commands, WORKER: _worker_command()},
        callback=cli.callback, params=[_django_help(p) for p in cli.params], help=GROUP_HELP,
        context_settings=cli.context_settings,
    )


_GROUP_OPTION_HELP = {
    "dsn": f"PostgreSQL DSN or URL.  [default: DATABASES[{SETTING}['DATABASE_ALIAS']]]",
    "prefix": f"Prefix of every object name.  [default: {SETTING}['PREFIX'], else "
              "PGQUEUER_PREFIX]",
    "schema": f"Schema holding the objects.  [default: {SETTING}['SCHEMA'], else "
              "PGQUEUER_SCHEMA]",
}


def _django_help(param: click.Parameter) -> click.Parameter:
    help_text = _GROUP_OPTION_HELP.get(param.name or "")
    if help_text is None or not isinstance(param, click.Option):
        return param
    adapted = copy.copy(param)
    adapted.help = help_text
    return adapted


def _worker_command() -> click.Command:
    params = [p for p in cli.commands["run"].params if p.name not in ("factory", "args")]
    params += [
        click.Option(["-q", "--queue", "queues"], multiple=True, metavar="NAME",
                     help="Run only this Django Tasks queue (repeatable).  [default: all]"),
        click.Option(["--no-tasks"], is_flag=True, help="Run no Django Tasks queue."),
        click.Option(["--entrypoint", "entrypoints"], multiple=True, metavar="NAME",
                     help="Run only this @entrypoint declaration (repeatable).  [default: all]"),
        click.Option(["--no-entrypoints"], is_flag=True, help="Run no @entrypoint declaration."),
        click.Option(["--no-schedules"], is_flag=True, help="Run no @schedule declaration."),
    ]
    return click.Command(WORKER, callback=click.pass_context(_run_worker), params=params,
                         help=WORKER_HELP, short_help="Run the Django worker.")


def _run_worker(
    ctx: click.Context,
    queues: Sequence[str],
    no_tasks: bool,
    entrypoints: Sequence[str],
    no_entrypoints: bool,
    no_schedules: bool,
    **run_options: Any,
) -> None:
    group_params = ctx.parent.params if ctx.parent is not None else {}
    given = [f"--{name}" for name in ("dsn", "prefix", "schema") if group_params.get(name)]
    if given:
        raise click.UsageError(
            f"the worker takes its database and names from the Django settings "
            f"(DATABASES, {SETTING}); drop {', '.join(given)}", ctx=ctx,
        )
    options = _with_setting_defaults(ctx, run_options)
    if options.get("run_log_level") is None and group_params.get("log_level") is None:
        options["run_log_level"] = "INFO"  # the group only defaults to INFO for 'run'
    factory_args = [*_repeat("--queue", queues), *_repeat("--entrypoint", entrypoints)]
    for flag, on in (("--no-tasks", no_tasks), ("--no-entrypoints", no_entrypoints),
                     ("--no-schedules", no_schedules)):
        if on:
            factory_args.append(flag)
    if options.get("concurrency") is not None:
        factory_args += ["--concurrency", str(options["concurrency"])]  # sizes the pool
    if any(options.get(name) is not None for name in PROCESS_OPTIONS):
        # The supervisor holds no database connection (the checks opened one); each
        # worker process sets Django up and connects on its own.
        _close_django_connections()
    ctx.invoke(cli.commands["run"], factory=FACTORY_PATH, args=tuple(factory_args), **options)


def _repeat(flag: str, values: Sequence[str]) -> list[str]:
    return [item for value in values for item in (flag, value)]


def _with_setting_defaults(ctx: click.Context, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with ``PGQUEUE_SYNC["WORKER"]`` filling what the command line left unset."""
    merged = dict(options)
    by_name = {param.name: param for param in ctx.command.params}
    for key, value in get_settings().worker.items():
        param = by_name.get(key)
        if param is None or value is None:
            continue
        if ctx.get_parameter_source(key) not in (None, ParameterSource.DEFAULT):
            continue  # given on the command line: it wins
        try:
            merged[key] = param.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise click.UsageError(
                f"{SETTING}['WORKER'][{key!r}]: {exc.message}", ctx=ctx
            ) from exc
    return merged
