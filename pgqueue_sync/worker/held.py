"""The jobs a worker holds, under the one lock its parts share (no database code here).

A job is *held* from its claim until its outcome is written: heartbeats keep it
alive meanwhile, and the write of its outcome is guarded by the claim token kept
here (the row's ``updated``). A held job is *running* (it has a :class:`Context`)
from its claim until its handler ends; at shutdown the jobs still running, and
those claimed but never started, are handed back to the queue.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

from ..models import Job
from ..types import JobId
from .cancellation import Context
from .state import FINAL_WAIT_SLICE

logger = logging.getLogger(__name__)


class Held(NamedTuple):
    """A job this worker holds: its latest claimed row (renewed by our own stale
    re-pick), the claim token it was dispatched with, when, its heartbeat period."""

    job: Job
    origin: datetime
    claimed_at: float
    period: float


class Admission(enum.Enum):
    """What a claimed row is to this worker (see :meth:`HeldJobs.admit`)."""

    #: A new run: start it.
    NEW = "new"
    #: Our own stale re-pick of a job still running here: that run's outcome will
    #: finish it, written against the renewed claim.
    RERUN = "rerun"
    #: Another row with the id of a job still running here: it does not run now.
    REUSED = "reused"
    #: Claimed after the hand-back at shutdown began: it goes straight back.
    LATE = "late"


class HeldJobs:
    """The running and held jobs of one worker; thread-safe.

    ``contexts`` (the worker's ``job_context``) maps each running job to its
    context; ``claimed`` maps each held job to its :class:`Held` (heartbeats and
    write guards read it); ``abandoned`` holds the jobs handed back while they
    ran (it only grows, at shutdown); ``beat_period`` is each entrypoint's
    heartbeat period (seconds), set when a run starts.
    """

    def __init__(self) -> None:
        # A plain Lock on the hot path; the Condition only serves the final wait.
        self.lock = threading.Lock()
        self._idle = threading.Condition(self.lock)
        self.contexts: dict[JobId, Context] = {}
        # Jobs held by this worker: claimed and not yet recorded (a finished job
        # stays until its outcome is written); heartbeats and write guards read it.
        self.claimed: dict[int, Held] = {}
        self.beat_period: dict[str, float] = {}
        self.abandoned: set[int] = set()
        self._unstarted: set[JobId] = set()  # claimed, then not started at shutdown
        self._handing_back = False
        self._stopping = False

    def reset(self) -> None:
        """Before a run (``run()`` may be called again on the same worker)."""
        self._unstarted.clear()
        self._stopping = self._handing_back = False
        self.abandoned.clear()

    def admit(self, job: Job, context: Context) -> Admission:
        """Take in a claimed row; only a :attr:`Admission.NEW` one is to be started."""
        with self.lock:
            # Our own stale re-pick of a job still running (or whose outcome is not
            # written yet) here: the first run's outcome will finish it.
            held = self.claimed.get(job.id)
            running = held is not None and job.id in self.contexts
            # Another row with the id of a job still running here (the schema was
            # reinstalled and ids restarted): it must not inherit that run's outcome.
            reused = running and held is not None and held.job.created != job.created
            # Our own stale re-pick of a job still running here: the running handler's
            # outcome will finish it, written against this claim (renewed token).
            rerun = running and not reused
            late = self._handing_back
            if rerun and held is not None:
                self.claimed[job.id] = held._replace(job=job)
            elif reused:
                # Left picked without heartbeats: it goes stale and is claimed again
                # (here too, once the old run has finished).
                logger.warning(
                    "job %d reuses the id of a job still running here (was the schema "
                    "reinstalled?); it runs once its heartbeat is stale", job.id)
            elif not late:
                # A new run. If an outcome of an earlier claim is still pending here
                # (its reply was lost after a retry committed), that write keeps its
                # old token and changes nothing.
                self.contexts[job.id] = context
                self.claimed[job.id] = Held(job, job.updated, time.monotonic(),
                                            self.beat_period[job.entrypoint])
                return Admission.NEW
        if late:
            return Admission.LATE
        return Admission.RERUN if rerun else Admission.REUSED

    def release(self, job_id: JobId) -> None:
        """The job's handler ended (its outcome is buffered): it no longer runs. It
        keeps its heartbeat until :meth:`written`."""
        with self.lock:
            self.contexts.pop(job_id, None)
            if self._stopping:  # only wait_for_running waits on the condition
                self._idle.notify_all()

    def leave_unstarted(self, job_id: JobId) -> None:
        """At shutdown, a claimed job that will not start: handed back with the
        unfinished ones (no second run for it)."""
        with self.lock:
            self.contexts.pop(job_id, None)
            self._unstarted.add(job_id)
            if self._stopping:
                self._idle.notify_all()

    def written(self, jobs: Iterable[Job]) -> None:
        """The outcomes of ``jobs`` are in the database: stop their heartbeats."""
        with self.lock:
            for job in jobs:
                held = self.claimed.get(job.id)
                if held is not None and held.job.updated == job.updated:
                    del self.claimed[job.id]  # recorded: stop its heartbeat

    def current_claim(self, job: Job) -> Job:
        """The row an outcome of ``job`` must be written against: ``job`` itself, or our
        own stale re-pick of it while it still ran here (which renewed the claim
        token, the ``updated`` that guards the write)."""
        held = self.claimed.get(job.id)  # one dict read: atomic, no lock needed
        return held.job if held is not None and held.origin == job.updated else job

    def heartbeat_snapshot(self) -> dict[int, tuple[float, float]]:
        """``{job_id: (claimed_at, period)}`` of every held job."""
        with self.lock:
            return {i: (h.claimed_at, h.period) for i, h in self.claimed.items()}

    def running(self) -> int:
        """How many jobs run (or wait for a handler thread) now."""
        with self.lock:
            return len(self.contexts)

    def contexts_of(self, ids: Iterable[JobId]) -> list[Context]:
        """The contexts of those of ``ids`` that run here."""
        with self.lock:
            return [self.contexts[i] for i in ids if i in self.contexts]

    def wait_for_running(self, timeout: float | None, stop_now: threading.Event) -> bool:
        """Wait until no job runs, for up to ``timeout`` seconds (None: no limit) or
        until ``stop_now`` is set; False when the timeout passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            self._stopping = True
            while self.contexts and not stop_now.is_set():
                left = FINAL_WAIT_SLICE if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, FINAL_WAIT_SLICE))
        return True

    def take_unfinished(self) -> tuple[dict[JobId, Context], set[JobId]]:
        """At shutdown: the jobs still running and those never started, to hand back.
        Jobs claimed from now on are :attr:`Admission.LATE`."""
        with self.lock:
            self._handing_back = True  # jobs claimed from now on go straight back
            running = dict(self.contexts)
            self.abandoned.update(running)
            unstarted, self._unstarted = self._unstarted, set()
        return running, unstarted

    def forget(self, job_ids: Iterable[int]) -> None:
        """The jobs were handed back: no longer held (no heartbeat)."""
        with self.lock:
            for job_id in job_ids:
                self.claimed.pop(job_id, None)
