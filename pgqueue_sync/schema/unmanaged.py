"""Indexes on the queue tables that the declaration does not know, and their DEBUG lines.

Such indexes (PgQueuer 2.x's ``{statistics_table}_created``, an operator's
own) are tolerated, as ``pgq upgrade`` tolerates unknown objects: verify does
not report them, and upgrade neither rebuilds nor drops them.
"""

from __future__ import annotations

import logging

from ..settings import DBSettings
from ..sql import ddl
from ..sql.ddl import TABLE_FIELDS
from .live import LiveIndex, LiveSchema

logger = logging.getLogger(__name__)


def unmanaged_indexes(settings: DBSettings, live: LiveSchema) -> list[tuple[LiveIndex, str]]:
    """Indexes on the four tables that the declaration does not cover, with a description.

    Covered are :data:`ddl.INDEXES`, the index retired in 1.5.0 (which upgrade
    drops, as ``pgq upgrade`` does) and the temporary names of interrupted
    rebuilds of declared indexes (finished or dropped by upgrade). Everything
    else (PgQueuer 2.x's ``{statistics_table}_created``, an operator's own
    index) is tolerated: verify does not report it and upgrade neither changes
    nor drops it. It is only listed here, for a DEBUG log line.
    """
    declared = {index.name(settings) for index in ddl.INDEXES}
    covered = declared | {ddl.rebuild_name(name) for name in declared}
    covered.add(settings.index_name(ddl.RETIRED_QUEUE_INDEX_SUFFIX))
    later = {index.name(settings): index for index in ddl.PGQUEUER2_INDEXES}
    found: list[tuple[LiveIndex, str]] = []
    for name in sorted(set(live.indexes) - covered):
        index = live.indexes[name]
        spec = later.get(name)
        if spec is not None and spec.role == index.role:
            found.append((index, "PgQueuer 2.x index"))
        else:
            found.append((index, "index unknown to PgQueuer 1.6.0"))
    return found


def log_unmanaged(settings: DBSettings, live: LiveSchema, what: str) -> None:
    """Name each unmanaged index at DEBUG, ``what`` (verify, upgrade) saw it."""
    if not logger.isEnabledFor(logging.DEBUG):
        return
    for index, description in unmanaged_indexes(settings, live):
        logger.debug(
            "%s: %s %r on %s (%s) tolerated and left alone",
            what,
            description,
            index.name,
            settings.bare_name(TABLE_FIELDS[index.role]),
            index.tail,
        )

