"""Every object name a :class:`DBSettings` leads to, and the check that each one fits.

PostgreSQL silently truncates identifiers longer than 63 bytes (NAMEDATALEN - 1).
A long prefix would therefore install objects under names other than the ones
the queue compares against (the dedupe and seat-race indexes are recognised by
name), or make two derived names collide. :func:`check_lengths` refuses such
settings before any SQL runs, naming the longest offender and the fix.

Names PostgreSQL chooses itself (the ``id`` sequences, primary keys, the
schedules' unique constraint) are left to it: it shortens those without
clashes, and the queue looks them up in the catalog instead of guessing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from ..errors import ConfigurationError
from ..settings import MAX_IDENTIFIER_BYTES, DBSettings, default_name
from . import ddl, results

#: Settings fields naming objects directly, and what to call them in a message.
_OBJECT_FIELDS = {
    "queue_table": "queue table",
    "queue_table_log": "log table",
    "statistics_table": "statistics table",
    "schedules_table": "schedules table",
    "results_table": "results table",
    "queue_status_type": "status enum",
    "function": "trigger function",
    "trigger": "trigger",
}


@dataclasses.dataclass(frozen=True)
class DerivedName:
    """One object name, and the settings field whose value it is built from."""

    kind: str
    name: str
    source: str  # a DBSettings field, or "prefix"

    @property
    def excess(self) -> int:
        """Bytes over PostgreSQL's limit (0 or less when it fits)."""
        return len(self.name.encode()) - MAX_IDENTIFIER_BYTES


def derived_names(settings: DBSettings) -> Iterator[DerivedName]:
    """Every name the queue creates or addresses for these settings."""
    for field, kind in _OBJECT_FIELDS.items():
        yield DerivedName(kind, settings.bare_name(field), field)
    yield DerivedName("legacy statistics enum", ddl.legacy_status_name(settings), "prefix")
    for index in ddl.INDEXES:
        yield DerivedName("index", index.name(settings), ddl.TABLE_FIELDS[index.role])
    yield DerivedName(
        "index", settings.index_name(ddl.RETIRED_QUEUE_INDEX_SUFFIX), "queue_table"
    )
    yield DerivedName("index", results.index_name(settings), "results_table")


def check_lengths(settings: DBSettings) -> None:
    """Raise :class:`ConfigurationError` if PostgreSQL would truncate a derived name."""
    too_long = [n for n in derived_names(settings) if n.excess > 0]
    if not too_long:
        return
    worst = max(too_long, key=lambda n: n.excess)
    size = len(worst.name.encode())
    problem = (
        f"{worst.kind} name {worst.name!r} would be {size} bytes; PostgreSQL keeps "
        f"{MAX_IDENTIFIER_BYTES} and would truncate it"
    )
    raise ConfigurationError(f"{problem}: {_fix(settings, too_long)}")


def _fix(settings: DBSettings, too_long: list[DerivedName]) -> str:
    """Which setting to shorten, and to how many bytes."""
    from_prefix = [n for n in too_long if _follows_prefix(settings, n.source)]
    if from_prefix and settings.prefix:
        room = len(settings.prefix.encode()) - max(n.excess for n in from_prefix)
        if room >= 0:
            return f"use a prefix of at most {room} bytes (PGQUEUER_PREFIX / --prefix)"
    worst = max(too_long, key=lambda n: n.excess)
    own = settings.bare_name(worst.source) if worst.source != "prefix" else settings.prefix
    room = max(len(own.encode()) - worst.excess, 1)
    variable = f"PGQUEUER_{worst.source.upper()}"
    return f"shorten the {worst.source} name {own!r} to at most {room} bytes ({variable})"


def _follows_prefix(settings: DBSettings, source: str) -> bool:
    """Whether the name in ``source`` is the prefixed default (so the prefix is the fix)."""
    if source == "prefix":
        return True
    return settings.bare_name(source) == f"{settings.prefix}{default_name(source)}".lower()
