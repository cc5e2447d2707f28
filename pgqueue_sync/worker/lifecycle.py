"""The parts of a run's start and stop that know nothing of jobs: the stop stack,
waiting for the database at start, the shutdown watcher, the periodic chores
(log aggregation, queue upkeep, retention) and the bounded final writes.

:class:`~.manager.QueueManager` decides in which order they start and stop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from .. import options
from ..backoff import DatabaseRetry
from ..errors import DatabaseError
from ..signals import StopSignals
from . import retention, upkeep
from .retention import Pruner
from .state import FINAL_WAIT_SLICE, Progress, RunControl
from .threads import IDLE, JOIN_TIMEOUT, Idle, Ticker
from .upkeep import QueueUpkeep

if TYPE_CHECKING:
    from ..queries import Queries

logger = logging.getLogger(__name__)

#: How often the shutdown watcher checks whether run() has ended (seconds);
#: a set shutdown event is seen at once.
SHUTDOWN_WATCH_INTERVAL = 0.5
#: How long shutdown waits for threads whose work needs no finishing (seconds).
QUICK_JOIN_TIMEOUT = 1.0


class Lifecycle:
    """Stop callbacks, run in reverse order; one failure does not skip the rest."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], object]] = []

    def push(self, stop: Callable[[], object]) -> None:
        """Run ``stop`` at :meth:`close`, before the stops pushed earlier."""
        self._stops.append(stop)

    def close(self) -> None:
        """Run the stops, the last pushed first."""
        while self._stops:
            stop = self._stops.pop()
            try:
                stop()
            except Exception:  # keep stopping the others
                logger.exception("error while stopping %r", stop)


def await_database(
    verify: Callable[[], None], shutdown: threading.Event, patience: timedelta
) -> bool:
    """Run ``verify`` (the schema check), retrying for up to ``patience`` while the
    database is unreachable. False if ``shutdown`` was set meanwhile."""
    deadline = time.monotonic() + patience.total_seconds()

    def hopeless(exc: DatabaseError) -> bool:
        return not exc.transient or time.monotonic() >= deadline

    def wait(delay: float) -> None:
        shutdown.wait(min(delay, max(deadline - time.monotonic(), 0.0)))

    def verified(_failed_before: bool) -> bool:
        verify()
        return True

    retry = DatabaseRetry("the worker's start (database not reachable)",
                          stop=shutdown, log=logger, fatal=hopeless, wait=wait)
    return retry.run(verified) is True


def watch_shutdown(shutdown: threading.Event, control: RunControl) -> Callable[[], None]:
    """Turn ``shutdown.set()`` from any thread into wake-ups of every waiting loop;
    returns the function that stops the watcher.

    ``shutdown`` may be any ``threading.Event`` (one can be passed in), and
    an Event cannot notify anyone; without this, an idle dispatcher would
    notice it only after ``dequeue_timeout``.
    """
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and not control.halt.is_set():
            if shutdown.wait(SHUTDOWN_WATCH_INTERVAL):
                control.halt_all()
                return

    watcher = threading.Thread(target=watch, name="pgqueue_sync-shutdown-watch", daemon=True)
    watcher.start()

    def stop() -> None:
        done.set()
        watcher.join(JOIN_TIMEOUT)

    return stop


class Chores:
    """The periodic chores of one worker, each in its own ticker thread."""

    def __init__(self, queries: Queries, progress: Progress) -> None:
        self._queries = queries
        self._progress = progress
        #: The queue table's upkeep (None when turned off).
        self.upkeep: QueueUpkeep | None = None
        #: The retention pruner (None with every window off).
        self.pruner: Pruner | None = None

    def start(self, opts: options.RunOptions, halt: threading.Event, stack: Lifecycle) -> None:
        """Start the chores ``opts`` ask for, pushing their stops on ``stack``."""
        # Aggregation, upkeep and retention leave nothing to finish: a thread stuck
        # in a database call (an unreachable server) is not worth waiting for long.
        if opts.log_aggregation_interval:
            aggregator = Ticker(self._aggregate, opts.log_aggregation_interval.total_seconds(),
                                name="pgqueue_sync-aggregator").start()
            stack.push(lambda: aggregator.stop(QUICK_JOIN_TIMEOUT))
        if opts.queue_upkeep:
            self.upkeep = QueueUpkeep(self._queries)
            keeper = Ticker(self.upkeep, upkeep.INTERVAL, name="pgqueue_sync-upkeep").start()
            keeper.wake()  # look at once: a backlog enqueued before the start needs it most
            stack.push(lambda: keeper.stop(QUICK_JOIN_TIMEOUT))
        pruner = Pruner(self._queries, keep_log=opts.keep_log,
                        keep_statistics=opts.keep_statistics, keep_results=opts.keep_results,
                        stopping=halt.is_set)
        self.pruner = pruner if pruner.enabled else None
        if not pruner.enabled:
            return
        # No pass at start: a fleet restarting together would all try at once, and the
        # next pass comes within a minute anyway. A pass stops between statements once
        # the worker halts, so the join waits for one statement at most.
        ticker = Ticker(pruner, retention.INTERVAL, name="pgqueue_sync-pruner").start()
        stack.push(lambda: ticker.stop(QUICK_JOIN_TIMEOUT))

    def _aggregate(self) -> Idle | None:
        progress = self._progress
        if not progress.dispatched_since_aggregation:
            return IDLE  # nothing new: neither a success nor a failure for the backoff
        progress.dispatched_since_aggregation = False
        try:
            self._queries.aggregate_logs()
        except BaseException:
            progress.dispatched_since_aggregation = True  # try again at the next backoff step
            raise
        return None


def run_final_writes(write: Callable[[], None], stop_signals: StopSignals) -> None:
    """Run ``write`` (hand-backs and outcome writes) in its own thread and wait for it,
    until another stop signal arrives or ``FINAL_WRITES_TIMEOUT`` passes."""
    started = stop_signals.count
    done = threading.Event()

    def run() -> None:
        try:
            write()
        except Exception:
            logger.exception("final writes failed; unwritten jobs are re-run once their "
                             "heartbeat is stale")
        finally:
            done.set()

    writer = threading.Thread(target=run, name="pgqueue_sync-final-writes", daemon=True)
    writer.start()
    deadline = time.monotonic() + options.FINAL_WRITES_TIMEOUT
    while not done.wait(FINAL_WAIT_SLICE):
        if stop_signals.count > started:
            # Another signal while the final writes run (e.g. blocked on a lock):
            # leave now. Unwritten outcomes leave their jobs picked; they are
            # re-run once their heartbeat is stale (at-least-once, nothing lost).
            logger.warning("signal during the final writes: stopping without them")
            return
        if time.monotonic() > deadline:
            logger.error("final writes did not finish within %.0fs; stopping without them",
                         options.FINAL_WRITES_TIMEOUT)
            return
