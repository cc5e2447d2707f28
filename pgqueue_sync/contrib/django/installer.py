"""Installing and inspecting the queue schema on Django's databases (migration and checks).

The app's migration calls :func:`ensure_schema`; the system checks call
:func:`inspect_schema`. Both use Django's own connection for an alias
(:class:`~pgqueue_sync.contrib.django.db.DjangoDriver`), so they follow the
test runner's ``test_<NAME>`` database, and the object names of
``PGQUEUE_SYNC`` (:func:`~pgqueue_sync.contrib.django.conf.get_settings`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ...errors import AlreadyInstalledError, SchemaError
from ...results import Results
from ...schema import Schema
from ...settings import DBSettings
from .conf import get_settings
from .db import DjangoDriver

logger = logging.getLogger(__name__)

#: The app label and the migration that installs the schema.
APP_LABEL = "pgqueue_sync"
INSTALL_MIGRATION = "0001_initial"
_BACKEND_PREFIX = "pgqueue_sync.contrib.django"


def tasks_aliases() -> set[str]:
    """``DATABASES`` aliases that a ``TASKS`` entry using our backend enqueues on.

    Reads settings only (no backend is instantiated); an entry's
    ``OPTIONS["DATABASE_ALIAS"]`` wins over ``PGQUEUE_SYNC``'s.
    """
    from django.conf import settings

    default = get_settings().database_alias
    aliases = set()
    for params in (getattr(settings, "TASKS", None) or {}).values():
        if not str(params.get("BACKEND", "")).startswith(_BACKEND_PREFIX):
            continue
        options = params.get("OPTIONS") or {}
        alias = options.get("DATABASE_ALIAS") if isinstance(options, dict) else None
        aliases.add(alias if isinstance(alias, str) and alias else default)
    return aliases


def queue_aliases() -> set[str]:
    """Every alias that holds the queue: ``PGQUEUE_SYNC["DATABASE_ALIAS"]`` and Tasks aliases."""
    return {get_settings().database_alias, *tasks_aliases()}


def results_needed(alias: str) -> bool:
    """True when the results table must exist on ``alias``.

    The Tasks backend writes a results row at every enqueue;
    ``STORE_RESULTS`` makes the worker write one per finished job.
    """
    conf = get_settings()
    return alias in tasks_aliases() or (conf.store_results and alias == conf.database_alias)


def ensure_schema(alias: str, names: DBSettings | None = None) -> list[str]:
    """Install, or bring up to date, the queue schema and results table on ``alias``.

    A database without queue objects gets exactly what ``pgq-sync install``
    creates; one that ``pgq install``/``pgq-sync install`` (or an older
    PgQueuer) already set up is upgraded in place, as ``pgq upgrade`` would,
    without losing jobs. The results table is created if missing. Returns
    the statements an upgrade ran (``[]`` for a fresh install or a schema
    already up to date).

    Blocks for a few DDL statements, each group in its own transaction (an
    upgrade commits new enum labels before using them), so call it outside
    ``atomic()``. Raises :class:`~pgqueue_sync.errors.SchemaError` if the
    schema still lacks something afterwards (e.g. a table without its
    ``id``), and :mod:`pgqueue_sync.errors` database errors.
    """
    names = names if names is not None else get_settings().db_settings
    driver = DjangoDriver(alias)
    schema = Schema(driver, names)
    ran: list[str] = []
    if schema.verify("absent"):
        ran = schema.upgrade()
        logger.info("upgraded the existing queue schema on %r (%d statements)", alias, len(ran))
    else:
        try:
            schema.install()
            logger.info("installed the queue schema on %r", alias)
        except AlreadyInstalledError:
            # Another process installed it between our look and our install.
            ran = schema.upgrade()
    problems = schema.verify("present")
    if problems:
        raise SchemaError(
            f"the queue schema on database {alias!r} is still incomplete after the upgrade: "
            f"{'; '.join(problems)}; repair it by hand, then run migrate again"
        )
    Results(driver, names).install()
    return ran


@dataclasses.dataclass(frozen=True)
class SchemaState:
    """What :func:`inspect_schema` found on one alias.

    ``problems``: as ``pgq-sync verify --expect present`` reports them.
    ``results_missing``: the results table is needed but absent.
    ``migrated``: this app's schema migration is recorded as applied.
    """

    alias: str
    problems: list[str]
    results_missing: bool
    migrated: bool


def inspect_schema(alias: str, names: DBSettings | None = None) -> SchemaState:
    """Read the catalog of ``alias`` (a few queries; no changes).

    Raises :mod:`pgqueue_sync.errors` database errors when it cannot connect.
    """
    names = names if names is not None else get_settings().db_settings
    driver = DjangoDriver(alias)
    problems = Schema(driver, names).verify("present")
    missing = results_needed(alias) and not Results(driver, names).is_installed()
    return SchemaState(alias, problems, missing, migration_applied(alias))


def migration_applied(alias: str) -> bool:
    """True when ``django_migrations`` on ``alias`` records this app's install migration."""
    from django.db import connections
    from django.db.migrations.recorder import MigrationRecorder

    applied: dict[Any, Any] = MigrationRecorder(connections[alias]).applied_migrations()
    return (APP_LABEL, INSTALL_MIGRATION) in applied
