"""Running one claimed job: in a handler thread (``def``), on the event-loop thread
(``async def``, at most ``concurrency`` at once) or, through a handler thread,
in a child process (``isolation="process"``); and its timeout, if its
entrypoint has one (see docs/timeouts.md).

Every way a run can end leads to exactly one :meth:`Recorder.finish
<.outcomes.Recorder.finish>` call: the handler's own end, or its deadline
(the watchdog), whichever comes first; a handler that ends after its deadline
only frees its slot.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from .. import options
from ..models import Job
from ..tracing import TracingProtocol, get_tracer, is_active, process_span
from .aio import EventLoopThread, TaskEnd
from .cancellation import CancellationToken, Context
from .capacity import Capacity
from .held import Admission, HeldJobs
from .lifecycle import Lifecycle
from .outcomes import HandBacks, Recorder
from .registry import Registration, close_isolated
from .state import Progress, RunControl, wake_up
from .threads import JOIN_TIMEOUT, HandlerPool
from .timeouts import EXPIRY_BOOKKEEPING_WAIT, TimedRun, Watchdog, stack_traceback

logger = logging.getLogger(__name__)


class JobRunner:
    """Starts one run's claimed jobs and reports how each ended to the recorder.

    ``loop`` is None unless an async handler is registered, ``watchdog`` None
    unless an entrypoint has a timeout. ``async_limit`` caps the coroutines
    running at once; the jobs beyond it wait, claimed but not started, as sync
    jobs wait for a free handler thread.
    """

    def __init__(
        self,
        registry: Mapping[str, Registration],
        *,
        resources: MutableMapping[str, Any],
        tracer: TracingProtocol | None,
        held: HeldJobs,
        control: RunControl,
        capacity: Capacity,
        progress: Progress,
        pool: HandlerPool,
        loop: EventLoopThread | None,
        watchdog: Watchdog | None,
        recorder: Recorder,
        hand_backs: HandBacks,
        async_limit: int,
    ) -> None:
        self._registry = registry
        self._resources = resources
        self._tracer = tracer
        self._held = held
        self._halt = control.halt
        self._wake = control.wake
        self._lane_wake = control.lane_wake
        self._capacity = capacity
        self._progress = progress
        self._pool = pool
        self._loop = loop
        self._watchdog = watchdog
        self._recorder = recorder
        self._hand_backs = hand_backs
        self._async_limit = async_limit
        self._async_running = 0
        self._async_waiting: collections.deque[tuple[Job, Context, Registration]] = (
            collections.deque()
        )

    def dispatch(self, job: Job) -> None:
        """Start a claimed job (or queue it for a thread), unless it is not to run now."""
        reg = self._registry[job.entrypoint]
        context = Context(CancellationToken(), self._resources)
        admission = self._held.admit(job, context)
        if admission is not Admission.NEW:
            self._capacity.finished(None)
            if admission is Admission.LATE:  # claimed by a lane that outlived the shutdown wait
                self._hand_backs.hand_back({job.id: None}, "shutdown")
            return
        self._progress.dispatched_since_aggregation = True
        if reg.executor.is_async:
            self._admit_async(job, context, reg)
        else:
            self._pool.submit(self._run_sync, job, context, reg)

    def drop_waiting(self) -> None:
        """At shutdown, jobs claimed ahead and never started do not start: they are
        handed back with the unfinished ones."""
        with self._held.lock:
            waiting, self._async_waiting = self._async_waiting, collections.deque()
        for job, _, _ in waiting:
            self._leave_unstarted(job)
        # Sync jobs still waiting for a handler thread, as _run_sync would decide once
        # a thread is free: handed back now, not after a thread held by a timed-out
        # handler returns.
        for _, args in self._pool.take_pending():
            self._leave_unstarted(args[0])

    def _leave_unstarted(self, job: Job) -> None:
        """At shutdown, a claimed job still waiting for a handler thread does not start:
        it is handed back with the unfinished ones (no second run for it)."""
        self._held.leave_unstarted(job.id)
        self._capacity.finished(None)

    def _run_sync(self, job: Job, context: Context, reg: Registration) -> None:
        if self._halt.is_set():
            self._leave_unstarted(job)
            return
        error: BaseException | None = None
        seconds = None
        value = None
        run = self._arm(job, context, reg, threading.get_ident())
        try:
            if not context.cancellation.cancelled:
                started = time.monotonic()
                try:
                    value = self._execute(job, context, reg)
                except BaseException as exc:  # SystemExit too: the job's failure, not ours
                    error = exc
                seconds = time.monotonic() - started
        finally:
            if self._settle(run):
                self._recorder.finish(job, context, reg, error, cancelled=False,
                                      seconds=seconds, value=value)
            else:  # past its timeout: that outcome is recorded already
                self._returned_late(run, error)

    def _execute(self, job: Job, context: Context, reg: Registration) -> Any:
        """Call the executor (for async handlers: make its coroutine) inside the
        tracer's process span, if a tracer is installed."""
        tracer = get_tracer(self._tracer)
        if not is_active(tracer):
            return reg.executor.execute(job, context)
        if reg.executor.is_async:
            return _traced(tracer, job, reg.executor.execute(job, context))
        with process_span(tracer, job):
            return reg.executor.execute(job, context)

    def _admit_async(self, job: Job, context: Context, reg: Registration) -> None:
        """Start an async job now, or queue it while ``async_limit`` coroutines run:
        like a sync job waiting for a thread (claimed ahead, not yet started)."""
        with self._held.lock:
            if self._async_running >= self._async_limit:
                self._async_waiting.append((job, context, reg))
                return
            self._async_running += 1
        self._start_async(job, context, reg)

    def _async_done(self) -> None:
        """An async job ended: hand its slot to the next waiting one, if any (never
        after a halt: those are handed back unstarted)."""
        with self._held.lock:
            following = None
            if self._async_waiting and not self._halt.is_set():
                following = self._async_waiting.popleft()
            else:
                self._async_running -= 1
        if following is not None:
            self._start_async(*following)

    def _start_async(self, job: Job, context: Context, reg: Registration) -> None:
        started = time.monotonic()
        run = self._arm(job, context, reg)

        def done(ended: TaskEnd) -> None:  # on the event-loop thread
            if self._settle(run):
                self._finish_async(job, context, reg, ended, time.monotonic() - started)
                return
            try:  # past its timeout: that outcome is recorded already
                self._returned_late(run, ended.raised)
            finally:
                self._async_done()

        try:
            assert self._loop is not None
            cancel = self._loop.spawn(self._execute(job, context, reg), done)
        except BaseException as exc:  # no coroutine, or no loop: the job fails here
            try:
                if self._settle(run):
                    self._recorder.finish(job, context, reg, exc, cancelled=False, seconds=None)
                else:
                    self._returned_late(run, exc)
            finally:
                self._async_done()
            return
        context.cancellation.add_callback(cancel)

    def _finish_async(
        self, job: Job, context: Context, reg: Registration, ended: TaskEnd, seconds: float
    ) -> None:
        try:
            self._recorder.finish(job, context, reg, ended.error, cancelled=ended.cancelled,
                                  seconds=seconds, value=ended.value)
        finally:
            self._async_done()

    def _arm(
        self, job: Job, context: Context, reg: Registration, thread_id: int | None = None
    ) -> TimedRun | None:
        """Start the clock of a run of an entrypoint with a timeout (None: no timeout)."""
        if reg.timeout is None or self._watchdog is None:
            return None
        on_expiry = functools.partial(self._on_timeout, reg)
        return self._watchdog.arm(
            TimedRun(reg.timeout, on_expiry, job=job, context=context, thread_id=thread_id)
        )

    def _settle(self, run: TimedRun | None) -> bool:
        """The handler ended: True if its outcome counts (no timeout, or in time)."""
        return run is None or (self._watchdog is not None and self._watchdog.settle(run))

    def _on_timeout(self, reg: Registration, run: TimedRun) -> None:
        """On the watchdog thread, once a run passes its deadline: record the job as
        if its handler had raised TimeoutError, through the one failure path."""
        job: Job = run.job
        context: Context = run.context
        seconds = run.timeout.total_seconds()
        # Lost before the job stops counting in finish(): its slot is never handed out.
        lost = self._capacity.lose()
        slot = "its runner thread" if run.thread_id is not None else "its event-loop slot"
        logger.warning(
            "job %d (entrypoint %r) ran past its timeout of %gs: recorded as a TimeoutError "
            "and told to stop; %s counts as lost capacity until the handler returns "
            "(%d of %d lost)", job.id, job.entrypoint, seconds, slot, lost,
            self._capacity.concurrency,
        )
        if lost >= self._capacity.concurrency:
            logger.warning(
                "all %d handler slots are held by timed-out handlers: the worker claims no "
                "jobs until one returns", self._capacity.concurrency,
            )
        error = TimeoutError(f"the handler ran past its entrypoint's timeout of {seconds:g}s")
        # Where the handler was stuck, for the log record.
        error = error.with_traceback(stack_traceback(run.thread_id, JobRunner._execute.__code__))
        try:
            failure = reg.executor.timed_out(job, error)
        except Exception:
            logger.exception("%s.timed_out() failed; recording the TimeoutError",
                             type(reg.executor).__name__)
            failure = error
        context.cancellation.cancel()  # a def handler may poll it; an async one is cancelled
        self._recorder.finish(job, context, reg, failure, cancelled=False, seconds=seconds)

    def _returned_late(self, run: TimedRun | None, error: BaseException | None) -> None:
        """A handler ended after its timeout: its outcome is dropped, its slot is free."""
        assert run is not None  # only a timed run is late
        run.expired.wait(EXPIRY_BOOKKEEPING_WAIT)  # the expiry's bookkeeping comes first
        left = self._capacity.regain()
        job: Job = run.job
        ended = "returned" if error is None else f"raised {type(error).__name__}"
        slot = "its runner thread" if run.thread_id is not None else "its event-loop slot"
        logger.warning(
            "job %d (entrypoint %r): the handler %s %.1fs after its timeout of %gs; that "
            "outcome is ignored and %s is free again (%d still lost)", job.id, job.entrypoint,
            ended, time.monotonic() - run.deadline, run.timeout.total_seconds(), slot, left,
        )
        wake_up(self._wake)
        wake_up(self._lane_wake)


