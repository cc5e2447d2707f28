"""``QueueManager``: the worker. Claims jobs, runs handlers in threads (or on the
event-loop thread for ``async def``), records outcomes, and shuts down without
losing a job.

What keeps a job from being lost (see docs/reliability.md):

* whatever a handler does (``sys.exit()``, ``KeyboardInterrupt``, an exception
  that cannot be printed), its job gets exactly one outcome: bookkeeping runs
  in ``finally`` and every ``BaseException`` is that job's failure;
* a job keeps its heartbeat until its outcome (or retry) is written, and every
  write of ours only touches rows this worker still holds, so a write re-sent
  after a lost reply changes nothing;
* every exit path sets one internal stop event (``_halt``); shutdown joins the
  claim lanes, waits for handlers, hands unfinished jobs back, writes the
  outcomes and only then stops heartbeats.

Threads (all named ``pgqueue_sync-*``): the caller of :meth:`QueueManager.run`
is the dispatcher; ``-runner-N`` run handlers; ``-listener`` receives NOTIFY;
``-flusher`` writes outcomes; ``-heartbeat`` keeps running jobs alive;
``-health`` probes the listener; ``-aggregator`` folds logs into statistics;
``-pruner`` keeps the log, statistics and results within their retention windows;
``-event-loop`` runs coroutines when an async handler is registered.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from .. import options
from ..backoff import DatabaseRetry, needs_a_fix
from ..drivers.base import require_autocommit
from ..drivers.psycopg import connect, describe_conninfo, warn_if_pure_python
from ..errors import (
    ConfigurationError,
    ConnectionFailed,
    DatabaseError,
    FailingListenerError,
    PgqException,
)
from ..models import (
    AnyEvent,
    CancellationEvent,
    HealthCheckEvent,
    Job,
    TableChangedEvent,
    TracebackRecord,
    failure_record,
)
from ..ops import label_worker_session
from ..preflight import in_process, verify_queue_schema
from ..queries import EntrypointExecutionParameter, PollState, Queries
from ..results import StoredResult, encode_result
from ..signals import StopRequest, StopSignals
from ..tracing import TracingProtocol, get_tracer, is_active, process_span
from ..types import (
    JOB_STATUS,
    Channel,
    JobId,
    OnFailure,
    QueueExecutionMode,
    QueueManagerId,
)
from . import retention, upkeep
from .aio import EscapedBaseException, EventLoopThread
from .buffers import Batch, CompletionBuffer, Finished, Heartbeats
from .cancellation import CancellationToken, Context, JobCancelled
from .capacity import Capacity
from .executors import (
    AbstractEntrypointExecutor,
    EntrypointExecutor,
    EntrypointExecutorParameters,
    EntrypointKeywords,
    accepts_context,
    retry_request,
)
from .isolation import ProcessIsolation
from .listener import Listener
from .ratelimit import TokenBucket, rate_bucket
from .retention import Pruner
from .threads import IDLE, JOIN_TIMEOUT, HandlerPool, Idle, Ticker
from .timeouts import EXPIRY_BOOKKEEPING_WAIT, TimedRun, Watchdog, stack_traceback
from .upkeep import QueueUpkeep

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger(__name__)

#: How often the shutdown watcher checks whether run() has ended (seconds);
#: a set shutdown event is seen at once.
SHUTDOWN_WATCH_INTERVAL = 0.5
#: Slice of the main thread's final waits, so a second signal is acted on promptly.
FINAL_WAIT_SLICE = 0.1
#: How long shutdown waits for threads whose work needs no finishing (seconds).
QUICK_JOIN_TIMEOUT = 1.0
#: What a failed connect of the listener's own DSN (``listen_dsn``) tells the user to check.
LISTEN_DSN_HINT = "check --listen-dsn / PGQUEUE_SYNC_LISTEN_DSN and that the server is running"

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass
class _Registration:
    executor: AbstractEntrypointExecutor
    on_failure: OnFailure
    claim: EntrypointExecutionParameter
    bucket: TokenBucket | None
    store_result: bool | None = None  # None: the worker's store_results
    timeout: timedelta | None = None  # entrypoint(timeout=...): None, no timeout


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
        #: How many times the dispatcher has entered its idle wait (for tests and
        #: probes: "the worker is idle, waiting for a notification").
        self.idle_waits = 0
        # A plain Lock on the hot path; the Condition only serves the final wait.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        # Jobs held by this worker: claimed and not yet recorded (a finished job
        # stays until its outcome is written); heartbeats and write guards read it.
        self._claimed: dict[int, _Held] = {}
        self._beat_period: dict[str, float] = {}
        self._wake = threading.Event()
        self._abandoned: set[int] = set()
        self._pending_probes: dict[uuid.UUID, threading.Event] = {}
        self._listener_error: FailingListenerError | None = None
        self._listener: Listener | None = None
        # Set while the listener is known to hear this worker's notifications (its
        # probe echoed); clear, the dispatcher polls every poll_interval instead.
        self._listener_verified = threading.Event()
        self._listener_failures = 0  # failed probes in a row
        self._warned_deaf_listener = False
        self._listening = True  # False with poll_only: no listener at all
        self._health: Ticker | None = None
        self._drained = False
        self._stopping = False
        # One internal stop event for every exit path (shutdown, drain, errors);
        # the user's ``shutdown`` feeds it but is never the only thing to watch.
        self._halt = threading.Event()
        # A second signal: the main thread stops its final waits.
        self._stop_now = threading.Event()
        self._stop_signals = StopSignals(self._on_stop_signal, stopping=self.shutdown.is_set)
        # Set by a listener reconnect (or a halt): ends the dispatcher's backoff early.
        self._recovered = threading.Event()
        self._fatal: BaseException | None = None
        self._handing_back = False
        self._lanes: list[threading.Thread] = []
        self._claimers: list[threading.Thread] = []
        self._unstarted: set[JobId] = set()  # claimed, then not started at shutdown
        # Async jobs run at most ``concurrency`` at once; the rest wait here.
        self._async_limit = options.CONCURRENCY
        self._async_running = 0
        self._async_waiting: collections.deque[tuple[Job, Context, _Registration]] = (
            collections.deque()
        )
        self.shutdown_requested_twice = False
        self._backlog = threading.Event()
        self._lane_wake = threading.Event()
        self._rate_lock = threading.Lock()
        self._capacity: Capacity | None = None
        self._dispatched_since_aggregation = False
        # time.monotonic() from which a claim also looks for stale picked jobs.
        self._next_stale_check = 0.0
        #: The queue table's upkeep while run() runs (None before, or when turned off).
        self.upkeep: QueueUpkeep | None = None
        #: The retention pruner while run() runs (None before, or with every window off).
        self.pruner: Pruner | None = None
        self._loop: EventLoopThread | None = None
        self._buffer: CompletionBuffer | None = None
        self._heartbeats: Heartbeats | None = None
        self._pool: HandlerPool | None = None
        self._watchdog: Watchdog | None = None  # only when an entrypoint has a timeout
        self._isolated: list[ProcessIsolation] = []  # entrypoint(isolation="process")
        #: Called after each job ends (in the thread that ran it); a returned reason
        #: stops the worker as a shutdown request does: it claims nothing more, lets
        #: running jobs finish and returns from run(). ``pgq-sync run
        #: --max-jobs-per-child/--max-memory-per-child`` recycle a process with it.
        self.after_job: Callable[[], str | None] | None = None

    # -- registration ----------------------------------------------------------------------

    def entrypoint(self, name: str, **given: Unpack[EntrypointKeywords]) -> Callable[[F], F]:
        """Register a ``def`` or ``async def`` handler for jobs of ``name``.

        Takes the keywords of :class:`~pgqueue_sync.worker.executors.EntrypointKeywords`.
        Example::

            @qm.entrypoint("send_email", concurrency_limit=4)
            def send_email(job: Job) -> None: ...

        ``concurrency_limit`` caps running jobs fleet-wide (every worker must
        register the same limit); ``serialized_dispatch=True`` means a limit of 1.
        ``requests_per_second`` is a token bucket in *this* worker.
        ``retry_timer`` is this entrypoint's stale-job timeout (default: the
        worker's ``heartbeat_timeout``). ``store_result`` stores the handler's
        JSON-serialisable return value (and failures) in the results table;
        ``None`` follows the worker's ``store_results``. ``timeout`` (seconds
        or a ``timedelta``) bounds each run: an ``async def`` handler is
        cancelled; a ``def`` handler's cancellation token is set, and the job is
        recorded at once as if the handler had raised :class:`TimeoutError`
        (retried or failed per the executor and ``on_failure``); what the
        handler does afterwards is ignored, and its thread counts as lost
        capacity until it returns (see docs/timeouts.md). ``isolation="process"``
        runs a module-level ``def`` handler (taking the job only) in a pool of
        child processes, ``concurrency_limit`` of them (default: one per CPU),
        so a timeout or a cancellation kills its process and frees the worker's
        thread at once (needs the ``process`` extra; see docs/timeouts.md). Raises
        :class:`ConfigurationError`.
        """
        options.known_keywords("entrypoint()", given, EntrypointKeywords)
        job_timeout = options.job_timeout(given.get("timeout", options.ENTRYPOINT_TIMEOUT))
        where = options.isolation(given.get("isolation", options.ISOLATION))

        def register(func: F) -> F:
            options.check_entrypoint_name(name, self.entrypoint_registry)
            limit = options.concurrency_limit(given.get("concurrency_limit", 0),
                                              given.get("serialized_dispatch", False))
            parameters = EntrypointExecutorParameters(
                concurrency_limit=limit,
                func=func,
                accepts_context=_accepts(func, given.get("accepts_context")),
                on_failure=options.on_failure(given.get("on_failure", "delete")),
            )
            if where == "process":
                self._isolate(name, parameters)
            executor = (given.get("executor_factory") or EntrypointExecutor)(parameters)
            stale = options.optional_duration("retry_timer", given.get("retry_timer"))
            rate = given.get("requests_per_second", float("inf"))
            self._register(name, executor, limit, rate, stale)
            self.entrypoint_registry[name].store_result = given.get("store_result")
            self.entrypoint_registry[name].timeout = job_timeout
            return func

        return register

    def _isolate(self, name: str, parameters: EntrypointExecutorParameters) -> None:
        """Make ``parameters`` call the handler in a child process (isolation="process")."""
        if parameters.accepts_context:
            raise ConfigurationError(
                f"entrypoint {name!r}: isolation='process' handlers take the job only (a "
                f"Context and its resources cannot cross into the child process); drop "
                f"the context parameter or use isolation='thread'"
            )
        processes = parameters.concurrency_limit or options.ISOLATED_PROCESSES
        runner = ProcessIsolation(parameters.func, entrypoint=name, processes=processes)
        self._isolated.append(runner)
        # The executor calls the runner in a handler thread as it would the handler;
        # the runner takes the context to kill the child when the job is cancelled.
        parameters.func, parameters.accepts_context = runner, True

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
        bucket = rate_bucket(rate)
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

    def run(self, **given: Unpack[options.RunKeywords]) -> None:
        """Process jobs until :attr:`shutdown` is set (or, in drain mode, until idle).

        Takes the keywords of :class:`~pgqueue_sync.options.RunKeywords`. Blocks
        the calling thread. Installs SIGINT/SIGTERM handlers only when
        called from the main thread: the first signal stops claiming and lets
        running jobs finish within ``shutdown_timeout`` (``None``: wait for
        them); jobs still running then, or at a second signal, are returned
        to the queue at once. If the database cannot be reached at start, it
        retries for up to ``wait_for_database`` (default 60 s) before raising
        :class:`~pgqueue_sync.errors.ConnectionFailed`; once running, lost
        connections and server restarts are retried with backoff indefinitely.

        Raises :class:`ConfigurationError` for invalid arguments (or a
        connection that is not in autocommit mode) before touching the
        database, :class:`SchemaError` when the schema is missing,
        :class:`~pgqueue_sync.errors.DatabaseError` for an error no retry can
        fix (in drain mode; e.g. a missing grant), and
        :class:`FailingListenerError` when the listener fails its health check
        and ``shutdown_on_listener_failure`` is set.

        ``queue_upkeep`` (default on): where autovacuum does not keep up, a
        worker owning the queue table ANALYZEs and VACUUMs it (see
        :mod:`pgqueue_sync.worker.upkeep`); stale statistics alone slow a deep drain
        down eightfold.

        Notifications (LISTEN) wake an idle worker at once. ``listen_dsn`` opens
        the listener's connection there instead of beside the worker's own, e.g.
        straight to PostgreSQL while the rest goes through PgBouncer in
        transaction mode, where LISTEN receives nothing. ``poll_only`` runs no
        listener and looks for jobs every ``poll_interval`` (default 1 s). When
        the listener fails its self-probe, the worker warns once and polls every
        ``poll_interval`` until it hears again. See docs/pgbouncer.md.

        Retention: about once a minute one worker of the fleet deletes log rows
        older than ``keep_log`` (default 7 days; only aggregated rows of jobs no
        longer in the queue), statistics older than ``keep_statistics`` (30
        days) and stored results older than ``keep_results`` (7 days), in small
        batches; ``None`` keeps that table's rows forever. See docs/retention.md.
        """
        opts = options.RunOptions.build(**given)
        if opts.listen_dsn is not None and in_process(self.queries.driver):
            raise ConfigurationError(
                "listen_dsn has no use with the in-memory adapter (its notifications never "
                "leave the process); drop it"
            )
        if not self.entrypoint_registry:
            raise ConfigurationError("no entrypoints registered; decorate a handler first")
        require_autocommit(self.queries.driver, "worker")
        warn_if_pure_python()
        self._reset()
        with self._stop_signals.installed():
            if not self._await_database(opts.wait_for_database):
                return  # asked to stop while waiting
            self._run(opts)
        if self._fatal is not None:
            raise self._fatal
        if self._listener_error is not None:
            raise self._listener_error

    def _reset(self) -> None:
        # run() may be called again on the same worker.
        for event in (self._halt, self._stop_now, self._recovered):
            event.clear()
        if self._drained:
            # The last run set shutdown itself on draining (as PgQueuer does): a
            # later run (a script or cron job draining again) starts afresh
            # instead of stopping at once with the new jobs left queued. A
            # shutdown set by a caller or a signal is left alone.
            self.shutdown.clear()
        self._stop_signals.reset()
        self._next_stale_check = 0.0
        self._fatal = None
        self._listener_error = None
        self._lanes = []
        self._claimers = []
        self._unstarted.clear()
        self._async_running = 0
        self._async_waiting.clear()
        self._drained = self._stopping = self._handing_back = False
        self.shutdown_requested_twice = False
        self._abandoned.clear()
        self._listener_verified.clear()
        self._listener_failures = 0
        self._warned_deaf_listener = False

    def _await_database(self, patience: timedelta) -> bool:
        """Check the schema, retrying for up to ``patience`` while the database is
        unreachable. False if shutdown was requested meanwhile."""
        deadline = time.monotonic() + patience.total_seconds()

        def hopeless(exc: DatabaseError) -> bool:
            return not exc.transient or time.monotonic() >= deadline

        def wait(delay: float) -> None:
            self.shutdown.wait(min(delay, max(deadline - time.monotonic(), 0.0)))

        def verified(_failed_before: bool) -> bool:
            self.verify_structure()
            return True

        retry = DatabaseRetry("the worker's start (database not reachable)",
                              stop=self.shutdown, log=logger, fatal=hopeless, wait=wait)
        return retry.run(verified) is True

    def verify_structure(self) -> None:
        """Raise :class:`SchemaError` unless the tables, columns and indexes a 1.6 worker
        needs exist, and the results table when some entrypoint stores results."""
        stores = any(self._stores(reg) for reg in self.entrypoint_registry.values())
        verify_queue_schema(self.queries, results=stores)

    def _stores(self, reg: _Registration) -> bool:
        return self.store_results if reg.store_result is None else reg.store_result

    def _run(self, opts: options.RunOptions) -> None:
        stack = _Lifecycle()
        try:
            self._start(opts, stack)
            logger.info(
                "worker %s started: entrypoints %s, concurrency %d",
                self.queue_manager_id, sorted(self.entrypoint_registry), opts.concurrency,
            )
            # The dispatch loop runs in its own thread: the calling (often main)
            # thread only waits on events, so it acts on signals at once even
            # while a claim is stuck in a database call (a pool waiting for a
            # connection, a statement waiting for a lock).
            dispatcher = threading.Thread(target=self._dispatch_thread, args=(opts,),
                                          name="pgqueue_sync-dispatcher", daemon=True)
            self._claimers = [dispatcher, *self._lanes]
            dispatcher.start()
            while dispatcher.is_alive() and not self._halt.is_set():
                dispatcher.join(FINAL_WAIT_SLICE)
        except BaseException as exc:
            if self._fatal is None:
                self._fatal = exc
            raise
        finally:
            self._finalize(opts, stack)

    def _dispatch_thread(self, opts: options.RunOptions) -> None:
        try:
            self._dispatch_loop(opts)
        except BaseException as exc:  # re-raised by run() in the caller's thread
            if self._fatal is None:
                self._fatal = exc
        finally:
            self._halt_all()

    def _finalize(self, opts: options.RunOptions, stack: _Lifecycle) -> None:
        """Stop in one order, whatever ended the run. Each step says why it is where it is."""
        # Every loop (dispatcher, lanes, watcher) sees the halt and stops claiming.
        self._halt_all()
        # Claimers first: a claim still in flight lands in job_context before the
        # wait below, so its jobs are waited for or handed back, never stranded
        # (one that outlives this bounded wait hands its jobs back itself).
        self._stop_claimers()
        self._drop_waiting_async()  # claimed ahead, never started: handed back below
        self._drop_waiting_sync()  # the same for sync jobs waiting for a thread
        if self._fatal is None:
            self._wait_for_running(opts.shutdown_timeout)
        # Hand-backs and outcome writes run while heartbeats still beat, off the
        # main thread, so a second signal can end the wait for them.
        self._final_writes()
        stack.close()
        logger.info("worker %s stopped", self.queue_manager_id)

    def _halt_all(self) -> None:
        self._halt.set()
        for event in (self._wake, self._lane_wake, self._backlog, self._recovered):
            event.set()

    def _final_writes(self) -> None:
        started = self._stop_signals.count
        done = threading.Event()

        def write() -> None:
            try:
                self._release_unfinished()
                if self._buffer is not None:
                    self._buffer.stop()
            except Exception:
                logger.exception("final writes failed; unwritten jobs are re-run once their "
                                 "heartbeat is stale")
            finally:
                done.set()

        writer = threading.Thread(target=write, name="pgqueue_sync-final-writes", daemon=True)
        writer.start()
        deadline = time.monotonic() + options.FINAL_WRITES_TIMEOUT
        while not done.wait(FINAL_WAIT_SLICE):
            if self._stop_signals.count > started:
                # Another signal while the final writes run (e.g. blocked on a lock):
                # leave now. Unwritten outcomes leave their jobs picked; they are
                # re-run once their heartbeat is stale (at-least-once, nothing lost).
                logger.warning("signal during the final writes: stopping without them")
                return
            if time.monotonic() > deadline:
                logger.error("final writes did not finish within %.0fs; stopping without them",
                             options.FINAL_WRITES_TIMEOUT)
                return

    def _start(self, opts: options.RunOptions, stack: _Lifecycle) -> None:
        if any(reg.executor.is_async for reg in self.entrypoint_registry.values()):
            self._loop = EventLoopThread(on_crash=self._on_loop_crash).start()
            stack.push(self._loop.close)
        # One claimer keeps starts in claim (priority) order; concurrent lanes may
        # start jobs claimed at the same moment in either order, which a serial
        # worker (concurrency 1) would notice.
        serial = opts.max_concurrent_tasks is not None or opts.concurrency == 1
        lanes = 1 if serial else opts.claim_lanes
        self._capacity = Capacity(opts.concurrency, opts.batch_size, lanes=lanes)
        self._async_limit = opts.concurrency
        pool = self._pool = HandlerPool(opts.concurrency)
        # Threads of handed-back jobs, or of timed-out handlers, may never return;
        # don't wait for them.
        stack.push(lambda: pool.stop(
            0.0 if self._abandoned or self._threads_lost_at_stop() else JOIN_TIMEOUT))
        # Children of isolated entrypoints stop before the handler threads waiting for
        # them are let go: killed at once when jobs were handed back (their outcomes
        # no longer count), else once their jobs are done.
        stack.push(lambda: self._close_isolated(immediate=bool(self._abandoned)))
        if any(reg.timeout is not None for reg in self.entrypoint_registry.values()):
            # Runs until the final writes are done: a deadline passing during the
            # shutdown wait still records its job.
            watchdog = self._watchdog = Watchdog().start()
            stack.push(watchdog.stop)
        # Outcomes normally ride along with the next claim; the flusher writes them
        # on its ~100 ms timer when no claim comes, or once a few batches pile up.
        self._beat_period = {
            name: (reg.claim.stale_after or opts.heartbeat_timeout).total_seconds() / 2
            for name, reg in self.entrypoint_registry.items()
        }
        tick = self._shortest_stale(opts).total_seconds() / 8
        # Heartbeats stop only after the final writes (_finalize): a job keeps
        # beating until its outcome is in the database.
        self._heartbeats = Heartbeats(self.queries, self._running_snapshot,
                                      owner=self.queue_manager_id, tick=tick)
        self._heartbeats.start()
        stack.push(self._heartbeats.stop)
        # Outcomes normally ride along with the next claim; the flusher writes them
        # on its ~100 ms timer when no claim comes, or once a few batches pile up.
        # Stopped (with a final flush) by _finalize, before the heartbeats.
        self._buffer = CompletionBuffer(
            self.queries, owner=self.queue_manager_id, current=self._current_claim,
            max_size=opts.batch_size * options.OUTCOME_BATCHES_BEFORE_FLUSH,
            on_written=self._on_written,
        )
        self._buffer.start()
        stack.push(self._start_listener(opts))
        stack.push(self._watch_shutdown())
        if self._listening:
            health = self._health = Ticker(
                lambda: self._probe_listener(opts), options.HEALTH_CHECK_INTERVAL,
                name="pgqueue_sync-health", jitter=0.0,
            ).start()
            # The first probe at once: until it echoes, the dispatcher polls.
            health.wake()
            # Probes and aggregation leave nothing to finish: a thread stuck in a
            # database call (an unreachable server) is not worth waiting for long.
            stack.push(lambda: health.stop(QUICK_JOIN_TIMEOUT))
        # Extra claim lanes, not with a budget: it is counted in SQL, and two
        # concurrent claims could each see room for the same jobs.
        self._lanes = [
            threading.Thread(target=self._extra_lane, args=(opts,),
                             name=f"pgqueue_sync-claimer-{i}", daemon=True)
            for i in range(1, lanes)
        ]
        for lane in self._lanes:
            lane.start()  # joined by _finalize, before the final wait
        if opts.log_aggregation_interval:
            aggregator = Ticker(self._aggregate, opts.log_aggregation_interval.total_seconds(),
                                name="pgqueue_sync-aggregator").start()
            stack.push(lambda: aggregator.stop(QUICK_JOIN_TIMEOUT))
        if opts.queue_upkeep:
            self.upkeep = QueueUpkeep(self.queries)
            keeper = Ticker(self.upkeep, upkeep.INTERVAL, name="pgqueue_sync-upkeep").start()
            keeper.wake()  # look at once: a backlog enqueued before the start needs it most
            stack.push(lambda: keeper.stop(QUICK_JOIN_TIMEOUT))
        self._start_pruner(opts, stack)

    def _start_pruner(self, opts: options.RunOptions, stack: _Lifecycle) -> None:
        pruner = Pruner(self.queries, keep_log=opts.keep_log,
                        keep_statistics=opts.keep_statistics, keep_results=opts.keep_results,
                        stopping=self._halt.is_set)
        self.pruner = pruner if pruner.enabled else None  # run() may be called again
        if not pruner.enabled:
            return
        # No pass at start: a fleet restarting together would all try at once, and the
        # next pass comes within a minute anyway. A pass stops between statements once
        # the worker halts, so the join waits for one statement at most.
        ticker = Ticker(pruner, retention.INTERVAL, name="pgqueue_sync-pruner").start()
        stack.push(lambda: ticker.stop(QUICK_JOIN_TIMEOUT))

    def _watch_shutdown(self) -> Callable[[], None]:
        """Turn ``shutdown.set()`` from any thread into wake-ups of every waiting loop.

        ``shutdown`` may be any ``threading.Event`` (one can be passed in), and
        an Event cannot notify anyone; without this, an idle dispatcher would
        notice it only after ``dequeue_timeout``.
        """
        done = threading.Event()

        def watch() -> None:
            while not done.is_set() and not self._halt.is_set():
                if self.shutdown.wait(SHUTDOWN_WATCH_INTERVAL):
                    self._halt_all()
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

    def _start_listener(self, opts: options.RunOptions) -> Callable[[], None]:
        driver = self.queries.driver
        self._listener = None
        self._listening = not opts.poll_only
        if opts.poll_only:
            logger.info("poll-only: no LISTEN; looking for jobs every %gs",
                        opts.poll_interval.total_seconds())
            return lambda: None
        if in_process(driver):
            subscribe: Callable[[Callable[[str], None]], Callable[[], None]]
            subscribe = driver.add_listener  # type: ignore[attr-defined]
            self._listener_verified.set()  # an in-process fan-out cannot miss a notification
            return subscribe(self._on_payload)
        connect_listener: Callable[[], Any]
        if opts.listen_dsn is not None:
            connect_listener = functools.partial(
                connect, opts.listen_dsn, hint=LISTEN_DSN_HINT, prepare_threshold=None
            )
            logger.info("listener: LISTEN on %s (listen_dsn)", describe_conninfo(opts.listen_dsn))
        elif hasattr(driver, "new_connection"):
            connect_listener = driver.new_connection
        else:
            raise ConfigurationError(
                f"{type(driver).__name__} cannot open a LISTEN connection; use "
                "SyncPsycopgDriver or SyncPsycopgPoolDriver for workers, or pass listen_dsn "
                "(--listen-dsn) or poll_only (--poll-only)"
            )
        listener = self._listener = Listener(
            connect_listener,
            self.channel,
            on_event=self._on_event,
            on_reconnect=self._on_listener_reconnect,
            on_failure=self._on_listener_lost,
            # Names this worker's own session for 'pgq-sync workers' (ops.py).
            on_connect=functools.partial(label_worker_session,
                                         queue_manager_id=self.queue_manager_id,
                                         settings=self.queries.settings),
        )
        if not listener.start():
            logger.warning("the listener is not connected yet; polling until it is")
        return listener.stop

    def _on_listener_reconnect(self) -> None:
        # Notifications sent while it was down are lost: poll now, and end any
        # database backoff (the server is evidently back).
        self._wake.set()
        self._recovered.set()
        # Trust the new connection once it echoes a probe: probe now.
        if self._health is not None:
            self._health.wake()

    def _on_listener_lost(self, exc: BaseException) -> None:
        # Until the reconnected listener echoes a probe, poll every poll_interval.
        self._listener_verified.clear()
        self._wake.set()

    # -- the dispatch loop -----------------------------------------------------------------

    def _dispatch_loop(self, opts: options.RunOptions) -> None:
        retry = DatabaseRetry(
            "the dispatcher", stop=self._halt, log=logger,
            fatal=lambda exc: self._needs_a_fix(exc, opts), wait=self._wait_to_recover,
            recovered=f"database reachable again; worker {self.queue_manager_id} resumes",
        )
        retry.run(lambda _failed_before: self._dispatch_once(opts))

    @staticmethod
    def _needs_a_fix(exc: DatabaseError, opts: options.RunOptions) -> bool:
        """True for a database error that stops the worker instead of a retry."""
        permanent_connection = isinstance(exc, ConnectionFailed) and not exc.transient
        # A misconfiguration found by the database (PoolerError: prepared statements
        # through PgBouncer) stops the worker with the fix instead of retrying forever.
        return permanent_connection or needs_a_fix(exc) or (
            not exc.transient and opts.mode is QueueExecutionMode.drain
        )

    def _wait_to_recover(self, delay: float) -> None:
        # A listener reconnect (or a halt) ends the wait early.
        self._recovered.clear()
        self._recovered.wait(delay)

    def _dispatch_once(self, opts: options.RunOptions) -> None:
        """Claim what fits, then wait for a wake-up or the poll interval."""
        self._wake.clear()
        if self._fill(opts) is None:  # local capacity full: wait for a slot to free up
            self._wake.wait(opts.dequeue_timeout.total_seconds())
            return
        self._check_writes(opts)
        # Order matters: a finishing job buffers its outcome before it stops
        # counting as running, and the probe runs last, so a retry cannot slip
        # between the three reads and end drain mode early.
        busy = self._running() > 0
        writes_pending = self._buffer is not None and self._buffer.pending() > 0
        claims = {name: reg.claim for name, reg in self.entrypoint_registry.items()}
        state = self.queries.poll_state(claims, opts.heartbeat_timeout)
        if opts.mode is QueueExecutionMode.drain and not (busy or writes_pending or state.queued):
            logger.info("drain mode: no work left")
            self._drained = True
            self.shutdown.set()  # as PgQueuer does once drained
            self._halt_all()
            return
        queued = state.queued or writes_pending
        self.idle_waits += 1
        self._wake.wait(self._idle_wait(opts, state, queued))

    def _check_writes(self, opts: options.RunOptions) -> None:
        # Outcome writes that no retry can fix (a missing grant, a dropped table)
        # end a drain-mode run instead of waiting on them forever.
        error = None if self._buffer is None else self._buffer.last_error
        if (
            opts.mode is QueueExecutionMode.drain
            and isinstance(error, DatabaseError)
            and not error.transient
        ):
            raise error

    def _fill(self, opts: options.RunOptions) -> bool | None:
        """Claim and start jobs while there is room; None when local capacity is full."""
        assert self._capacity is not None
        while not self._halt.is_set():
            wanted = self._capacity.reserve()
            if wanted == 0:
                return None
            jobs: list[Job] = []
            try:
                self._claim(opts, wanted, jobs)
            finally:
                # Jobs claimed before a later step failed are ours: start them anyway.
                self._capacity.settle(wanted, len(jobs))
                for job in jobs:
                    self._dispatch(job)
            if len(jobs) < wanted:
                self._backlog.clear()
                return True
            self._backlog.set()
        return True

    def _stop_claimers(self) -> None:
        self._backlog.set()  # wake the lanes; they see the halt and leave
        self._lane_wake.set()
        deadline = time.monotonic() + JOIN_TIMEOUT
        for claimer in self._claimers:
            while claimer.is_alive() and time.monotonic() < deadline:
                if self._stop_now.is_set():
                    return
                claimer.join(FINAL_WAIT_SLICE)
            if claimer.is_alive():
                logger.warning("%s is still in a database call after %.1fs; jobs it still "
                               "claims are handed back", claimer.name, JOIN_TIMEOUT)

    def _extra_lane(self, opts: options.RunOptions) -> None:
        """An extra claimer, active only while a backlog exists, so claim round trips
        overlap; idle polling stays with the dispatcher."""
        # The dispatcher reports database errors; a lane only steps back.
        retry = DatabaseRetry("a claim lane", stop=self._halt, log=logger, level=logging.DEBUG,
                              fatal=lambda _exc: False)
        try:
            retry.run(lambda _failed_before: self._lane_step(opts))
        except Exception:
            logger.exception("claim lane failed; stopping the worker")
            self._fatal = self._fatal or PgqException("a claim lane failed unexpectedly")
            self._halt_all()

    def _lane_step(self, opts: options.RunOptions) -> None:
        if not self._backlog.wait(options.LANE_IDLE_WAIT):
            return
        self._lane_wake.clear()
        if self._fill(opts) is None:
            self._lane_wake.wait(options.LANE_IDLE_WAIT)

    def _claim(self, opts: options.RunOptions, wanted: int, jobs: list[Job]) -> None:
        """Claim up to ``wanted`` jobs into ``jobs`` (which keeps what earlier steps
        claimed if a later one raises)."""
        open_eps, rated = self._claimable()
        if open_eps:
            jobs += self._dequeue(opts, wanted, open_eps)
        if rated:
            # Buckets are read then spent: one lane at a time, or both could overshoot.
            with self._rate_lock:
                self._claim_rated(opts, wanted, jobs)

    def _claim_rated(self, opts: options.RunOptions, wanted: int, jobs: list[Job]) -> None:
        for name, reg in self.entrypoint_registry.items():
            if reg.bucket is None or len(jobs) >= wanted:
                continue
            tokens = reg.bucket.available()
            if tokens > 0:
                claimed = self._dequeue(opts, min(wanted - len(jobs), tokens), {name: reg.claim})
                reg.bucket.take(len(claimed))
                jobs += claimed

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
        sent = self._buffer.prepared(finished)
        try:
            jobs = self._claim_with(opts, batch, eps, sent)
        except DatabaseError as exc:
            if not finished or exc.transient:
                self._buffer.restore(finished)
                raise
            # The database refused something in the outcomes, not necessarily the
            # claim: the flusher finds the bad one; claim without them meanwhile.
            self._buffer.restore(finished, isolate=True)
            return self._claim_with(opts, batch, eps, Batch())
        except BaseException:
            self._buffer.restore(finished)
            raise
        self._buffer.written(sent)
        return jobs

    def _claim_with(
        self,
        opts: options.RunOptions,
        batch: int,
        eps: dict[str, EntrypointExecutionParameter],
        finished: Batch,
    ) -> list[Job]:
        return self.queries.dequeue(
            batch, eps, self.queue_manager_id, opts.max_concurrent_tasks,
            opts.heartbeat_timeout, completed=finished.outcomes, results=finished.results,
            retries=finished.retries, include_stale=self._stale_check_due(opts),
        )

    def _stale_check_due(self, opts: options.RunOptions) -> bool:
        """Whether this claim also looks for stale picked jobs (every few seconds:
        that scan steps over every job finished since the last VACUUM)."""
        now = time.monotonic()
        if now < self._next_stale_check:
            return False
        every = min(options.STALE_CHECK_INTERVAL, self._shortest_stale(opts) / 4)
        self._next_stale_check = now + every.total_seconds()
        return True

    def _idle_wait(self, opts: options.RunOptions, state: PollState, queued: bool) -> float:
        # Retries, requeues, holds and hand-backs notify (as PgQueuer 2 does), but a
        # PgQueuer 1.6 worker's do not, and a stale job notifies nobody: wake for
        # the next deferred job and for the next picked job going stale.
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
        buckets = [r.bucket for r in self.entrypoint_registry.values() if r.bucket is not None]
        if buckets:
            wait = min(wait, max(min(b.seconds_until_token() for b in buckets), 0.01))
        return wait

    def _running_snapshot(self) -> dict[int, tuple[float, float]]:
        with self._lock:
            return {i: (h.claimed_at, h.period) for i, h in self._claimed.items()}

    def _current_claim(self, job: Job) -> Job:
        """The row an outcome of ``job`` must be written against: ``job`` itself, or our
        own stale re-pick of it while it still ran here (which renewed the claim
        token, the ``updated`` that guards the write)."""
        held = self._claimed.get(job.id)  # one dict read: atomic, no lock needed
        return held.job if held is not None and held.origin == job.updated else job

    def _running(self) -> int:
        with self._lock:
            return len(self.job_context)

    # -- running one job -------------------------------------------------------------------

    def _dispatch(self, job: Job) -> None:
        reg = self.entrypoint_registry[job.entrypoint]
        context = Context(CancellationToken(), self.resources)
        with self._lock:
            # Our own stale re-pick of a job still running (or whose outcome is not
            # written yet) here: the first run's outcome will finish it.
            held = self._claimed.get(job.id)
            running = held is not None and job.id in self.job_context
            # Another row with the id of a job still running here (the schema was
            # reinstalled and ids restarted): it must not inherit that run's outcome.
            reused = running and held is not None and held.job.created != job.created
            # Our own stale re-pick of a job still running here: the running handler's
            # outcome will finish it, written against this claim (renewed token).
            rerun = running and not reused
            late = self._handing_back
            if rerun and held is not None:
                self._claimed[job.id] = held._replace(job=job)
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
                self.job_context[job.id] = context
                self._claimed[job.id] = _Held(job, job.updated, time.monotonic(),
                                              self._beat_period[job.entrypoint])
        assert self._capacity is not None
        if rerun or reused or late:
            self._capacity.finished(None)
            if late:  # claimed by a lane that outlived the shutdown wait
                self._hand_back({job.id: None}, "shutdown")
            return
        self._dispatched_since_aggregation = True
        assert self._pool is not None
        if reg.executor.is_async:
            self._admit_async(job, context, reg)
        else:
            self._pool.submit(self._run_sync, job, context, reg)

    def _run_sync(self, job: Job, context: Context, reg: _Registration) -> None:
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
                self._finish(job, context, reg, error, cancelled=False, seconds=seconds,
                             value=value)
            else:  # past its timeout: that outcome is recorded already
                self._returned_late(run, error)

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

    # -- timeouts (entrypoint(timeout=...); see docs/timeouts.md) --------------------------

    def _arm(
        self, job: Job, context: Context, reg: _Registration, thread_id: int | None = None
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

    def _on_timeout(self, reg: _Registration, run: TimedRun) -> None:
        """On the watchdog thread, once a run passes its deadline: record the job as
        if its handler had raised TimeoutError, through the one failure path."""
        assert self._capacity is not None
        job: Job = run.job
        context: Context = run.context
        seconds = run.timeout.total_seconds()
        # Lost before the job stops counting in _finish: its slot is never handed out.
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
        error = error.with_traceback(stack_traceback(run.thread_id, QueueManager._execute.__code__))
        try:
            failure = reg.executor.timed_out(job, error)
        except Exception:
            logger.exception("%s.timed_out() failed; recording the TimeoutError",
                             type(reg.executor).__name__)
            failure = error
        context.cancellation.cancel()  # a def handler may poll it; an async one is cancelled
        self._finish(job, context, reg, failure, cancelled=False, seconds=seconds)

    def _returned_late(self, run: TimedRun | None, error: BaseException | None) -> None:
        """A handler ended after its timeout: its outcome is dropped, its slot is free."""
        assert self._capacity is not None and run is not None  # only a timed run is late
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
        _set(self._wake)
        _set(self._lane_wake)

    def _close_isolated(self, *, immediate: bool) -> None:
        for runner in self._isolated:
            runner.close(immediate=immediate)

    def _threads_lost_at_stop(self) -> int:
        lost = 0 if self._capacity is None else self._capacity.lost()
        if lost:
            logger.warning(
                "%d handler threads still run timed-out handlers; not waiting for them "
                "(daemon threads: they end with the process)", lost,
            )
        return lost

    def _drop_waiting_sync(self) -> None:
        """At shutdown, sync jobs still waiting for a handler thread do not start
        (as _run_sync would decide once a thread is free): they are handed back
        now, not after a thread held by a timed-out handler returns."""
        if self._pool is None:
            return
        for _, args in self._pool.take_pending():
            self._leave_unstarted(args[0])

    def _admit_async(self, job: Job, context: Context, reg: _Registration) -> None:
        """Start an async job now, or queue it while ``concurrency`` coroutines run:
        like a sync job waiting for a thread (claimed ahead, not yet started)."""
        with self._lock:
            if self._async_running >= self._async_limit:
                self._async_waiting.append((job, context, reg))
                return
            self._async_running += 1
        self._start_async(job, context, reg)

    def _async_done(self) -> None:
        """An async job ended: hand its slot to the next waiting one, if any (never
        after a halt: those are handed back unstarted)."""
        with self._lock:
            following = None
            if self._async_waiting and not self._halt.is_set():
                following = self._async_waiting.popleft()
            else:
                self._async_running -= 1
        if following is not None:
            self._start_async(*following)

    def _drop_waiting_async(self) -> None:
        with self._lock:
            waiting, self._async_waiting = self._async_waiting, collections.deque()
        for job, _, _ in waiting:
            self._leave_unstarted(job)

    def _start_async(self, job: Job, context: Context, reg: _Registration) -> None:
        started = time.monotonic()
        run = self._arm(job, context, reg)

        def done(task: asyncio.Task[Any]) -> None:  # on the event-loop thread
            if self._settle(run):
                self._finish_async(job, context, reg, task, time.monotonic() - started)
                return
            try:  # past its timeout: that outcome is recorded already
                late = asyncio.CancelledError() if task.cancelled() else task.exception()
                self._returned_late(run, late)
            finally:
                self._async_done()

        try:
            assert self._loop is not None
            cancel = self._loop.spawn(self._execute(job, context, reg), done)
        except BaseException as exc:  # no coroutine, or no loop: the job fails here
            try:
                if self._settle(run):
                    self._finish(job, context, reg, exc, cancelled=False, seconds=None)
                else:
                    self._returned_late(run, exc)
            finally:
                self._async_done()
            return
        context.cancellation.add_callback(cancel)

    def _finish_async(
        self,
        job: Job,
        context: Context,
        reg: _Registration,
        task: asyncio.Task[Any],
        seconds: float,
    ) -> None:
        error: BaseException | None = None
        cancelled = False
        value = None
        try:
            cancelled = task.cancelled()
            error = None if cancelled else task.exception()
            if isinstance(error, EscapedBaseException):
                error = error.original
            value = None if cancelled or error is not None else task.result()
        except BaseException as exc:
            error = exc
        finally:
            try:
                self._finish(job, context, reg, error, cancelled=cancelled, seconds=seconds,
                             value=value)
            finally:
                self._async_done()

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
        try:
            # _abandoned only grows, at shutdown; a membership test needs no lock.
            if job.id in self._abandoned:
                logger.warning("job %d finished after it was handed back to the queue", job.id)
            else:
                # Buffer the outcome before the job stops counting as running, so
                # drain mode never sees "nothing running, nothing pending" in between.
                self._record(job, context, reg, error, cancelled, value)
        finally:
            self._check_after_job()  # before the freed slot lets another claim in
            # The job keeps its heartbeat (_claimed) until _on_written.
            with self._lock:
                self.job_context.pop(job.id, None)
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
        try:
            finished = self._outcome(job, context, reg, error, cancelled, value)
        except Exception as exc:  # e.g. a result that cannot be encoded
            logger.error("job %d: could not build its outcome (%s); recording a failure",
                         job.id, exc)
            finished = Finished(job, self._failure_status(reg), self._traceback(job, exc))
        self._buffer.add(finished)

    def _outcome(
        self,
        job: Job,
        context: Context,
        reg: _Registration,
        error: BaseException | None,
        cancelled: bool,
        value: Any,
    ) -> Finished:
        # Results (opt-in) ride in the same buffered write as the outcome; a
        # failure's result row takes its error from the traceback record.
        store = self._stores(reg)
        if cancelled or isinstance(error, JobCancelled) or (
            error is None and context.cancellation.cancelled
        ):
            return Finished(job, "canceled", None, StoredResult(job) if store else None)
        if error is None:
            return Finished(job, "successful", None, encode_result(job, value) if store else None)
        retry = retry_request(error)
        if retry is not None:
            record = self._traceback(job, error, attempt=job.attempts,
                                     retry_delay=str(retry.delay), reason=retry.reason)
            return Finished(job, "queued", record, delay=retry.delay)
        logger.error("job %d (%r) failed", job.id, job.entrypoint, exc_info=error)
        stored = StoredResult(job) if store else None
        return Finished(job, self._failure_status(reg), self._traceback(job, error), stored)

    @staticmethod
    def _failure_status(reg: _Registration) -> JOB_STATUS:
        return "failed" if reg.on_failure == "hold" else "exception"

    def _traceback(self, job: Job, error: BaseException, **extra: Any) -> TracebackRecord:
        return failure_record(job, error, self.queue_manager_id, **extra)

    def _on_written(self, jobs: list[Job]) -> None:
        with self._lock:
            for job in jobs:
                held = self._claimed.get(job.id)
                if held is not None and held.job.updated == job.updated:
                    del self._claimed[job.id]  # recorded: stop its heartbeat
        self.jobs_logged += len(jobs)
        # A written outcome may free a fleet-wide seat: claim again.
        self._wake.set()

    # -- events ----------------------------------------------------------------------------

    def _on_payload(self, payload: str) -> None:
        from ..models import parse_event

        event = parse_event(payload)
        if event is not None:
            self._on_event(event)

    def _on_event(self, event: AnyEvent) -> None:
        if isinstance(event, TableChangedEvent):
            # insert: new work; delete: a freed seat; update: a retry, requeue,
            # hold or hand-back (sent by us and by PgQueuer 2).
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
        """Send a probe on the channel and wait for this worker's listener to receive it.

        False at once with ``poll_only`` (there is no listener)."""
        seconds = options.duration("timeout", timeout).total_seconds()
        return bool(self._send_probe(seconds))

    def _send_probe(self, seconds: float) -> bool | None:
        """Whether the probe came back within ``seconds``; None if it could not be sent
        (or the worker began to stop while it waited)."""
        if not self._listening:
            return False
        probe_id, received = uuid.uuid4(), threading.Event()
        self._pending_probes[probe_id] = received
        try:
            self.queries.notify_health_check(probe_id)
            # In slices: a stopping worker does not wait out a deaf listener's probe.
            deadline = time.monotonic() + seconds
            while not received.wait(min(FINAL_WAIT_SLICE, max(deadline - time.monotonic(), 0))):
                if time.monotonic() >= deadline:
                    return False
                if self._halt.is_set():
                    return None
            return True
        except DatabaseError as exc:  # no probe sent: not healthy, whatever the reason
            logger.debug("listener probe could not be sent: %s", exc)
            return None
        finally:
            self._pending_probes.pop(probe_id, None)

    def healthy(self, timeout: timedelta | float = options.HEALTH_CHECK_TIMEOUT) -> bool:
        """For liveness probes: :meth:`run` is running, its heartbeat thread is
        alive and its listener echoes a probe within ``timeout`` (with
        ``poll_only``, which has no listener, the first two suffice). Blocks up
        to ``timeout``; thread-safe."""
        beats = self._heartbeats
        if beats is None or not beats.is_alive() or self._halt.is_set():
            return False
        if not self._listening:
            return True
        return self.listener_healthy(timeout)

    def _probe_listener(self, opts: options.RunOptions) -> None:
        """The health ticker's probe: trust the listener while it echoes; otherwise
        poll every ``poll_interval``, reconnect it once per run of failures and say,
        the first time, what fixes a listener that hears nothing (PgBouncer)."""
        timeout = options.HEALTH_CHECK_TIMEOUT.total_seconds()
        poll = opts.poll_interval.total_seconds()
        echoed = self._send_probe(timeout)
        if echoed:
            self._listener_failures = 0
            if not self._listener_verified.is_set():
                if self._warned_deaf_listener:
                    logger.info("the listener hears notifications again; waiting for them "
                                "instead of polling every %.1fs", poll)
                self._listener_verified.set()
            return
        self._listener_verified.clear()
        self._wake.set()  # and poll every poll_interval meanwhile
        if opts.shutdown_on_listener_failure and opts.mode is not QueueExecutionMode.drain:
            logger.warning("listener health check failed: no echo within %.1fs; stopping "
                           "(shutdown_on_listener_failure)", timeout)
            self._listener_error = FailingListenerError()
            self._halt_all()
            return
        if echoed is None:
            return  # not sent: a database problem, reported by the statements it fails
        self._listener_failures += 1
        if self._listener_failures > 1:  # reconnected once already: that did not help
            logger.debug("listener health check failed %d times in a row; polling every %.1fs",
                         self._listener_failures, poll)
            return
        if not self._warned_deaf_listener:
            self._warned_deaf_listener = True
            logger.warning(
                "listener health check failed: no echo within %.1fs; reconnecting it, and "
                "polling for jobs every %.1fs until it hears again. Behind PgBouncer in "
                "transaction mode LISTEN seems to work but no notification ever arrives: use "
                "--listen-dsn (listen_dsn=) to a direct server connection or --poll-only "
                "(poll_only=True); see docs/pgbouncer.md", timeout, poll,
            )
        else:
            logger.warning("listener health check failed: no echo within %.1fs; reconnecting "
                           "it, and polling every %.1fs meanwhile", timeout, poll)
        if self._listener is not None:
            self._listener.reconnect()

    def _aggregate(self) -> Idle | None:
        if not self._dispatched_since_aggregation:
            return IDLE  # nothing new: neither a success nor a failure for the backoff
        self._dispatched_since_aggregation = False
        try:
            self.queries.aggregate_logs()
        except BaseException:
            self._dispatched_since_aggregation = True  # try again at the next backoff step
            raise
        return None

    # -- shutdown --------------------------------------------------------------------------

    def _on_stop_signal(self, request: StopRequest) -> None:
        # Runs in the main thread between two bytecodes: only set events; the
        # main thread acts on them (never an exception raised into a database call).
        if request.at_once:
            self.shutdown_requested_twice = True
            self._stop_now.set()
            return
        logger.info("received %s: finishing running jobs", request.name)
        self.shutdown.set()
        self._halt_all()

    def _check_after_job(self) -> None:
        hook = self.after_job
        if hook is None or self._halt.is_set():
            return
        try:
            reason = hook()
        except Exception:  # a broken hook must not cost the job its outcome
            logger.exception("the after_job hook failed")
            return
        if reason and not self.shutdown.is_set():
            logger.info("worker %s %s: finishing running jobs, then stopping",
                        self.queue_manager_id, reason)
            self.shutdown.set()
            self._halt_all()

    def _on_loop_crash(self, error: BaseException | None) -> None:
        logger.error("the event-loop thread stopped unexpectedly (%r); stopping the worker",
                     error)
        self._fatal = self._fatal or PgqException(
            f"the event-loop thread for async handlers stopped unexpectedly ({error!r})"
        )
        self._halt_all()

    def _wait_for_running(self, timeout: timedelta | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout.total_seconds()
        with self._idle:
            self._stopping = True
            while self.job_context and not self._stop_now.is_set():
                left = FINAL_WAIT_SLICE if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    return
                self._idle.wait(min(left, FINAL_WAIT_SLICE))
        if self._stop_now.is_set():
            logger.warning("second signal: stopping now")

    def _leave_unstarted(self, job: Job) -> None:
        """At shutdown, a claimed job still waiting for a handler thread does not start:
        it is handed back with the unfinished ones (no second run for it)."""
        assert self._capacity is not None
        with self._lock:
            self.job_context.pop(job.id, None)
            self._unstarted.add(job.id)
            if self._stopping:
                self._idle.notify_all()
        self._capacity.finished(None)

    def _release_unfinished(self) -> None:
        with self._lock:
            self._handing_back = True  # jobs claimed from now on go straight back
            running = dict(self.job_context)
            self._abandoned.update(running)
            unstarted, self._unstarted = self._unstarted, set()
        for context in running.values():
            context.cancellation.cancel()
        self._hand_back(dict.fromkeys([*running, *unstarted]), "shutdown")

    def _hand_back(self, jobs: dict[JobId, None], reason: str) -> None:
        """Return this worker's picked jobs to the queue now, logging why."""
        if not jobs:
            return
        error = PgqException("the worker shut down before the job finished")
        records = {
            job_id: TracebackRecord.from_exception(
                error, job_id=job_id,
                additional_context={"queue_manager_id": str(self.queue_manager_id),
                                    "reason": reason},
            )
            for job_id in jobs
        }
        try:
            released = self.queries.release_jobs(records, self.queue_manager_id)
        except PgqException as exc:
            logger.error("could not hand %d running jobs back (%s); they will be re-picked "
                         "once their heartbeat is stale", len(jobs), exc)
            return
        with self._lock:
            for job_id in jobs:
                self._claimed.pop(job_id, None)
        logger.warning("handed %d unfinished jobs back to the queue: %s",
                       len(released), sorted(released))


async def _traced(tracer: TracingProtocol, job: Job, coroutine: Awaitable[Any]) -> Any:
    # Entered inside the event loop's task, so the span is current for the handler.
    with process_span(tracer, job):
        return await coroutine


def _set(event: threading.Event) -> None:
    # Event.set() takes a lock and notifies even when already set; skip that per job.
    if not event.is_set():
        event.set()


def _accepts(func: Callable[..., Any], given: bool | None) -> bool:
    return accepts_context(func) if given is None else given


class _Held(NamedTuple):
    """A job this worker holds: its latest claimed row (renewed by our own stale
    re-pick), the claim token it was dispatched with, when, its heartbeat period."""

    job: Job
    origin: datetime
    claimed_at: float
    period: float


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
