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

Autovacuum handles the statistics on a stock server, but it can be off (as on
these test machines), disabled for the table, or a minute behind a burst. It
does not keep the dead entries down: it visits a database at most once per
``autovacuum_naptime`` (a minute by default), while a worker draining a deep
queue leaves thousands of dead entries a second at the head of the claim index
(on a stock server, a 200,000-job drain slowed to half its rate in its last
fifth while autovacuum had not come back).

Every :data:`INTERVAL` a worker reads the table's counters (one cheap query).
It runs ``ANALYZE`` where autovacuum is off or has not analyzed within
:data:`GRACE`, and ``VACUUM`` whenever enough rows are dead, whatever
autovacuum does (at most once a tick). A VACUUM that removed little (an old
open transaction still sees the rows) makes it wait :data:`VACUUM_BACKOFF`
before the next, doubling up to :data:`GRACE`, so a worker does not rescan the
table every few seconds in vain.
Both run with ``SKIP_LOCKED``, so workers never queue up behind each other or
behind autovacuum. Only the table's owner may do either; a worker that is not
says so once (with the fix) and stops trying. ``run(queue_upkeep=False)`` turns
it off.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from ..models import TableHealth
from .threads import IDLE, Idle

if TYPE_CHECKING:
    from ..queries import Queries

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
#: With autovacuum on, ANALYZE only when it has not analyzed for this long; also
#: the longest gap between VACUUMs that keep removing little.
GRACE = timedelta(minutes=2)
#: After a VACUUM that removed little, wait this long (seconds) before the next;
#: each further such VACUUM doubles the wait, up to GRACE.
VACUUM_BACKOFF = 10.0
#: A VACUUM that leaves more than this share of the dead rows it found "removed little".
FUTILE_SHARE = 0.5


@dataclasses.dataclass(frozen=True)
class Chores:
    """What the table needs now."""

    analyze: bool
    vacuum: bool

    def __bool__(self) -> bool:
        return self.analyze or self.vacuum


def chores(health: TableHealth, *, grace: timedelta = GRACE) -> Chores:
    """Decide from the counters: ANALYZE if autovacuum has not within ``grace``,
    VACUUM if enough rows are dead (the caller spaces VACUUMs out)."""
    rows = max(health.reltuples, float(health.live), 0.0)
    never_analyzed = health.reltuples < 0 and health.live + health.modified >= ANALYZE_MIN_ROWS
    stale = never_analyzed or health.modified >= max(ANALYZE_MIN_ROWS, ANALYZE_FRACTION * rows)
    dead = health.dead >= max(VACUUM_MIN_ROWS, VACUUM_FRACTION * rows)
    last = health.analyzed
    ours = not health.autovacuum or last is None or health.now - last > grace
    return Chores(analyze=stale and ours, vacuum=dead)


def _autovacuum_absent(health: TableHealth, grace: timedelta = GRACE) -> bool:
    """Autovacuum is off for the table, or has not vacuumed it within ``grace``."""
    last = health.vacuumed
    return not health.autovacuum or last is None or health.now - last > grace


class QueueUpkeep:
    """The upkeep tick of one worker: call it every :data:`INTERVAL` seconds."""

    def __init__(self, queries: Queries) -> None:
        self.queries = queries
        self.analyzed = 0
        self.vacuumed = 0
        self._given_up = False
        self._vacuum_gap = 0.0
        self._next_vacuum = 0.0  # time.monotonic() of the earliest next VACUUM

    def __call__(self) -> Idle | None:
        if self._given_up:
            return IDLE
        health = self.queries.queue_table_health()
        todo = chores(health)
        if todo.vacuum and time.monotonic() < self._next_vacuum:
            todo = dataclasses.replace(todo, vacuum=False)
        if not todo:
            return IDLE
        if not health.owner:
            if not (todo.analyze or _autovacuum_absent(health)):
                # Dead rows autovacuum will get to: nothing a non-owner should report.
                return IDLE
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
            self._space_vacuums(health.dead, self.queries.queue_table_health().dead)
        if todo.analyze:
            self.queries.analyze_queue_table()
            self.analyzed += 1
            logger.debug("queue upkeep: analyzed (%d rows changed)", health.modified)

    def _space_vacuums(self, before: int, after: int) -> None:
        """Set the earliest next VACUUM: soon if this one removed the dead rows,
        later and later while it cannot (an old transaction still sees them)."""
        if after > FUTILE_SHARE * before:
            self._vacuum_gap = min(max(self._vacuum_gap * 2, VACUUM_BACKOFF),
                                   GRACE.total_seconds())
            logger.debug("queue upkeep: VACUUM left %d of %d dead rows; next in %.0fs",
                         after, before, self._vacuum_gap)
        else:
            self._vacuum_gap = 0.0
            logger.debug("queue upkeep: vacuumed (%d dead rows)", before)
        self._next_vacuum = time.monotonic() + self._vacuum_gap
