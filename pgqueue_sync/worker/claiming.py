"""The dequeue loop: claiming jobs while there is room, and waiting when there is none
or the queue has nothing ready.

The dispatcher thread claims and, when caught up, waits for a notification, the
next deferred job, the next stale one or the poll interval. Extra claim lanes
claim only while a backlog exists, so claim round trips overlap. Each claim
carries the buffered outcomes of finished jobs (one round trip and one commit
per cycle) and takes at most what :class:`~.capacity.Capacity` has room for.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping

from .. import options
from ..backoff import DatabaseRetry, needs_a_fix
from ..errors import ConnectionFailed, DatabaseError, PgqException
from ..models import Job
from ..queries import EntrypointExecutionParameter, PollState, Queries
from ..types import QueueExecutionMode, QueueManagerId
from .buffers import Batch, CompletionBuffer
from .capacity import Capacity
from .held import HeldJobs
from .registry import Registration, shortest_stale
from .state import FINAL_WAIT_SLICE, Progress, RunControl
from .threads import JOIN_TIMEOUT

logger = logging.getLogger(__name__)

Claims = dict[str, EntrypointExecutionParameter]


class Fill(enum.Enum):
    """How a round of claims (:meth:`Claimer._fill`) ended."""

    #: No room for another job: wait for a slot to free up.
    CAPACITY_FULL = "capacity full"
    #: A claim returned fewer jobs than there was room for (or the worker halts).
    ROOM_LEFT = "room left"


def claim_lanes(opts: options.RunOptions) -> int:
    """How many threads claim at once (the dispatcher and the extra lanes)."""
    # One claimer keeps starts in claim (priority) order; concurrent lanes may
    # start jobs claimed at the same moment in either order, which a serial
    # worker (concurrency 1) would notice.
    serial = opts.max_concurrent_tasks is not None or opts.concurrency == 1
    return 1 if serial else opts.claim_lanes


class Claimer:
    """Claims one run's jobs and hands each to ``dispatch``.

    ``on_drained()`` runs once drain mode finds no work left. ``listener_verified``
    is set while notifications are sure to arrive (otherwise idle waits poll).
    """

    def __init__(
        self,
        opts: options.RunOptions,
        queries: Queries,
        *,
        registry: Mapping[str, Registration],
        owner: QueueManagerId,
        held: HeldJobs,
        control: RunControl,
        capacity: Capacity,
        progress: Progress,
        buffer: CompletionBuffer,
        dispatch: Callable[[Job], None],
        listener_verified: threading.Event,
        on_drained: Callable[[], None],
    ) -> None:
        self._opts = opts
        self._queries = queries
        self._registry = registry
        self._owner = owner
        self._held = held
        self._control = control
        self._halt = control.halt
        self._wake = control.wake
        self._capacity = capacity
        self._progress = progress
        self._buffer = buffer
        self._dispatch = dispatch
        self._listener_verified = listener_verified
        self._on_drained = on_drained
        self._rate_lock = threading.Lock()
        # time.monotonic() from which a claim also looks for stale picked jobs.
        self._next_stale_check = 0.0
        self._lanes: list[threading.Thread] = []
        self._claimers: list[threading.Thread] = []

    def start_lanes(self, lanes: int) -> None:
        """Start the extra claim lanes (``lanes - 1`` threads beside the dispatcher)."""
        # Extra claim lanes, not with a budget: it is counted in SQL, and two
        # concurrent claims could each see room for the same jobs.
        self._lanes = [
            threading.Thread(target=self._extra_lane, name=f"pgqueue_sync-claimer-{i}",
                             daemon=True)
            for i in range(1, lanes)
        ]
        for lane in self._lanes:
            lane.start()  # joined by stop(), before the final wait

    def start_dispatcher(self) -> threading.Thread:
        """Start the dispatcher thread; returns it."""
        dispatcher = threading.Thread(target=self._dispatch_thread,
                                      name="pgqueue_sync-dispatcher", daemon=True)
        self._claimers = [dispatcher, *self._lanes]
        dispatcher.start()
        return dispatcher

    def stop(self, stop_now: threading.Event) -> None:
        """Join the dispatcher and the lanes (bounded; at once when ``stop_now`` is set),
        after a halt."""
        self._control.backlog.set()  # wake the lanes; they see the halt and leave
        self._control.lane_wake.set()
        deadline = time.monotonic() + JOIN_TIMEOUT
        for claimer in self._claimers:
            while claimer.is_alive() and time.monotonic() < deadline:
                if stop_now.is_set():
                    return
                claimer.join(FINAL_WAIT_SLICE)
            if claimer.is_alive():
                logger.warning("%s is still in a database call after %.1fs; jobs it still "
                               "claims are handed back", claimer.name, JOIN_TIMEOUT)

    def _dispatch_thread(self) -> None:
        try:
            self._dispatch_loop()
        except BaseException as exc:  # re-raised by run() in the caller's thread
            self._control.fail(exc)
        finally:
            self._control.halt_all()

    def _dispatch_loop(self) -> None:
        retry = DatabaseRetry(
            "the dispatcher", stop=self._halt, log=logger,
            fatal=self._needs_a_fix, wait=self._wait_to_recover,
            recovered=f"database reachable again; worker {self._owner} resumes",
        )
        retry.run(lambda _failed_before: self._dispatch_once())

    def _needs_a_fix(self, exc: DatabaseError) -> bool:
        """True for a database error that stops the worker instead of a retry."""
        permanent_connection = isinstance(exc, ConnectionFailed) and not exc.transient
        # A misconfiguration found by the database (PoolerError: prepared statements
        # through PgBouncer) stops the worker with the fix instead of retrying forever.
        return permanent_connection or needs_a_fix(exc) or (
            not exc.transient and self._opts.mode is QueueExecutionMode.drain
        )

    def _wait_to_recover(self, delay: float) -> None:
        # A listener reconnect (or a halt) ends the wait early.
        recovered = self._control.recovered
        recovered.clear()
        recovered.wait(delay)

    def _dispatch_once(self) -> None:
        """Claim what fits, then wait for a wake-up or the poll interval."""
        opts = self._opts
        self._wake.clear()
        if self._fill() is Fill.CAPACITY_FULL:  # wait for a slot to free up
            self._wake.wait(opts.dequeue_timeout.total_seconds())
            return
        self._check_writes()
        # Order matters: a finishing job buffers its outcome before it stops
        # counting as running, and the probe runs last, so a retry cannot slip
        # between the three reads and end drain mode early.
        busy = self._held.running() > 0
        writes_pending = self._buffer.pending() > 0
        claims = {name: reg.claim_parameters for name, reg in self._registry.items()}
        state = self._queries.poll_state(claims, opts.heartbeat_timeout)
        if opts.mode is QueueExecutionMode.drain and not (busy or writes_pending or state.queued):
            logger.info("drain mode: no work left")
            self._on_drained()
            return
        queued = state.queued or writes_pending
        self._progress.idle_waits += 1
        self._wake.wait(self._idle_wait(state, queued))

    def _check_writes(self) -> None:
        # Outcome writes that no retry can fix (a missing grant, a dropped table)
        # end a drain-mode run instead of waiting on them forever.
        error = self._buffer.last_error
        if (
            self._opts.mode is QueueExecutionMode.drain
            and isinstance(error, DatabaseError)
            and not error.transient
        ):
            raise error

    def _fill(self) -> Fill:
        """Claim and start jobs while there is room."""
        while not self._halt.is_set():
            wanted = self._capacity.reserve()
            if wanted == 0:
                return Fill.CAPACITY_FULL
            jobs: list[Job] = []
            try:
                self._claim(wanted, jobs)
            finally:
                # Jobs claimed before a later step failed are ours: start them anyway.
                self._capacity.settle(wanted, len(jobs))
                for job in jobs:
                    self._dispatch(job)
            if len(jobs) < wanted:
                self._control.backlog.clear()
                return Fill.ROOM_LEFT
            self._control.backlog.set()
        return Fill.ROOM_LEFT

    def _extra_lane(self) -> None:
        """An extra claimer, active only while a backlog exists, so claim round trips
        overlap; idle polling stays with the dispatcher."""
        # The dispatcher reports database errors; a lane only steps back.
        retry = DatabaseRetry("a claim lane", stop=self._halt, log=logger, level=logging.DEBUG,
                              fatal=lambda _exc: False)
        try:
            retry.run(lambda _failed_before: self._lane_step())
        except Exception:
            logger.exception("claim lane failed; stopping the worker")
            self._control.fail(PgqException("a claim lane failed unexpectedly"))
            self._control.halt_all()

    def _lane_step(self) -> None:
        if not self._control.backlog.wait(options.LANE_IDLE_WAIT):
            return
        self._control.lane_wake.clear()
        if self._fill() is Fill.CAPACITY_FULL:
            self._control.lane_wake.wait(options.LANE_IDLE_WAIT)

    def _claim(self, wanted: int, jobs: list[Job]) -> None:
        """Claim up to ``wanted`` jobs into ``jobs`` (which keeps what earlier steps
        claimed if a later one raises)."""
        open_eps, rated = self._claimable()
        if open_eps:
            jobs += self._dequeue(wanted, open_eps)
        if rated:
            # Buckets are read then spent: one lane at a time, or both could overshoot.
            with self._rate_lock:
                self._claim_rated(wanted, jobs)

    def _claim_rated(self, wanted: int, jobs: list[Job]) -> None:
        for name, reg in self._registry.items():
            if reg.bucket is None or len(jobs) >= wanted:
                continue
            tokens = reg.bucket.available()
            if tokens > 0:
                claimed = self._dequeue(min(wanted - len(jobs), tokens),
                                        {name: reg.claim_parameters})
                reg.bucket.take(len(claimed))
                jobs += claimed

    def _claimable(self) -> tuple[Claims, bool]:
        open_eps: Claims = {}
        rated = False
        for name, reg in self._registry.items():
            if reg.bucket is None:
                open_eps[name] = reg.claim_parameters
            elif reg.bucket.available() > 0:
                rated = True
        return open_eps, rated

    def _dequeue(self, batch: int, eps: Claims) -> list[Job]:
        # Outcomes ride along with the claim: one round trip and one commit per cycle.
        finished = self._buffer.take()
        sent = self._buffer.prepared(finished)
        try:
            jobs = self._claim_with(batch, eps, sent)
        except DatabaseError as exc:
            if not finished or exc.transient:
                self._buffer.restore(finished)
                raise
            # The database refused something in the outcomes, not necessarily the
            # claim: the flusher finds the bad one; claim without them meanwhile.
            self._buffer.restore(finished, isolate=True)
            return self._claim_with(batch, eps, Batch())
        except BaseException:
            self._buffer.restore(finished)
            raise
        self._buffer.written(sent)
        return jobs

    def _claim_with(self, batch: int, eps: Claims, finished: Batch) -> list[Job]:
        opts = self._opts
        return self._queries.dequeue(
            batch, eps, self._owner, opts.max_concurrent_tasks,
            opts.heartbeat_timeout, completed=finished.outcomes, results=finished.results,
            retries=finished.retries, include_stale=self._stale_check_due(),
        )

    def _stale_check_due(self) -> bool:
        """Whether this claim also looks for stale picked jobs (every few seconds:
        that scan steps over every job finished since the last VACUUM)."""
        now = time.monotonic()
        if now < self._next_stale_check:
            return False
        stale = shortest_stale(self._registry, self._opts.heartbeat_timeout)
        every = min(options.STALE_CHECK_INTERVAL, stale / 4)
        self._next_stale_check = now + every.total_seconds()
        return True

    def _idle_wait(self, state: PollState, queued: bool) -> float:
        # Retries, requeues, holds and hand-backs notify (as PgQueuer 2 does), but a
        # PgQueuer 1.6 worker's do not, and a stale job notifies nobody: wake for
        # the next deferred job and for the next picked job going stale.
        opts = self._opts
        longest = opts.dequeue_timeout.total_seconds()
        if not self._listener_verified.is_set():
            # No notification is sure to come (poll_only, or a listener that has not
            # echoed its probe yet or no longer does): poll.
            longest = min(longest, opts.poll_interval.total_seconds())
        if state.eligible:
            wait = options.MIN_DEQUEUE_POLL_INTERVAL
        elif state.eta is not None:
            wait = min(max(state.eta.total_seconds(), options.MIN_DEQUEUE_POLL_INTERVAL), longest)
        else:
            wait = options.MIN_DEQUEUE_POLL_INTERVAL if queued else longest
        if state.stale_eta is not None:
            self._next_stale_check = 0.0  # the claim after this wait looks for it
            stale = state.stale_eta.total_seconds() + options.STALE_WAKE_MARGIN
            wait = min(wait, max(stale, options.MIN_DEQUEUE_POLL_INTERVAL))
        buckets = [r.bucket for r in self._registry.values() if r.bucket is not None]
        if buckets:
            wait = min(wait, max(min(b.seconds_until_token() for b in buckets), 0.01))
        return wait
