"""``QueueManager``: the worker. Claims jobs, runs handlers in threads (or on the
event-loop thread for ``async def``), records outcomes, and shuts down without
losing a job.

Threads (all named ``pgqueue_sync-*``): the caller of :meth:`QueueManager.run`
is the dispatcher; ``-runner-N`` run handlers; ``-listener`` receives NOTIFY;
``-flusher`` writes outcomes; ``-heartbeat`` keeps running jobs alive;
``-health`` probes the listener; ``-aggregator`` folds logs into statistics;
``-event-loop`` runs coroutines when an async handler is registered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import timedelta
from types import FrameType
from typing import Any, TypeVar

from . import options
from .aio import EventLoopThread
from .buffers import CompletionBuffer, Heartbeats, Retry
from .cancellation import CancellationToken, Context, JobCancelled
from .capacity import Capacity
from .errors import (
    ConfigurationError,
    DatabaseError,
    FailingListenerError,
    PgqException,
    SchemaError,
)
from .executors import (
    AbstractEntrypointExecutor,
    EntrypointExecutor,
    EntrypointExecutorParameters,
    accepts_context,
    retry_request,
)
from .listener import Listener
from .models import (
    AnyEvent,
    CancellationEvent,
    HealthCheckEvent,
    Job,
    TableChangedEvent,
    TracebackRecord,
    failure_record,
)
from .queries import EntrypointExecutionParameter, Queries
from .ratelimit import TokenBucket
from .results import StoredResult, encode_result, missing_table_problem
from .threads import JOIN_TIMEOUT, HandlerPool, Ticker
from .tracing import TracingProtocol, get_tracer, is_active, process_span
from .types import JOB_STATUS, Channel, JobId, OnFailure, QueueExecutionMode, QueueManagerId

logger = logging.getLogger(__name__)

#: How often the shutdown watcher checks whether run() has ended (seconds);
#: a set shutdown event is seen at once.
SHUTDOWN_WATCH_INTERVAL = 0.5

F = TypeVar("F", bound=Callable[..., Any])
ExecutorFactory = Callable[[EntrypointExecutorParameters], AbstractEntrypointExecutor]


@dataclasses.dataclass
class _Registration:
    executor: AbstractEntrypointExecutor
    on_failure: OnFailure
    claim: EntrypointExecutionParameter
    bucket: TokenBucket | None
    store_result: bool | None = None  # None: the worker's store_results


class _ShutdownNow(BaseException):
    """Raised in the dispatcher by a second signal.

    A BaseException so no ``except Exception`` between the signal and
    :meth:`QueueManager.run` can swallow it.
    """


class QueueManager:
    """A worker over :class:`Queries`; register entrypoints, then call :meth:`run`.

    ``resources`` is shared by reference with every job's :class:`Context`.
    ``shutdown`` is a :class:`threading.Event`: set it from any thread (or a
    handler) to stop :meth:`run` gracefully. ``store_results=True`` stores
    every handler's return value in the opt-in results table (entrypoints can
    override it with ``store_result``; see :mod:`pgqueue_sync.results`).
    """

    def __init__(
        self,
        queries: Queries,
        channel: Channel | str | None = None,
        *,
        resources: MutableMapping[str, Any] | None = None,
        shutdown: threading.Event | None = None,
        tracer: TracingProtocol | None = None,
        store_results: bool = False,
    ) -> None:
        self.queries = queries
        self.store_results = store_results
        # None: the process-wide tracer (pgqueue_sync.tracing), else the queries' own.
        self.tracer = tracer if tracer is not None else getattr(queries, "tracer", None)
        self.channel = Channel(channel or queries.settings.channel)
        self.resources: MutableMapping[str, Any] = {} if resources is None else resources
        self.shutdown = shutdown or threading.Event()
        self.queue_manager_id = QueueManagerId(uuid.uuid4())
        self.entrypoint_registry: dict[str, _Registration] = {}
        self.job_context: dict[JobId, Context] = {}
        self.jobs_logged = 0
        # A plain Lock on the hot path; the Condition only serves the final wait.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._claimed: dict[int, tuple[float, float]] = {}  # job id -> (claimed at, beat period)
        self._beat_period: dict[str, float] = {}
        self._wake = threading.Event()
        self._abandoned: set[int] = set()
        self._pending_probes: dict[uuid.UUID, threading.Event] = {}
        self._listener_error: FailingListenerError | None = None
        self._drained = False
        self._stopping = False
        self._backlog = threading.Event()
        self._lane_wake = threading.Event()
        self._rate_lock = threading.Lock()
        self._capacity: Capacity | None = None
        self._dispatched_since_aggregation = False
        self._loop: EventLoopThread | None = None
        self._buffer: CompletionBuffer | None = None
        self._heartbeats: Heartbeats | None = None
        self._pool: HandlerPool | None = None

    # -- registration ----------------------------------------------------------------------

    def entrypoint(
        self,
        name: str,
        *,
        concurrency_limit: int = 0,
        accepts_context: bool | None = None,
        on_failure: OnFailure = "delete",
        executor_factory: ExecutorFactory | None = None,
        serialized_dispatch: bool = False,
        requests_per_second: float = float("inf"),
        retry_timer: timedelta | float | None = None,
        store_result: bool | None = None,
    ) -> Callable[[F], F]:
        """Register a ``def`` or ``async def`` handler for jobs of ``name``.

        Example::

            @qm.entrypoint("send_email", concurrency_limit=4)
            def send_email(job: Job) -> None: ...

        ``concurrency_limit`` caps running jobs fleet-wide (every worker must
        register the same limit); ``serialized_dispatch=True`` means a limit of 1.
        ``requests_per_second`` is a token bucket in *this* worker.
        ``retry_timer`` is this entrypoint's stale-job timeout (default: the
        worker's ``heartbeat_timeout``). ``store_result`` stores the handler's
        JSON-serialisable return value (and failures) in the results table;
        ``None`` follows the worker's ``store_results``. Raises
        :class:`ConfigurationError`.
        """

        def register(func: F) -> F:
            options.check_entrypoint_name(name, self.entrypoint_registry)
            limit = options.concurrency_limit(concurrency_limit, serialized_dispatch)
            parameters = EntrypointExecutorParameters(
                concurrency_limit=limit,
                func=func,
                accepts_context=_accepts(func, accepts_context),
                on_failure=options.on_failure(on_failure),
            )
            executor = (executor_factory or EntrypointExecutor)(parameters)
            stale = options.optional_duration("retry_timer", retry_timer)
            self._register(name, executor, limit, requests_per_second, stale)
            self.entrypoint_registry[name].store_result = store_result
            return func

        return register

    def register_executor(self, name: str, executor: AbstractEntrypointExecutor) -> None:
        """Register a ready-made executor for ``name``."""
        options.check_entrypoint_name(name, self.entrypoint_registry)
        limit = executor.parameters.concurrency_limit
        self._register(name, executor, limit, float("inf"), None)

    def _register(
        self,
        name: str,
        executor: AbstractEntrypointExecutor,
        limit: int,
        rate: float,
        stale_after: timedelta | None,
    ) -> None:
        bucket = options.rate_bucket(rate)
        claim = EntrypointExecutionParameter(concurrency_limit=limit, stale_after=stale_after)
        self.entrypoint_registry[name] = _Registration(
            executor, executor.parameters.on_failure, claim, bucket
        )

    def get_context(self, job_id: int) -> Context:
        """The context of a job running in this worker; :class:`PgqException` if none."""
        try:
            return self.job_context[JobId(job_id)]
        except KeyError:
            raise PgqException(f"job {job_id} is not running in this worker") from None

    # -- run -------------------------------------------------------------------------------

    def run(
        self,
        *,
        dequeue_timeout: timedelta | float = options.DEQUEUE_TIMEOUT,
        batch_size: int = options.BATCH_SIZE,
        mode: QueueExecutionMode | str = QueueExecutionMode.continuous,
        max_concurrent_tasks: int | None = None,
        shutdown_on_listener_failure: bool = False,
        heartbeat_timeout: timedelta | float = options.HEARTBEAT_TIMEOUT,
        log_aggregation_interval: timedelta | float | None = options.LOG_AGGREGATION_INTERVAL,
        concurrency: int | None = None,
        shutdown_timeout: timedelta | float | None = None,
    ) -> None:
        """Process jobs until :attr:`shutdown` is set (or, in drain mode, until idle).

        Blocks the calling thread. Installs SIGINT/SIGTERM handlers only when
        called from the main thread: the first signal stops claiming and lets
        running jobs finish within ``shutdown_timeout`` (``None``: wait for
        them); jobs still running then, or at a second signal, are returned
        to the queue at once. Raises :class:`ConfigurationError` for invalid
        arguments before touching the database, :class:`SchemaError` when the
        schema is missing, and :class:`FailingListenerError` when the listener
        fails its health check and ``shutdown_on_listener_failure`` is set.
        """
        opts = options.RunOptions.build(
            dequeue_timeout=dequeue_timeout,
            batch_size=batch_size,
            mode=mode,
            max_concurrent_tasks=max_concurrent_tasks,
            shutdown_on_listener_failure=shutdown_on_listener_failure,
            heartbeat_timeout=heartbeat_timeout,
            log_aggregation_interval=log_aggregation_interval,
            concurrency=concurrency,
            shutdown_timeout=shutdown_timeout,
        )
        if not self.entrypoint_registry:
            raise ConfigurationError("no entrypoints registered; decorate a handler first")
        self.verify_structure()
        with _SignalHandlers(self._on_signal):
            self._run(opts)
        if self._listener_error is not None:
            raise self._listener_error

    def verify_structure(self) -> None:
        """Raise :class:`SchemaError` unless the tables, columns and indexes a 1.6 worker
        needs exist, and the results table when some entrypoint stores results."""
        stores = any(self._stores(reg) for reg in self.entrypoint_registry.values())
        if _in_process(self.queries.driver):
            if stores:
                raise ConfigurationError(
                    "the in-memory adapter cannot store job results; drop store_results"
                )
            return  # the in-memory adapter has no catalog to check
        from .schema import Schema

        problems = Schema(self.queries.driver, self.queries.settings).verify("present")
        if problems:
            raise SchemaError(
                "the queue schema is missing or outdated: " + "; ".join(problems)
                + " (run 'pgq-sync install' or 'pgq-sync upgrade')"
            )
        if stores:
            problem = missing_table_problem(self.queries.driver, self.queries.settings)
            if problem:
                raise SchemaError(problem)

    def _stores(self, reg: _Registration) -> bool:
        return self.store_results if reg.store_result is None else reg.store_result

    def _run(self, opts: options.RunOptions) -> None:
        self.shutdown_requested_twice = False
        stack = _Lifecycle()
        try:
            self._start(opts, stack)
            logger.info(
                "worker %s started: entrypoints %s, concurrency %d",
                self.queue_manager_id, sorted(self.entrypoint_registry), opts.concurrency,
            )
            self._dispatch_loop(opts)
            self._wait_for_running(opts.shutdown_timeout)
        except _ShutdownNow:
            logger.warning("second signal: stopping now")
        finally:
            self._finalize(stack)

    def _finalize(self, stack: _Lifecycle) -> None:
        try:
            self._release_unfinished()
            stack.close()
        except _ShutdownNow:
            # Another signal while the final writes run (e.g. blocked on a lock):
            # leave now. Unwritten outcomes leave their jobs picked; they are
            # re-run once their heartbeat is stale (at-least-once, nothing lost).
            logger.warning("signal during the final writes: stopping without them")
        logger.info("worker %s stopped", self.queue_manager_id)

    def _start(self, opts: options.RunOptions, stack: _Lifecycle) -> None:
        if any(reg.executor.is_async for reg in self.entrypoint_registry.values()):
            self._loop = EventLoopThread().start()
            stack.push(self._loop.close)
        # One claimer keeps starts in claim (priority) order; concurrent lanes may
        # start jobs claimed at the same moment in either order, which a serial
        # worker (concurrency 1) would notice.
        serial = opts.max_concurrent_tasks is not None or opts.concurrency == 1
        lanes = 1 if serial else opts.claim_lanes
        self._capacity = Capacity(opts.concurrency, opts.batch_size, lanes=lanes)
        pool = self._pool = HandlerPool(opts.concurrency)
        # Threads of handed-back jobs may never return; don't wait for them.
        stack.push(lambda: pool.stop(0.0 if self._abandoned else JOIN_TIMEOUT))
        # Outcomes normally ride along with the next claim; the flusher writes them
        # on its ~100 ms timer when no claim comes, or once a few batches pile up.
        self._buffer = CompletionBuffer(
            self.queries, max_size=opts.batch_size * options.OUTCOME_BATCHES_BEFORE_FLUSH,
            on_written=self._on_written,
        )
        self._buffer.start()
        stack.push(self._buffer.stop)
        self._beat_period = {
            name: (reg.claim.stale_after or opts.heartbeat_timeout).total_seconds() / 2
            for name, reg in self.entrypoint_registry.items()
        }
        tick = self._shortest_stale(opts).total_seconds() / 8
        self._heartbeats = Heartbeats(self.queries, self._running_snapshot, tick=tick)
        self._heartbeats.start()
        stack.push(self._heartbeats.stop)
        stack.push(self._start_listener())
        stack.push(self._watch_shutdown())
        health = Ticker(lambda: self._probe_listener(opts), options.HEALTH_CHECK_INTERVAL,
                        name="pgqueue_sync-health", jitter=0.0).start()
        stack.push(health.stop)
        # Extra claim lanes, not with a budget: it is counted in SQL, and two
        # concurrent claims could each see room for the same jobs.
        extra = [
            threading.Thread(target=self._extra_lane, args=(opts,),
                             name=f"pgqueue_sync-claimer-{i}", daemon=True)
            for i in range(1, lanes)
        ]
        for lane in extra:
            lane.start()
        stack.push(lambda: self._stop_lanes(extra))
        if opts.log_aggregation_interval:
            aggregator = Ticker(self._aggregate, opts.log_aggregation_interval.total_seconds(),
                                name="pgqueue_sync-aggregator").start()
            stack.push(aggregator.stop)

    def _watch_shutdown(self) -> Callable[[], None]:
        """Turn ``shutdown.set()`` from any thread into wake-ups of every waiting loop.

        ``shutdown`` may be any ``threading.Event`` (one can be passed in), and
        an Event cannot notify anyone; without this, an idle dispatcher would
        notice it only after ``dequeue_timeout``.
        """
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                if self.shutdown.wait(SHUTDOWN_WATCH_INTERVAL):
                    for event in (self._wake, self._lane_wake, self._backlog):
                        event.set()
                    return

        watcher = threading.Thread(target=watch, name="pgqueue_sync-shutdown-watch", daemon=True)
        watcher.start()

        def stop() -> None:
            done.set()
            watcher.join(JOIN_TIMEOUT)

        return stop

    def _shortest_stale(self, opts: options.RunOptions) -> timedelta:
        timeouts = [reg.claim.stale_after for reg in self.entrypoint_registry.values()]
        return min([opts.heartbeat_timeout, *(t for t in timeouts if t is not None)])

    def _start_listener(self) -> Callable[[], None]:
        driver = self.queries.driver
        if _in_process(driver):
            subscribe: Callable[[Callable[[str], None]], Callable[[], None]]
            subscribe = driver.add_listener  # type: ignore[attr-defined]
            return subscribe(self._on_payload)
        if not hasattr(driver, "new_connection"):
            raise ConfigurationError(
                f"{type(driver).__name__} cannot open a LISTEN connection; "
                "use SyncPsycopgDriver or SyncPsycopgPoolDriver for workers"
            )
        listener = Listener(
            driver.new_connection,
            self.channel,
            on_event=self._on_event,
            on_reconnect=self._wake.set,
        )
        listener.start()
        return listener.stop

    # -- the dispatch loop -----------------------------------------------------------------

    def _dispatch_loop(self, opts: options.RunOptions) -> None:
        backoff = options.DATABASE_RETRY_INITIAL
        while not self.shutdown.is_set():
            try:
                self._dispatch_once(opts)
                backoff = options.DATABASE_RETRY_INITIAL
            except DatabaseError as exc:
                # The worker outlives a database restart: back off, then poll again.
                logger.warning("database error in the dispatcher (%s); retrying in %.1fs",
                               exc, backoff)
                self.shutdown.wait(backoff)
                backoff = min(backoff * 2, options.DATABASE_RETRY_MAX)
            if self._drained:
                return

    def _dispatch_once(self, opts: options.RunOptions) -> None:
        """Claim what fits, then wait for a wake-up or the poll interval."""
        self._wake.clear()
        if self._fill(opts) is None:  # local capacity full: wait for a slot to free up
            self._wake.wait(opts.dequeue_timeout.total_seconds())
            return
        # Order matters: a finishing job buffers its outcome before it stops
        # counting as running, and the probe runs last, so a retry cannot slip
        # between the three reads and end drain mode early.
        busy = self._running() > 0
        writes_pending = self._buffer is not None and self._buffer.pending() > 0
        state = self.queries.poll_state(self.entrypoint_registry)
        if opts.mode is QueueExecutionMode.drain and not (busy or writes_pending or state.queued):
            logger.info("drain mode: no work left")
            self._drained = True
            self.shutdown.set()  # as PgQueuer does once drained
            return
        queued = state.queued or writes_pending
        self._wake.wait(self._idle_wait(opts, state.eligible, state.eta, queued))

    def _fill(self, opts: options.RunOptions) -> bool | None:
        """Claim and start jobs while there is room; None when local capacity is full."""
        assert self._capacity is not None
        while not self.shutdown.is_set():
            wanted = self._capacity.reserve()
            if wanted == 0:
                return None
            claimed = 0
            try:
                jobs = self._claim(opts, wanted)
                claimed = len(jobs)
            finally:
                self._capacity.settle(wanted, claimed)
            for job in jobs:
                self._dispatch(job)
            if claimed < wanted:
                self._backlog.clear()
                return True
            self._backlog.set()
        return True

    def _stop_lanes(self, lanes: list[threading.Thread]) -> None:
        self._backlog.set()  # wake them; they see shutdown and leave
        self._lane_wake.set()
        for lane in lanes:
            lane.join(JOIN_TIMEOUT)

    def _extra_lane(self, opts: options.RunOptions) -> None:
        """An extra claimer, active only while a backlog exists, so claim round trips
        overlap; idle polling stays with the dispatcher."""
        backoff = options.DATABASE_RETRY_INITIAL
        while not self.shutdown.is_set() and not self._drained:
            if not self._backlog.wait(options.LANE_IDLE_WAIT):
                continue
            self._lane_wake.clear()
            try:
                if self._fill(opts) is None:
                    self._lane_wake.wait(options.LANE_IDLE_WAIT)
                backoff = options.DATABASE_RETRY_INITIAL
            except DatabaseError as exc:
                logger.debug("second claim lane: %s; backing off %.1fs", exc, backoff)
                self.shutdown.wait(backoff)
                backoff = min(backoff * 2, options.DATABASE_RETRY_MAX)

    def _claim(self, opts: options.RunOptions, wanted: int) -> list[Job]:
        open_eps, rated = self._claimable()
        jobs: list[Job] = []
        if open_eps:
            jobs += self._dequeue(opts, wanted, open_eps)
        if rated:
            # Buckets are read then spent: one lane at a time, or both could overshoot.
            with self._rate_lock:
                jobs += self._claim_rated(opts, wanted - len(jobs))
        return jobs

    def _claim_rated(self, opts: options.RunOptions, wanted: int) -> list[Job]:
        jobs: list[Job] = []
        for name, reg in self.entrypoint_registry.items():
            if reg.bucket is None or len(jobs) >= wanted:
                continue
            tokens = reg.bucket.available()
            if tokens > 0:
                claimed = self._dequeue(opts, min(wanted - len(jobs), tokens), {name: reg.claim})
                reg.bucket.take(len(claimed))
                jobs += claimed
        return jobs

    def _claimable(self) -> tuple[dict[str, EntrypointExecutionParameter], bool]:
        open_eps: dict[str, EntrypointExecutionParameter] = {}
        rated = False
        for name, reg in self.entrypoint_registry.items():
            if reg.bucket is None:
                open_eps[name] = reg.claim
            elif reg.bucket.available() > 0:
                rated = True
        return open_eps, rated

    def _dequeue(
        self, opts: options.RunOptions, batch: int, eps: dict[str, EntrypointExecutionParameter]
    ) -> list[Job]:
        # Outcomes ride along with the claim: one round trip and one commit per cycle.
        assert self._buffer is not None
        finished = self._buffer.take()
        try:
            jobs = self.queries.dequeue(
                batch, eps, self.queue_manager_id, opts.max_concurrent_tasks,
                opts.heartbeat_timeout, completed=finished.outcomes, results=finished.results,
            )
        except BaseException:
            self._buffer.restore(finished)
            raise
        self._buffer.written(finished)
        return jobs

    def _idle_wait(
        self, opts: options.RunOptions, eligible: bool, eta: timedelta | None, queued: bool
    ) -> float:
        # UPDATEs (retries, requeues, seat releases) never notify: poll for them.
        longest = opts.dequeue_timeout.total_seconds()
        if eligible:
            wait = options.MIN_DEQUEUE_POLL_INTERVAL
        elif eta is not None:
            wait = min(max(eta.total_seconds(), options.MIN_DEQUEUE_POLL_INTERVAL), longest)
        else:
            wait = options.MIN_DEQUEUE_POLL_INTERVAL if queued else longest
        buckets = [r.bucket for r in self.entrypoint_registry.values() if r.bucket is not None]
        if buckets:
            wait = min(wait, max(min(b.seconds_until_token() for b in buckets), 0.01))
        return wait

    def _running_snapshot(self) -> dict[int, tuple[float, float]]:
        with self._lock:
            return dict(self._claimed)

    def _running(self) -> int:
        with self._lock:
            return len(self.job_context)

    # -- running one job -------------------------------------------------------------------

    def _dispatch(self, job: Job) -> None:
        reg = self.entrypoint_registry[job.entrypoint]
        context = Context(CancellationToken(), self.resources)
        with self._lock:
            rerun = job.id in self.job_context
            if not rerun:
                self.job_context[job.id] = context
                self._claimed[job.id] = (time.monotonic(), self._beat_period[job.entrypoint])
        if rerun:
            # Our own stale re-pick of a job that is still running here.
            assert self._capacity is not None
            self._capacity.finished(None)
            return
        self._dispatched_since_aggregation = True
        assert self._pool is not None
        if reg.executor.is_async:
            self._start_async(job, context, reg)
        else:
            self._pool.submit(self._run_sync, job, context, reg)

    def _run_sync(self, job: Job, context: Context, reg: _Registration) -> None:
        error: BaseException | None = None
        seconds = None
        value = None
        if not context.cancellation.cancelled:
            started = time.monotonic()
            try:
                value = self._execute(job, context, reg)
            except Exception as exc:  # the handler's failure is the job's outcome
                error = exc
            seconds = time.monotonic() - started
        self._finish(job, context, reg, error, cancelled=False, seconds=seconds, value=value)

    def _execute(self, job: Job, context: Context, reg: _Registration) -> Any:
        """Call the executor (for async handlers: make its coroutine) inside the
        tracer's process span, if a tracer is installed."""
        tracer = get_tracer(self.tracer)
        if not is_active(tracer):
            return reg.executor.execute(job, context)
        if reg.executor.is_async:
            return _traced(tracer, job, reg.executor.execute(job, context))
        with process_span(tracer, job):
            return reg.executor.execute(job, context)

    def _start_async(self, job: Job, context: Context, reg: _Registration) -> None:
        assert self._loop is not None
        started = time.monotonic()

        def done(task: asyncio.Task[Any]) -> None:  # on the event-loop thread
            self._finish_async(job, context, reg, task, time.monotonic() - started)

        cancel = self._loop.spawn(self._execute(job, context, reg), done)
        context.cancellation.add_callback(cancel)

    def _finish_async(
        self,
        job: Job,
        context: Context,
        reg: _Registration,
        task: asyncio.Task[Any],
        seconds: float,
    ) -> None:
        cancelled = task.cancelled()
        error = None if cancelled else task.exception()
        value = None if cancelled or error is not None else task.result()
        self._finish(job, context, reg, error, cancelled=cancelled, seconds=seconds, value=value)

    def _finish(
        self,
        job: Job,
        context: Context,
        reg: _Registration,
        error: BaseException | None,
        *,
        cancelled: bool,
        seconds: float | None,
        value: Any = None,
    ) -> None:
        assert self._capacity is not None
        # _abandoned only grows, at shutdown; a membership test needs no lock.
        if job.id in self._abandoned:
            logger.warning("job %d finished after it was handed back to the queue", job.id)
        else:
            # Buffer the outcome before the job stops counting as running, so drain
            # mode never sees "nothing running, nothing pending" in between.
            self._record(job, context, reg, error, cancelled, value)
        with self._lock:
            del self.job_context[job.id]
            del self._claimed[job.id]
            if self._stopping:  # only _wait_for_running waits on the condition
                self._idle.notify_all()
        self._capacity.finished(seconds)
        _set(self._wake)
        _set(self._lane_wake)

    def _record(
        self,
        job: Job,
        context: Context,
        reg: _Registration,
        error: BaseException | None,
        cancelled: bool,
        value: Any = None,
    ) -> None:
        assert self._buffer is not None
        # Results (opt-in) ride in the same buffered write as the outcome; a
        # failure's result row takes its error from the traceback record.
        store = self._stores(reg)
        if cancelled or isinstance(error, JobCancelled) or (
            error is None and context.cancellation.cancelled
        ):
            self._buffer.add(job, "canceled", None, StoredResult(job) if store else None)
            return
        if error is None:
            self._buffer.add(job, "successful", None, encode_result(job, value) if store else None)
            return
        retry = retry_request(error)
        fallback: JOB_STATUS = "failed" if reg.on_failure == "hold" else "exception"
        if retry is not None:
            record = self._traceback(job, error, attempt=job.attempts,
                                     retry_delay=str(retry.delay), reason=retry.reason)
            self._buffer.add_retry(Retry(job, retry.delay, record, fallback, store))
            return
        logger.error("job %d (%r) failed", job.id, job.entrypoint, exc_info=error)
        stored = StoredResult(job) if store else None
        self._buffer.add(job, fallback, self._traceback(job, error), stored)

    def _traceback(self, job: Job, error: BaseException, **extra: Any) -> TracebackRecord:
        return failure_record(job, error, self.queue_manager_id, **extra)

    def _on_written(self, jobs: list[Job]) -> None:
        self.jobs_logged += len(jobs)
        # A written outcome may free a fleet-wide seat: claim again.
        self._wake.set()

    # -- events ----------------------------------------------------------------------------

    def _on_payload(self, payload: str) -> None:
        from .models import parse_event

        event = parse_event(payload)
        if event is not None:
            self._on_event(event)

    def _on_event(self, event: AnyEvent) -> None:
        if isinstance(event, TableChangedEvent):
            if event.operation == "insert" or event.operation == "delete":
                self._wake.set()
        elif isinstance(event, CancellationEvent):
            self._cancel_local(event.ids)
        elif isinstance(event, HealthCheckEvent):
            probe = self._pending_probes.pop(event.id, None)
            if probe is not None:
                probe.set()

    def _cancel_local(self, ids: list[JobId]) -> None:
        with self._lock:
            contexts = [self.job_context[i] for i in ids if i in self.job_context]
        for context in contexts:
            context.cancellation.cancel()

    def listener_healthy(self, timeout: timedelta | float = options.HEALTH_CHECK_TIMEOUT) -> bool:
        """Send a probe on the channel and wait for this worker's listener to receive it."""
        seconds = options.duration("timeout", timeout).total_seconds()
        probe_id, received = uuid.uuid4(), threading.Event()
        self._pending_probes[probe_id] = received
        try:
            self.queries.notify_health_check(probe_id)
            return received.wait(seconds)
        finally:
            self._pending_probes.pop(probe_id, None)

    def healthy(self, timeout: timedelta | float = options.HEALTH_CHECK_TIMEOUT) -> bool:
        """For liveness probes: :meth:`run` is running, its heartbeat thread is
        alive and its listener echoes a probe within ``timeout``. Blocks up to
        ``timeout``; thread-safe."""
        beats = self._heartbeats
        if beats is None or not beats.is_alive() or self.shutdown.is_set():
            return False
        return self.listener_healthy(timeout)

    def _probe_listener(self, opts: options.RunOptions) -> None:
        if self.listener_healthy(options.HEALTH_CHECK_TIMEOUT):
            return
        logger.warning("listener health check failed: no echo within %.1fs",
                       options.HEALTH_CHECK_TIMEOUT.total_seconds())
        if opts.shutdown_on_listener_failure and opts.mode is not QueueExecutionMode.drain:
            self._listener_error = FailingListenerError()
            self.shutdown.set()
            self._wake.set()

    def _aggregate(self) -> None:
        if self._dispatched_since_aggregation:
            self._dispatched_since_aggregation = False
            self.queries.aggregate_logs()

    # -- shutdown --------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if self.shutdown.is_set():
            self.shutdown_requested_twice = True
            raise _ShutdownNow()
        logger.info("received %s: finishing running jobs", signal.Signals(signum).name)
        self.shutdown.set()
        self._wake.set()

    def _wait_for_running(self, timeout: timedelta | None) -> None:
        deadline = None if timeout is None else timeout.total_seconds()
        with self._idle:
            self._stopping = True
            self._idle.wait_for(lambda: not self.job_context, deadline)

    def _release_unfinished(self) -> None:
        with self._lock:
            running = dict(self.job_context)
            self._abandoned.update(running)
        for context in running.values():
            context.cancellation.cancel()
        if not running:
            return
        reason = PgqException("the worker shut down before the job finished")
        records = {
            job_id: TracebackRecord.from_exception(
                reason, job_id=job_id,
                additional_context={"queue_manager_id": str(self.queue_manager_id),
                                    "reason": "shutdown"},
            )
            for job_id in running
        }
        try:
            released = self.queries.release_jobs(records, self.queue_manager_id)
        except PgqException as exc:
            logger.error("could not hand %d running jobs back (%s); they will be re-picked "
                         "once their heartbeat is stale", len(running), exc)
            return
        logger.warning("handed %d unfinished jobs back to the queue: %s",
                       len(released), sorted(released))


async def _traced(tracer: TracingProtocol, job: Job, coroutine: Awaitable[Any]) -> Any:
    # Entered inside the event loop's task, so the span is current for the handler.
    with process_span(tracer, job):
        return await coroutine


def _in_process(driver: object) -> bool:
    """True for the in-memory driver, which fans notifications out in-process."""
    return hasattr(driver, "add_listener")


def _set(event: threading.Event) -> None:
    # Event.set() takes a lock and notifies even when already set; skip that per job.
    if not event.is_set():
        event.set()


def _accepts(func: Callable[..., Any], given: bool | None) -> bool:
    return accepts_context(func) if given is None else given


class _Lifecycle:
    """Stop callbacks, run in reverse order; one failure does not skip the rest."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], object]] = []

    def push(self, stop: Callable[[], object]) -> None:
        self._stops.append(stop)

    def close(self) -> None:
        while self._stops:
            stop = self._stops.pop()
            try:
                stop()
            except Exception:  # keep stopping the others
                logger.exception("error while stopping %r", stop)


class _SignalHandlers:
    """Routes SIGINT/SIGTERM to a callback while active, on the main thread only."""

    def __init__(self, callback: Callable[[int], None]) -> None:
        self._callback = callback
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalHandlers:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._callback(signum)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
