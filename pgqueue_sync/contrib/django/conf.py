"""The ``PGQUEUE_SYNC`` Django setting, read with typed defaults.

Everything is read when asked for (never at import time), so
``override_settings`` and the test runner's database rename are followed.
Unknown keys and values of the wrong type raise
:class:`~pgqueue_sync.contrib.django.errors.DjangoConfigurationError` naming
the key and what to write instead.

Example (``settings.py``)::

    PGQUEUE_SYNC = {
        "DATABASE_ALIAS": "default",
        "TASK_MODULES": ["shop.jobs"],
        "WORKER": {"concurrency": 8, "shutdown_timeout": 60},
    }
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from ...errors import ConfigurationError
from ...options import duration, parse_duration, retention
from ...settings import DBSettings
from ...sql.names import check_lengths
from .errors import DjangoConfigurationError

#: The setting's name in ``settings.py``.
SETTING = "PGQUEUE_SYNC"
DEFAULT_DATABASE_ALIAS = "default"
#: The module imported from every installed app when the worker starts.
DEFAULT_AUTODISCOVER = "tasks"
#: ``TEST_MODE`` values: run jobs at enqueue, run them at commit, record them only.
TEST_MODES = ("eager", "eager_on_commit", "capture")

#: ``WORKER`` keys, with the type each takes; they are ``pgq-sync run`` options.
WORKER_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "concurrency": int,
    "batch_size": int,
    "dequeue_timeout": (int, float),
    "heartbeat_timeout": (int, float),
    "max_concurrent_tasks": int,
    "shutdown_timeout": (int, float),
    "wait_for_database": (int, float),
    "mode": str,
    "shutdown_on_listener_failure": bool,
    "queue_upkeep": bool,
    "restart_on_failure": bool,
    "restart_delay": (int, float),
    "metrics_port": int,
    # Worker processes under a supervisor (docs/processes.md).
    "processes": int,
    "max_jobs_per_child": int,
    "max_memory_per_child": int,
    # Behind PgBouncer in transaction mode (docs/pgbouncer.md).
    "listen_dsn": str,
    "poll_only": bool,
    "poll_interval": (int, float),
    # Retention (docs/retention.md): seconds, a timedelta, "7d"-style text, or "off".
    "keep_log": (str, int, float, timedelta),
    "keep_statistics": (str, int, float, timedelta),
    "keep_results": (str, int, float, timedelta),
}
#: ``WORKER`` keys holding a retention window.
_RETENTION = frozenset({"keep_log", "keep_statistics", "keep_results"})
#: ``WORKER`` and ``POOL`` keys holding seconds (checked like every duration option).
_SECONDS = frozenset({
    "dequeue_timeout", "heartbeat_timeout", "shutdown_timeout", "wait_for_database",
    "restart_delay", "timeout", "max_idle", "max_lifetime", "poll_interval",
})
#: ``POOL`` keys (``psycopg_pool.ConnectionPool`` arguments).
POOL_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "min_size": int,
    "max_size": int,
    "timeout": (int, float),
    "max_idle": (int, float),
    "max_lifetime": (int, float),
}

_KEYS = (
    "DATABASE_ALIAS", "PREFIX", "SCHEMA", "TASK_MODULES", "AUTODISCOVER", "WORKER", "POOL",
    "STORE_RESULTS", "TEST_MODE",
)


@dataclasses.dataclass(frozen=True)
class DjangoQueueSettings:
    """The validated ``PGQUEUE_SYNC`` setting.

    ``database_alias``: the ``DATABASES`` entry jobs are enqueued on and the
    worker connects to. ``prefix``/``schema``: the queue objects' names (as
    ``PGQUEUER_PREFIX``/``PGQUEUER_SCHEMA``; unset follows those variables).
    ``task_modules``: modules the worker imports besides each app's
    ``autodiscover`` module (``None`` disables autodiscovery). ``worker``:
    defaults for ``manage.py pgq_sync worker`` (its flags win). ``pool``: the
    worker's pool. ``store_results``: keep entrypoints' return values.
    ``test_mode``: ``None`` or one of :data:`TEST_MODES`.
    """

    database_alias: str = DEFAULT_DATABASE_ALIAS
    prefix: str | None = None
    schema: str | None = None
    task_modules: tuple[str, ...] = ()
    autodiscover: str | None = DEFAULT_AUTODISCOVER
    worker: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pool: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    store_results: bool = False
    test_mode: str | None = None

    @functools.cached_property
    def db_settings(self) -> DBSettings:
        """Object names: ``PGQUEUER_*`` variables with ``PREFIX``/``SCHEMA`` applied.

        Read once per settings object (the variables are not re-read per enqueue).
        """
        overrides: dict[str, Any] = {}
        if self.prefix is not None:
            overrides["prefix"] = self.prefix
        if self.schema is not None:
            overrides["db_schema"] = self.schema
        settings = DBSettings.from_env(**overrides)
        check_lengths(settings)  # refused here (check E003), not at the first enqueue
        return settings


_cache_lock = threading.Lock()
_cache: tuple[object, DjangoQueueSettings] | None = None


def get_settings() -> DjangoQueueSettings:
    """Read and validate ``settings.PGQUEUE_SYNC`` (absent: all defaults).

    The result is kept while the setting is the same object, so
    ``override_settings`` is followed but editing the dict in place is not.
    """
    global _cache
    from django.conf import settings

    raw = getattr(settings, SETTING, None)
    cached = _cache
    if cached is not None and cached[0] is raw:
        return cached[1]
    if raw is not None and not isinstance(raw, Mapping):
        raise DjangoConfigurationError(
            f"{SETTING} must be a dict, got {type(raw).__name__}"
        )
    parsed = parse(raw or {})
    with _cache_lock:
        _cache = (raw, parsed)
    return parsed


def parse(raw: Mapping[str, Any]) -> DjangoQueueSettings:
    """Validate one ``PGQUEUE_SYNC`` mapping (see :func:`get_settings`)."""
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise DjangoConfigurationError(
            f"unknown {SETTING} key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(_KEYS)}"
        )
    return DjangoQueueSettings(
        database_alias=_typed(raw, "DATABASE_ALIAS", str, DEFAULT_DATABASE_ALIAS),
        prefix=_typed(raw, "PREFIX", str, None),
        schema=_typed(raw, "SCHEMA", str, None),
        task_modules=tuple(_strings(raw, "TASK_MODULES")),
        autodiscover=_autodiscover(raw),
        worker=_options(raw, "WORKER", WORKER_OPTIONS),
        pool=_options(raw, "POOL", POOL_OPTIONS),
        store_results=_typed(raw, "STORE_RESULTS", bool, False),
        test_mode=_test_mode(raw),
    )


def _typed(raw: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = raw.get(key, default)
    if value is default or value is None:
        return default if value is None else value
    if not isinstance(value, kind):
        raise DjangoConfigurationError(
            f"{SETTING}[{key!r}] must be a {kind.__name__}, got {value!r}"
        )
    return value


def _strings(raw: Mapping[str, Any], key: str) -> list[str]:
    value = raw.get(key) or []
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise DjangoConfigurationError(
            f"{SETTING}[{key!r}] must be a list of dotted module paths, got {value!r}"
        )
    return list(value)


def _autodiscover(raw: Mapping[str, Any]) -> str | None:
    value = raw.get("AUTODISCOVER", DEFAULT_AUTODISCOVER)
    if value in (None, False, ""):
        return None
    if not isinstance(value, str):
        raise DjangoConfigurationError(
            f"{SETTING}['AUTODISCOVER'] must be a module name such as 'tasks', or None "
            f"to disable autodiscovery; got {value!r}"
        )
    return value


def _options(
    raw: Mapping[str, Any], key: str, allowed: Mapping[str, type | tuple[type, ...]]
) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, Mapping):
        raise DjangoConfigurationError(f"{SETTING}[{key!r}] must be a dict, got {value!r}")
    for name, item in value.items():
        if name not in allowed:
            raise DjangoConfigurationError(
                f"unknown {SETTING}[{key!r}] option {name!r}; valid: {', '.join(allowed)}"
            )
        kind = allowed[name]
        # bool is an int: refuse True where a number is meant.
        wrong = isinstance(item, bool) and kind is not bool
        if item is not None and (wrong or not isinstance(item, kind)):
            raise DjangoConfigurationError(
                f"{SETTING}[{key!r}][{name!r}] has the wrong type: {item!r}"
            )
        if item is not None and name in _SECONDS:
            _seconds(f"{SETTING}[{key!r}][{name!r}]", item)
        if item is not None and name in _RETENTION:
            _retention(f"{SETTING}[{key!r}][{name!r}]", item)
    return dict(value)


def _seconds(name: str, value: Any) -> None:
    """A duration in seconds: finite, not negative, within the one maximum."""
    try:
        duration(name, value)
    except ConfigurationError as exc:
        raise DjangoConfigurationError(str(exc)) from None


def _retention(name: str, value: Any) -> None:
    """A retention window: ``"off"``, ``"7d"``-style text, seconds or a timedelta."""
    try:
        if isinstance(value, str):
            if value.strip().lower() == "off":
                return
            value = parse_duration(value, option=f"{name} ('off', or)")
        retention(name, value, off="'off'")
    except ConfigurationError as exc:
        raise DjangoConfigurationError(str(exc)) from None


def _test_mode(raw: Mapping[str, Any]) -> str | None:
    value = raw.get("TEST_MODE")
    if value is None or value is False:
        return None
    if value not in TEST_MODES:
        raise DjangoConfigurationError(
            f"{SETTING}['TEST_MODE'] must be None or one of {', '.join(TEST_MODES)}; "
            f"got {value!r}"
        )
    return str(value)
