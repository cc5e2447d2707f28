"""The Django worker: a ``pgq-sync run`` factory built from Django's settings.

``manage.py pgq_sync worker`` runs it; so does, with ``DJANGO_SETTINGS_MODULE``
set, ``pgq-sync run pgqueue_sync.contrib.django.worker:create_worker -- [args]``.
At start it imports the apps' task modules, opens its own connection pool to
the ``PGQUEUE_SYNC["DATABASE_ALIAS"]`` database (as configured *then*, so it
follows the test runner's ``test_<NAME>`` rename), and registers:

* every :func:`~pgqueue_sync.contrib.django.registry.entrypoint` declaration,
  its sync handler wrapped so Django's stale connections are closed before and
  after each job in the handler thread;
* every :func:`~pgqueue_sync.contrib.django.registry.schedule` declaration
  (wrapped the same way);
* one entrypoint per Django Tasks queue of the ``TASKS`` entries that use
  :class:`~pgqueue_sync.contrib.django.backend.PgQueueSyncBackend`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from psycopg_pool import ConnectionPool, PoolTimeout

from ...app import PgQueuer
from ...drivers import SyncPsycopgPoolDriver, connect, describe_conninfo
from ...drivers.psycopg import with_connect_timeout_kwargs
from ...errors import ConnectionFailed
from ...options import CONCURRENCY
from . import registry
from .conf import SETTING, DjangoQueueSettings, get_settings
from .db import conninfo_of, worker_connection_params
from .errors import DjangoConfigurationError

logger = logging.getLogger(__name__)

#: The factory's import path, as ``pgq-sync run`` takes it.
FACTORY_PATH = "pgqueue_sync.contrib.django.worker:create_worker"
POOL_NAME = "pgqueue_sync-django-worker"
#: Pool connections beyond one per handler thread: the claim lanes, the
#: outcome flusher, the heartbeat and the scheduler each hold one briefly.
POOL_SPARE_CONNECTIONS = 4
POOL_MIN_SIZE = 2
#: Seconds to wait for the pool's first connections before giving up at start.
POOL_OPEN_TIMEOUT = 10.0
#: Seconds to wait for borrowed connections to come back when the pool closes.
POOL_CLOSE_TIMEOUT = 5.0


def create_worker(args: Sequence[str] = ()) -> contextlib.AbstractContextManager[PgQueuer]:
    """Build the Django worker; a context manager yielding a ready :class:`PgQueuer`.

    ``args`` (what follows ``--`` on ``pgq-sync run``; ``manage.py pgq_sync
    worker`` fills them in from its own flags):

    ``--queue/-q NAME``
        run only these Django Tasks queues (repeatable; default: every queue
        of every ``TASKS`` entry using our backend). An unknown name is an error.
    ``--no-tasks``
        run no Django Tasks queue.
    ``--entrypoint NAME``
        run only these ``@entrypoint`` declarations (repeatable; default: all).
    ``--no-entrypoints`` / ``--no-schedules``
        run no ``@entrypoint`` / no ``@schedule`` declaration.
    ``--concurrency N``
        the handler threads the pool is sized for (``POOL["max_size"]`` wins);
        the worker subcommand passes its own ``--concurrency``.

    The three kinds filter independently: a worker for the ``emails`` Tasks
    queue alone is ``-q emails --no-entrypoints --no-schedules``.

    Entering it imports the task modules and connects (blocking up to
    :data:`POOL_OPEN_TIMEOUT` seconds, or ``POOL["timeout"]``); exiting closes
    the pool and this thread's idle Django connections. Raises
    :class:`DjangoConfigurationError` for bad arguments, an unimportable task
    module or nothing to run, and :class:`~pgqueue_sync.errors.ConnectionFailed`
    when the database is unreachable. Needs Django's settings; the app registry
    is set up here when nothing did it before (``pgq-sync run``).
    """
    return _worker(_parse_args(args))


@contextlib.contextmanager
def _worker(options: argparse.Namespace) -> Iterator[PgQueuer]:
    _ensure_django()
    conf = get_settings()
    import_task_modules(conf)
    params = worker_connection_params(conf.database_alias)
    pool = open_pool(params, conf, options.concurrency)
    try:
        pgq = PgQueuer(SyncPsycopgPoolDriver(pool), settings=conf.db_settings,
                       store_results=conf.store_results)
        register_all(pgq, options)
        yield pgq
    finally:
        pool.close(timeout=POOL_CLOSE_TIMEOUT)
        _close_django_connections()


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage and sys.exit(2)
        raise DjangoConfigurationError(f"worker arguments: {message}")


def _parse_args(args: Sequence[str]) -> argparse.Namespace:
    parser = _ArgumentParser(prog=FACTORY_PATH, add_help=False)
    parser.add_argument("-q", "--queue", dest="queues", action="append", default=[])
    parser.add_argument("--no-tasks", action="store_true")
    parser.add_argument("--entrypoint", dest="entrypoints", action="append", default=[])
    parser.add_argument("--no-entrypoints", action="store_true")
    parser.add_argument("--no-schedules", action="store_true")
    parser.add_argument("--concurrency", type=int, default=None)
    options = parser.parse_args(list(args))
    if options.queues and options.no_tasks:
        parser.error("--queue selects Django Tasks queues; it cannot go with --no-tasks")
    if options.entrypoints and options.no_entrypoints:
        parser.error("--entrypoint cannot go with --no-entrypoints")
    if options.concurrency is not None and options.concurrency < 1:
        parser.error(f"--concurrency must be >= 1, got {options.concurrency}")
    return options


def _ensure_django() -> None:
    from django.apps import apps

    if not apps.ready:  # started by pgq-sync run rather than manage.py
        import django

        django.setup()


def import_task_modules(conf: DjangoQueueSettings) -> None:
    """Import every app's ``AUTODISCOVER`` module and each of ``TASK_MODULES``.

    A missing ``TASK_MODULES`` entry raises :class:`DjangoConfigurationError`;
    errors raised inside a module propagate unchanged.
    """
    if conf.autodiscover is not None:
        from django.utils.module_loading import autodiscover_modules

        autodiscover_modules(conf.autodiscover)
    for name in conf.task_modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not f"{name}.".startswith(f"{exc.name}."):
                raise  # the module exists but imports something missing
            raise DjangoConfigurationError(
                f"cannot import {SETTING}['TASK_MODULES'] entry {name!r}: {exc}"
            ) from exc


def open_pool(
    params: dict[str, Any], conf: DjangoQueueSettings, concurrency: int | None = None
) -> ConnectionPool[Any]:
    """Open the worker's pool over ``params`` and wait for its first connections.

    Sizes come from ``POOL``; ``max_size`` defaults to the handler threads
    plus :data:`POOL_SPARE_CONNECTIONS`. Raises
    :class:`~pgqueue_sync.errors.ConnectionFailed` (one line, no password)
    when the database cannot be reached in time.
    """
    sizes = dict(conf.pool)
    threads = concurrency or conf.worker.get("concurrency") or CONCURRENCY
    max_size = sizes.pop("max_size", None) or threads + POOL_SPARE_CONNECTIONS
    min_size = sizes.pop("min_size", None)
    min_size = min(POOL_MIN_SIZE, max_size) if min_size is None else min_size
    if not 0 <= min_size <= max_size:
        raise DjangoConfigurationError(
            f"{SETTING}['POOL'] needs 0 <= min_size <= max_size, got {min_size} and {max_size}"
        )
    wait = sizes.get("timeout") or POOL_OPEN_TIMEOUT
    _probe(params, wait)
    pool: ConnectionPool[Any] = ConnectionPool(
        kwargs={**with_connect_timeout_kwargs(params), "autocommit": True},
        min_size=min_size, max_size=max_size,
        name=POOL_NAME, open=False, check=ConnectionPool.check_connection,
        **{k: v for k, v in sizes.items() if v is not None},
    )
    try:
        pool.open(wait=True, timeout=wait)
    except PoolTimeout:
        pool.close(timeout=0)
        raise ConnectionFailed(
            f"the worker cannot connect to PostgreSQL ({_describe(params)}): the pool opened "
            f"no connection within {wait:g}s"
        ) from None
    logger.info("worker database: %s (pool of %d-%d connections)",
                _describe(params), min_size, max_size)
    return pool


def _probe(params: dict[str, Any], timeout: float) -> None:
    # One direct connection first: the pool would retry a missing database or
    # a refused connection until its timeout, and then not say why.
    hint = f"check DATABASES[{get_settings().database_alias!r}] and that the server is running"
    connect(conninfo_of(params), hint=hint, connect_timeout=max(2, int(timeout))).close()


def _describe(params: dict[str, Any]) -> str:
    """``host:port/dbname`` of connection keywords (never the password)."""
    return describe_conninfo(conninfo_of(params))


def register_all(pgq: PgQueuer, options: argparse.Namespace) -> None:
    """Register the declarations and Tasks queues ``options`` select on ``pgq``.

    Logs the names at INFO; raises :class:`DjangoConfigurationError` when a
    named entrypoint or queue does not exist or nothing at all is selected.
    """
    entrypoints = [] if options.no_entrypoints else _register_entrypoints(pgq, options.entrypoints)
    schedules = [] if options.no_schedules else _register_schedules(pgq)
    queues = [] if options.no_tasks else _register_tasks(pgq, options.queues)
    if not (entrypoints or schedules or queues):
        raise DjangoConfigurationError(
            "the worker has nothing to run: no @entrypoint or @schedule declaration was found "
            "and no Django Tasks queue was selected; declare handlers in an app's "
            f"{get_settings().autodiscover or 'tasks'}.py (or list their modules in "
            f"{SETTING}['TASK_MODULES']), or configure TASKS with PgQueueSyncBackend"
        )
    logger.info("registered entrypoints: %s", ", ".join(entrypoints) or "none")
    logger.info("registered schedules: %s", ", ".join(schedules) or "none")
    logger.info("registered Django Tasks queues: %s", ", ".join(queues) or "none")
    if queues:
        quiet_per_task_logging()


#: Loggers of Django Tasks (Django 6, the backport) that log every task at INFO.
TASK_LOGGERS = ("django.tasks", "django_tasks")


def quiet_per_task_logging() -> None:
    """Keep Django Tasks' two INFO lines per task out of the worker's log.

    Django logs every task's start and success at INFO (a 5,000-task drain:
    10,000 lines); failures it logs at ERROR, which stay. Done only when the
    worker does not log at DEBUG and the project left those loggers' level unset
    (a level set in ``LOGGING`` wins).
    """
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        return
    for name in TASK_LOGGERS:
        task_logger = logging.getLogger(name)
        if task_logger.level == logging.NOTSET:
            task_logger.setLevel(logging.WARNING)


def _register_entrypoints(pgq: PgQueuer, selected: Sequence[str]) -> list[str]:
    declared = registry.entrypoints()
    unknown = sorted(set(selected) - set(declared))
    if unknown:
        raise DjangoConfigurationError(
            f"no @entrypoint declaration named {', '.join(map(repr, unknown))}; "
            f"declared: {', '.join(sorted(declared)) or 'none'}"
        )
    names = sorted(selected or declared)
    for name in names:
        declaration = declared[name]
        try:
            register = pgq.entrypoint(name, **declaration.options)
        except TypeError as exc:
            raise DjangoConfigurationError(
                f"@entrypoint({name!r}) of {declaration.qualified_name}: {exc}"
            ) from exc
        register(registry.with_django_hygiene(declaration.func))
    return names


def _register_schedules(pgq: PgQueuer) -> list[str]:
    names = []
    for (entrypoint, expression), declaration in sorted(registry.schedules().items()):
        try:
            register = pgq.schedule(entrypoint, expression, **declaration.options)
        except TypeError as exc:
            raise DjangoConfigurationError(
                f"@schedule({entrypoint!r}, {expression!r}) of {declaration.qualified_name}: {exc}"
            ) from exc
        register(registry.with_django_hygiene(declaration.func))
        names.append(f"{entrypoint} ({expression})")
    return names


def _register_tasks(pgq: PgQueuer, selected: Sequence[str]) -> list[str]:
    from . import _compat

    if not _compat.HAS_TASKS:
        if selected:
            _compat.require_tasks()
        return []
    from .backend import our_backends, register_task_entrypoints, task_entrypoint

    backends = our_backends()
    if not backends and not selected:
        return []  # a project without Django Tasks: nothing to say
    _check_queues(selected, [set(b.queues) for b in backends.values()])
    names = register_task_entrypoints(pgq, queues=list(selected) or None)
    prefix_length = len(task_entrypoint(""))
    return [name[prefix_length:] for name in names]


def _check_queues(selected: Sequence[str], accepted: Sequence[set[str]]) -> None:
    # A backend with QUEUES=[] accepts any queue name, so nothing can be unknown.
    if not selected or not accepted or any(not queues for queues in accepted):
        return
    known = set().union(*accepted)
    unknown = sorted(set(selected) - known)
    if unknown:
        raise DjangoConfigurationError(
            f"no TASKS backend has the queue(s) {', '.join(map(repr, unknown))}; "
            f"their QUEUES: {', '.join(sorted(known))}"
        )


def _close_django_connections() -> None:
    # What manage.py does at exit; a connection inside atomic() (a test's
    # transaction, an in-process caller's) is the caller's and stays open.
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()
