"""What the worker's parts share besides the jobs they hold (:mod:`.held`): the stop and
wake-up events of a run, the error that ended it, and a few running counts.

Every part gets the events it waits on or sets from one :class:`RunControl`, so
"stop" and "look again" mean the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import threading

#: Slice of the waits that must notice a halt or a second signal promptly (seconds).
FINAL_WAIT_SLICE = 0.1


class RunControl:
    """The events that stop and wake the worker's loops, and the first fatal error.

    ``halt`` is the one internal stop event for every exit path (shutdown, drain,
    errors); the user's ``shutdown`` feeds it but is never the only thing to watch.
    ``wake`` wakes the dispatcher, ``lane_wake`` and ``backlog`` the extra claim
    lanes, ``recovered`` ends the dispatcher's database backoff early (a
    listener reconnect, or a halt).
    """

    def __init__(self) -> None:
        self.halt = threading.Event()
        self.wake = threading.Event()
        self.lane_wake = threading.Event()
        self.backlog = threading.Event()
        self.recovered = threading.Event()
        #: The error that ended the run (re-raised by ``run()``); the first one wins.
        self.fatal: BaseException | None = None

    def reset(self) -> None:
        """Before a run (``run()`` may be called again on the same worker)."""
        self.halt.clear()
        self.recovered.clear()
        self.fatal = None

    def halt_all(self) -> None:
        """Stop every loop: set the halt and every event a loop may be waiting on."""
        self.halt.set()
        for event in (self.wake, self.lane_wake, self.backlog, self.recovered):
            event.set()

    def fail(self, error: BaseException) -> None:
        """Keep ``error`` as the run's fatal error, unless an earlier one is kept."""
        if self.fatal is None:
            self.fatal = error


@dataclasses.dataclass
class Progress:
    """Counts kept across runs, for tests, probes and the log aggregator."""

    #: How many times the dispatcher has entered its idle wait ("the worker is
    #: idle, waiting for a notification").
    idle_waits: int = 0
    #: Outcomes written so far.
    jobs_logged: int = 0
    #: A job was dispatched since the aggregator last folded the log.
    dispatched_since_aggregation: bool = False


def wake_up(event: threading.Event) -> None:
    """Set ``event`` unless it is set already."""
    # Event.set() takes a lock and notifies even when already set; skip that per job.
    if not event.is_set():
        event.set()
