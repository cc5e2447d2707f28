"""Queue upkeep: a worker refreshes the queue table's statistics and removes its
dead rows when autovacuum does not.

A queue table churns: every job is inserted, claimed (an update) and deleted.
Two things then slow every claim down:

* **stale planner statistics.** After a backlog was enqueued into a table the
  planner last saw empty, it believes each entrypoint has a handful of rows and
  reads and sorts *every* queued job of the entrypoint on each claim instead of
  walking the claim index and stopping after a batch (measured here: 617 jobs/s
  instead of about 5,000 when draining 200,000 jobs);
* **dead index entries.** Claimed and finished jobs leave entries that each
  claim steps over until VACUUM removes them.

Autovacuum handles both on a stock server, but it can be off (as on these test
machines), disabled for the table, or a minute behind a burst. Every
:data:`INTERVAL` a worker reads the table's counters (one cheap query) and, only
where autovacuum has not done it within :data:`GRACE`, runs ``ANALYZE`` or
``VACUUM`` itself, with ``SKIP_LOCKED`` so workers never queue up behind each
other. Only the table's owner may do either; a worker that is not says so once
(with the fix) and stops trying. ``run(queue_upkeep=False)`` turns it off.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from .models import TableHealth
from .threads import IDLE, Idle

if TYPE_CHECKING:
    from .queries import Queries

logger = logging.getLogger(__name__)

#: Seconds between looks at the queue table's counters.
INTERVAL = 5.0
#: Analyze once this many rows changed since the last ANALYZE ...
ANALYZE_MIN_ROWS = 1_000
#: ... and at least this share of the table.
ANALYZE_FRACTION = 0.1
#: Vacuum once this many rows are dead ...
VACUUM_MIN_ROWS = 10_000
#: ... and at least this share of the table.
VACUUM_FRACTION = 0.1
#: With autovacuum on, step in only when it has not acted for this long.
GRACE = timedelta(minutes=2)


@dataclasses.dataclass(frozen=True)
class Chores:
    """What the table needs now."""

    analyze: bool
    vacuum: bool

    def __bool__(self) -> bool:
        return self.analyze or self.vacuum


def chores(health: TableHealth, *, grace: timedelta = GRACE) -> Chores:
    """Decide from the counters; autovacuum gets ``grace`` to do it first."""
    rows = max(health.reltuples, float(health.live), 0.0)
    never_analyzed = health.reltuples < 0 and health.live + health.modified >= ANALYZE_MIN_ROWS
    stale = never_analyzed or health.modified >= max(ANALYZE_MIN_ROWS, ANALYZE_FRACTION * rows)
    dead = health.dead >= max(VACUUM_MIN_ROWS, VACUUM_FRACTION * rows)

    def ours(last: datetime | None) -> bool:
        return not health.autovacuum or last is None or health.now - last > grace

    return Chores(analyze=stale and ours(health.analyzed), vacuum=dead and ours(health.vacuumed))


class QueueUpkeep:
    """The upkeep tick of one worker: call it every :data:`INTERVAL` seconds."""

    def __init__(self, queries: Queries) -> None:
        self.queries = queries
        self.analyzed = 0
        self.vacuumed = 0
        self._given_up = False

    def __call__(self) -> Idle | None:
        if self._given_up:
            return IDLE
        health = self.queries.queue_table_health()
        todo = chores(health)
        if not todo:
            return IDLE
        if not health.owner:
            self._given_up = True
            logger.info(
                "the queue table needs %s, and autovacuum is %s; this worker's role does "
                "not own it, so it will not try: enable autovacuum (then 'pgq-sync autovac'), "
                "or run VACUUM (ANALYZE) on it as its owner",
                "ANALYZE" if todo.analyze else "VACUUM",
                "off" if not health.autovacuum else "behind",
            )
            return IDLE
        self._do(todo, health)
        return None

    def _do(self, todo: Chores, health: TableHealth) -> None:
        # VACUUM first: it also updates reltuples, which ANALYZE then refines.
        if todo.vacuum:
            self.queries.vacuum_queue_table()
            self.vacuumed += 1
            logger.debug("queue upkeep: vacuumed (%d dead rows)", health.dead)
        if todo.analyze:
            self.queries.analyze_queue_table()
            self.analyzed += 1
            logger.debug("queue upkeep: analyzed (%d rows changed)", health.modified)
