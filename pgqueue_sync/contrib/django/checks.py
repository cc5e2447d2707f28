"""System checks (``manage.py check``): the configuration, and the schema on the database.

Configuration checks read settings only:

* ``pgqueue_sync.E001`` – ``PGQUEUE_SYNC["DATABASE_ALIAS"]`` is missing from
  ``DATABASES``, is not PostgreSQL, or Django runs it on psycopg2;
* ``pgqueue_sync.E002`` – the ``PGQUEUE_SYNC`` setting is invalid;
* ``pgqueue_sync.E003`` – the queue object names (``PREFIX``/``SCHEMA`` or the
  ``PGQUEUER_*`` environment variables) are invalid.

The schema check is tagged ``database``: Django runs it only for the aliases
it is given (``manage.py check --database default``, and ``migrate`` for the
database it migrates), never on a plain ``check`` or ``runserver``:

* ``pgqueue_sync.W001`` – the schema is not installed yet and this app's
  migration has not run (``manage.py migrate`` installs it);
* ``pgqueue_sync.E004`` – the migration ran but the schema is missing or
  incomplete (what ``pgq-sync verify --expect present`` reports);
* ``pgqueue_sync.E005`` – the results table, which the Tasks backend (or
  ``STORE_RESULTS``) needs, is missing;
* ``pgqueue_sync.E006`` – the database could not be inspected.

``migrate`` runs the database checks *before* migrating, so a database the
migration has yet to set up gets the warning, never an error that would stop
the very migration that fixes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.core import checks
from django.core.checks import CheckMessage, Tags
from django.db import Error as DjangoDatabaseError

from ...errors import ConfigurationError, PgqException
from .conf import SETTING, DjangoQueueSettings, get_settings
from .db import check_backend
from .errors import DjangoConfigurationError
from .installer import APP_LABEL, SchemaState, inspect_schema, queue_aliases

_MIGRATE_HINT = "run 'manage.py migrate {app}' (it installs the queue schema)"
_INSTALL_HINT = (
    "run 'manage.py pgq_sync upgrade' (or 'pgq-sync upgrade'), which adds what is missing "
    "and keeps the jobs; on an empty database 'manage.py pgq_sync install --results'"
)
_RESULTS_HINT = "run 'manage.py pgq_sync results install' (or 'pgq-sync results install')"


def _concerns_us(app_configs: Iterable[Any] | None) -> bool:
    # ``manage.py check <app>`` passes the apps to check; None means all of them.
    return app_configs is None or any(c.label == APP_LABEL for c in app_configs)


def _settings() -> tuple[DjangoQueueSettings | None, list[CheckMessage]]:
    try:
        conf = get_settings()
    except DjangoConfigurationError as exc:
        return None, [checks.Error(
            f"invalid {SETTING} setting: {exc}", obj=SETTING, id="pgqueue_sync.E002",
            hint=f"fix settings.{SETTING}; see docs/django.md for the keys and their types",
        )]
    try:
        conf.db_settings  # noqa: B018 - validates the object names
    except ConfigurationError as exc:
        return None, [checks.Error(
            f"invalid queue object names: {exc}", obj=SETTING, id="pgqueue_sync.E003",
            hint=f"fix {SETTING}['PREFIX']/['SCHEMA'] or the PGQUEUER_* environment variables",
        )]
    return conf, []


@checks.register()
def check_configuration(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E001–E003: the setting, the names and the database alias (no database access)."""
    if not _concerns_us(app_configs):
        return []
    conf, messages = _settings()
    if conf is None:
        return messages
    try:
        check_backend(conf.database_alias)
    except DjangoConfigurationError as exc:
        messages.append(checks.Error(
            str(exc), obj=f"{SETTING}['DATABASE_ALIAS']", id="pgqueue_sync.E001",
            hint="point PGQUEUE_SYNC['DATABASE_ALIAS'] at a DATABASES entry with ENGINE "
                 "'django.db.backends.postgresql', and install psycopg 3",
        ))
    return messages


@checks.register(Tags.database)
def check_schema(
    app_configs: Sequence[Any] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """W001, E004–E006: the schema and results table on each queue alias in ``databases``.

    Runs a few catalog queries per alias; ``databases=None`` (a plain
    ``manage.py check``) checks nothing.
    """
    if not databases or not _concerns_us(app_configs):
        return []
    conf, _ = _settings()
    if conf is None:
        return []  # check_configuration reports it
    messages: list[CheckMessage] = []
    for alias in sorted(queue_aliases() & set(databases)):
        try:
            check_backend(alias)
        except DjangoConfigurationError:
            continue  # E001 (or the Tasks backend's own check) reports it
        messages += _schema_messages(alias)
    return messages


def _schema_messages(alias: str) -> list[CheckMessage]:
    obj = f"DATABASES[{alias!r}]"
    try:
        state = inspect_schema(alias)
    except (PgqException, DjangoDatabaseError) as exc:
        return [checks.Error(
            f"cannot inspect the queue schema on database {alias!r}: {exc}".strip(),
            obj=obj, id="pgqueue_sync.E006",
            hint="check that the database is reachable and the user may read pg_catalog",
        )]
    return _state_messages(state, obj)


def _state_messages(state: SchemaState, obj: str) -> list[CheckMessage]:
    if (state.problems or state.results_missing) and not state.migrated:
        return [checks.Warning(
            f"the queue schema is not installed on database {state.alias!r} yet",
            obj=obj, id="pgqueue_sync.W001", hint=_MIGRATE_HINT.format(app=APP_LABEL),
        )]
    messages: list[CheckMessage] = []
    if state.problems:
        messages.append(checks.Error(
            f"the queue schema on database {state.alias!r} is not installed or incomplete: "
            + "; ".join(state.problems),
            obj=obj, id="pgqueue_sync.E004", hint=_INSTALL_HINT,
        ))
    if state.results_missing:
        messages.append(checks.Error(
            f"the results table is missing on database {state.alias!r}; the Tasks backend "
            "(or STORE_RESULTS) writes to it",
            obj=obj, id="pgqueue_sync.E005", hint=_RESULTS_HINT,
        ))
    return messages
