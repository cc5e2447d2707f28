"""Names of the queue's database objects, read once from PgQueuer's ``PGQUEUER_*`` variables.

The names are a compatibility contract: a PgQueuer process and a pgqueue_sync
process configured with the same variables address the same tables, enum,
trigger and channel. Every name is validated here and reaches SQL only through
:class:`psycopg.sql.Identifier` (or as a bound value).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Mapping
from typing import Any

from psycopg import sql

from .errors import ConfigurationError
from .types import Channel, Durability

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_PREFIX_RE = re.compile(rf"^({_IDENT})?$")
_SCHEMA_RE = re.compile(rf"^{_IDENT}$")
_OBJECT_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*$")
_CHANNEL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
#: PostgreSQL truncates identifiers (and channel names) longer than this many bytes.
MAX_IDENTIFIER_BYTES = 63

#: Field name -> default name without the prefix.
_OBJECT_DEFAULTS = {
    "channel": "ch_pgqueuer",
    "function": "fn_pgqueuer_changed",
    "statistics_table": "pgqueuer_statistics",
    "queue_status_type": "pgqueuer_status",
    "queue_table": "pgqueuer",
    "queue_table_log": "pgqueuer_log",
    "trigger": "tg_pgqueuer_changed",
    "schedules_table": "pgqueuer_schedules",
}
_SCHEMA_SCOPED = (
    "queue_table",
    "queue_table_log",
    "statistics_table",
    "schedules_table",
    "function",
    "queue_status_type",
    "results_table",
)
#: pgqueue_sync's own opt-in results table (not PgQueuer's; no PGQUEUER_* variable).
RESULTS_TABLE_DEFAULT = "pgqueue_sync_results"


def default_name(field: str) -> str:
    """The default name of the object in ``field``, before the prefix is prepended."""
    if field == "results_table":
        return RESULTS_TABLE_DEFAULT
    return _OBJECT_DEFAULTS[field]


_TRUE = {"1", "true", "yes", "on", "t", "y"}
_FALSE = {"0", "false", "no", "off", "f", "n"}


@dataclasses.dataclass(frozen=True)
class DBSettings:
    """The configured object names; construct with keywords or :meth:`from_env`.

    ``prefix`` is prepended to every default name that is not set explicitly.
    ``db_schema`` places the objects in a PostgreSQL schema (``None`` follows the
    connection's ``search_path``). ``results_table`` names pgqueue_sync's own,
    opt-in results table (default ``{prefix}pgqueue_sync_results``; set it in
    code, there is no environment variable). Raises :class:`ConfigurationError`
    for a name that is not a plain identifier.
    """

    prefix: str = ""
    db_schema: str | None = None
    channel: Channel = Channel("")
    function: str = ""
    statistics_table: str = ""
    queue_status_type: str = ""
    queue_table: str = ""
    queue_table_log: str = ""
    trigger: str = ""
    schedules_table: str = ""
    durability: Durability = Durability.durable
    widen_id: bool = True
    results_table: str = ""

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ConfigurationError(
                f"invalid prefix {self.prefix!r}: use letters, digits and underscores, "
                "not starting with a digit (PGQUEUER_PREFIX)"
            )
        for field, base in _OBJECT_DEFAULTS.items():
            if not getattr(self, field):
                object.__setattr__(self, field, f"{self.prefix}{base}")
        if not self.results_table:
            object.__setattr__(self, "results_table", f"{self.prefix}{RESULTS_TABLE_DEFAULT}")
        if self.db_schema is not None:
            object.__setattr__(self, "db_schema", self.db_schema.lower() or None)
        self._validate()
        if not isinstance(self.durability, Durability):
            object.__setattr__(self, "durability", parse_durability(str(self.durability)))

    def _validate(self) -> None:
        if self.db_schema is not None and not _SCHEMA_RE.match(self.db_schema):
            raise ConfigurationError(
                f"invalid schema {self.db_schema!r}: use a plain identifier (PGQUEUER_SCHEMA)"
            )
        if self.db_schema is not None and len(self.db_schema.encode()) > MAX_IDENTIFIER_BYTES:
            raise ConfigurationError(
                f"schema {self.db_schema!r} is longer than {MAX_IDENTIFIER_BYTES} bytes; "
                "PostgreSQL would truncate it: choose a shorter PGQUEUER_SCHEMA"
            )
        for field in (*_SCHEMA_SCOPED, "trigger"):
            name = getattr(self, field)
            if not _OBJECT_RE.match(name):
                raise ConfigurationError(
                    f"invalid {field} name {name!r}: use a plain identifier "
                    f"(PGQUEUER_{field.upper()})"
                )
            if self.db_schema and "." in name and field in _SCHEMA_SCOPED:
                raise ConfigurationError(
                    f"object name {name!r} already contains a schema qualifier; "
                    "drop the dot or unset PGQUEUER_SCHEMA"
                )
        if not _CHANNEL_RE.match(self.channel):
            raise ConfigurationError(
                f"invalid channel {self.channel!r}: use letters, digits, '_', '.', '-'"
            )
        if len(self.channel.encode()) > MAX_IDENTIFIER_BYTES:
            raise ConfigurationError(
                f"channel {self.channel!r} is longer than {MAX_IDENTIFIER_BYTES} bytes; "
                "PostgreSQL would truncate it: choose a shorter prefix or PGQUEUER_CHANNEL"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> DBSettings:
        """Read ``PGQUEUER_*`` (and the legacy bare) variables; ``overrides`` win.

        Variable names match case-insensitively, as in PgQueuer.
        """
        env = {k.lower(): v for k, v in (os.environ if environ is None else environ).items()}
        values: dict[str, object] = {}
        if "pgqueuer_prefix" in env:
            values["prefix"] = env["pgqueuer_prefix"]
        schema = env.get("pgqueuer_schema") or env.get("pgqueuer_db_schema")
        if schema:
            values["db_schema"] = schema
        for field in (*_OBJECT_DEFAULTS, "durability", "widen_id"):
            raw = env.get(f"pgqueuer_{field}", env.get(field))
            if raw:
                values[field] = raw
        if "durability" in values:
            values["durability"] = parse_durability(str(values["durability"]))
        if "widen_id" in values:
            values["widen_id"] = _parse_bool("PGQUEUER_WIDEN_ID", str(values["widen_id"]))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def with_overrides(self, **overrides: object) -> DBSettings:
        """A copy with some fields replaced; a new ``prefix`` re-derives default names."""
        given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        if "prefix" in given:
            base = {f: getattr(self, f) for f in ("db_schema", "durability", "widen_id")}
            return DBSettings(**{**base, **given})
        return dataclasses.replace(self, **given)

    def ident(self, field: str) -> sql.Identifier:
        """The quoted, schema-qualified identifier of a schema-scoped object.

        Parts are lower-cased first: PgQueuer writes these names unquoted, so
        PostgreSQL folds them, and both sides must address the same object.
        """
        return sql.Identifier(*(part.lower() for part in self.qualified_parts(field)))

    def qualified_parts(self, field: str) -> tuple[str, ...]:
        """``(schema, name)`` or the dotted parts of the configured name."""
        name: str = getattr(self, field)
        if self.db_schema and field in _SCHEMA_SCOPED:
            return (self.db_schema, name)
        return tuple(name.split("."))

    def qualified_text(self, field: str) -> str:
        """The unquoted ``schema.name`` text, as PgQueuer spells it (e.g. lock keys)."""
        return ".".join(self.qualified_parts(field))

    def bare_name(self, field: str) -> str:
        """The object's own name, without any schema."""
        name: str = getattr(self, field)
        return name.rsplit(".", 1)[-1].lower()

    def index_name(self, suffix: str, table: str = "queue_table") -> str:
        """An index name derived from a table name, e.g. ``pgqueuer_picked_slot_idx``."""
        return f"{self.bare_name(table)}_{suffix}"

    @property
    def legacy_statistics_status_type(self) -> str:
        """The pre-0.27 statistics enum, dropped by upgrade and uninstall."""
        return f"{self.prefix}pgqueuer_statistics_status"


def parse_durability(value: str) -> Durability:
    """``durable``, ``balanced`` or ``volatile`` (case-insensitive)."""
    try:
        return Durability(value.strip().lower())
    except ValueError:
        raise ConfigurationError(
            f"invalid durability {value!r}: choose durable, balanced or volatile"
        ) from None


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"invalid {name} value {value!r}: use true or false")


@functools.lru_cache(maxsize=1)
def db_settings() -> DBSettings:
    """The process-wide settings, read from the environment once.

    Call ``db_settings.cache_clear()`` after changing ``PGQUEUER_*`` variables.
    """
    return DBSettings.from_env()