def start_job_runner(
    registry: Mapping[str, Registration],
    opts: options.RunOptions,
    stack: Lifecycle,
    *,
    resources: MutableMapping[str, Any],
    tracer: TracingProtocol | None,
    held: HeldJobs,
    control: RunControl,
    capacity: Capacity,
    progress: Progress,
    recorder: Recorder,
    hand_backs: HandBacks,
    on_loop_crash: Callable[[BaseException | None], object],
) -> JobRunner:
    """Start the threads that run one run's jobs, pushing their stops on ``stack``
    (they stop in reverse: the watchdog, the isolated children, the handler
    threads, the event loop), and return the runner that feeds them."""
    loop = None
    if any(reg.executor.is_async for reg in registry.values()):
        loop = EventLoopThread(on_crash=on_loop_crash).start()
        stack.push(loop.close)
    pool = HandlerPool(opts.concurrency)
    # Threads of handed-back jobs, or of timed-out handlers, may never return;
    # don't wait for them.
    stack.push(lambda: pool.stop(
        0.0 if held.abandoned or threads_lost_at_stop(capacity) else JOIN_TIMEOUT))
    # Children of isolated entrypoints stop before the handler threads waiting for
    # them are let go: killed at once when jobs were handed back (their outcomes
    # no longer count), else once their jobs are done.
    stack.push(lambda: close_isolated(registry, immediate=bool(held.abandoned)))
    watchdog = None
    if any(reg.timeout is not None for reg in registry.values()):
        # Runs until the final writes are done: a deadline passing during the
        # shutdown wait still records its job.
        watchdog = Watchdog().start()
        stack.push(watchdog.stop)
    return JobRunner(
        registry, resources=resources, tracer=tracer, held=held, control=control,
        capacity=capacity, progress=progress, pool=pool, loop=loop, watchdog=watchdog,
        recorder=recorder, hand_backs=hand_backs, async_limit=opts.concurrency,
    )


def threads_lost_at_stop(capacity: Capacity | None) -> int:
    """Handler threads still held by timed-out handlers (logged): a stop does not
    wait for them."""
    lost = 0 if capacity is None else capacity.lost()
    if lost:
        logger.warning(
            "%d handler threads still run timed-out handlers; not waiting for them "
            "(daemon threads: they end with the process)", lost,
        )
    return lost


async def _traced(tracer: TracingProtocol, job: Job, coroutine: Awaitable[Any]) -> Any:
    # Entered inside the event loop's task, so the span is current for the handler.
    with process_span(tracer, job):
        return await coroutine

