"""``QueueManager``: the worker. Registration, :meth:`~QueueManager.run`, and what
starts in which order, what stops in which order and why.

What keeps a job from being lost (see docs/reliability.md):

* whatever a handler does (``sys.exit()``, ``KeyboardInterrupt``, an exception
  that cannot be printed), its job gets exactly one outcome: bookkeeping runs
  in ``finally`` and every ``BaseException`` is that job's failure;
* a job keeps its heartbeat until its outcome (or retry) is written, and every
  write of ours only touches rows this worker still holds, so a write re-sent
  after a lost reply changes nothing;
* every exit path sets one internal stop event (``halt``); shutdown joins the
  claim lanes, waits for handlers, hands unfinished jobs back, writes the
  outcomes and only then stops heartbeats.

Threads (all named ``pgqueue_sync-*``): ``-dispatcher`` claims (the caller of
:meth:`QueueManager.run` only waits, so it acts on signals at once) and
``-claimer-N`` help it through a backlog; ``-runner-N`` run handlers;
``-listener`` receives NOTIFY; ``-flusher`` writes outcomes; ``-heartbeat``
keeps running jobs alive; ``-health`` probes the listener; ``-aggregator``
folds logs into statistics; ``-pruner`` keeps the log, statistics and results
within their retention windows; ``-event-loop`` runs coroutines when an async
handler is registered.

The parts it builds for each run are listed in :mod:`pgqueue_sync.worker`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, MutableMapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from .. import options
from ..drivers.base import require_autocommit
from ..drivers.psycopg import warn_if_pure_python
from ..errors import ConfigurationError, PgqException
from ..preflight import in_process, verify_queue_schema
from ..queries import Queries
from ..signals import StopRequest, StopSignals
from ..tracing import TracingProtocol
from ..types import Channel, JobId, QueueManagerId
from .buffers import Heartbeats
from .cancellation import Context
from .capacity import Capacity
from .claiming import Claimer, claim_lanes
from .dispatch import JobRunner, start_job_runner
from .events import Listening
from .executors import AbstractEntrypointExecutor, EntrypointKeywords
from .held import HeldJobs
from .lifecycle import (
    QUICK_JOIN_TIMEOUT,
    Chores,
    Lifecycle,
    await_database,
    run_final_writes,
    watch_shutdown,
)
from .outcomes import HandBacks, Recorder
from .registry import (
    Registration,
    executor_registration,
    handler_registration,
    heartbeat_periods,
    shortest_stale,
)
from .retention import Pruner
from .state import FINAL_WAIT_SLICE, Progress, RunControl
from .upkeep import QueueUpkeep

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


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
        self.entrypoint_registry: dict[str, Registration] = {}
        self._held = HeldJobs()
        #: The context of each job running in this worker (see :meth:`get_context`).
        self.job_context: dict[JobId, Context] = self._held.contexts
        self._control = RunControl()
        self._progress = Progress()
        self._listening = Listening(queries, self.channel, self.queue_manager_id,
                                    held=self._held, control=self._control)
        self._hand_backs = HandBacks(queries, self._held, self.queue_manager_id)
        self._chores = Chores(queries, self._progress)
        self._drained = False
        # A second signal: the main thread stops its final waits.
        self._stop_now = threading.Event()
        self._stop_signals = StopSignals(self._on_stop_signal, stopping=self.shutdown.is_set)
        self.shutdown_requested_twice = False
        # The parts of the current (or last) run, built by _start.
        self._capacity: Capacity | None = None
        self._heartbeats: Heartbeats | None = None
        self._recorder: Recorder | None = None
        self._runner: JobRunner | None = None
        self._claimer: Claimer | None = None
        #: Called after each job ends (in the thread that ran it); a returned reason
        #: stops the worker as a shutdown request does: it claims nothing more, lets
        #: running jobs finish and returns from run(). ``pgq-sync run
        #: --max-jobs-per-child/--max-memory-per-child`` recycle a process with it.
        self.after_job: Callable[[], str | None] | None = None

    @property
    def idle_waits(self) -> int:
        """How many times the dispatcher has entered its idle wait (for tests and
        probes: "the worker is idle, waiting for a notification")."""
        return self._progress.idle_waits

    @property
    def jobs_logged(self) -> int:
        """How many outcomes this worker has written."""
        return self._progress.jobs_logged

    @property
    def upkeep(self) -> QueueUpkeep | None:
        """The queue table's upkeep while run() runs (None before, or when turned off)."""
        return self._chores.upkeep

    @property
    def pruner(self) -> Pruner | None:
        """The retention pruner while run() runs (None before, or with every window off)."""
        return self._chores.pruner

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
            self.entrypoint_registry[name] = handler_registration(
                name, func, given, timeout=job_timeout, isolation=where
            )
            return func

        return register

    def register_executor(self, name: str, executor: AbstractEntrypointExecutor) -> None:
        """Register a ready-made executor for ``name``."""
        options.check_entrypoint_name(name, self.entrypoint_registry)
        limit = executor.parameters.concurrency_limit
        self.entrypoint_registry[name] = executor_registration(executor, limit=limit)

    def get_context(self, job_id: int) -> Context:
        """The context of a job running in this worker; :class:`PgqException` if none."""
        try:
            return self.job_context[JobId(job_id)]
        except KeyError:
            raise PgqException(f"job {job_id} is not running in this worker") from None

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
            if not await_database(self.verify_structure, self.shutdown, opts.wait_for_database):
                return  # asked to stop while waiting
            self._run(opts)
        if self._control.fatal is not None:
            raise self._control.fatal
        if self._listening.error is not None:
            raise self._listening.error

    def _reset(self) -> None:
        # run() may be called again on the same worker.
        self._control.reset()
        self._stop_now.clear()
        if self._drained:
            # The last run set shutdown itself on draining (as PgQueuer does): a
            # later run (a script or cron job draining again) starts afresh
            # instead of stopping at once with the new jobs left queued. A
            # shutdown set by a caller or a signal is left alone.
            self.shutdown.clear()
        self._stop_signals.reset()
        self._held.reset()
        self._listening.reset()
        self._recorder = self._runner = self._claimer = None
        self._drained = False
        self.shutdown_requested_twice = False

    def verify_structure(self) -> None:
        """Raise :class:`SchemaError` unless the tables, columns and indexes a 1.6 worker
        needs exist, and the results table when some entrypoint stores results."""
        stores = any(reg.stores(self.store_results) for reg in self.entrypoint_registry.values())
        verify_queue_schema(self.queries, results=stores)

    def _run(self, opts: options.RunOptions) -> None:
        stack = Lifecycle()
        try:
            claimer = self._start(opts, stack)
            logger.info(
                "worker %s started: entrypoints %s, concurrency %d",
                self.queue_manager_id, sorted(self.entrypoint_registry), opts.concurrency,
            )
            # The dispatch loop runs in its own thread: the calling (often main)
            # thread only waits on events, so it acts on signals at once even
            # while a claim is stuck in a database call (a pool waiting for a
            # connection, a statement waiting for a lock).
            dispatcher = claimer.start_dispatcher()
            while dispatcher.is_alive() and not self._control.halt.is_set():
                dispatcher.join(FINAL_WAIT_SLICE)
        except BaseException as exc:
            self._control.fail(exc)
            raise
        finally:
            self._finalize(opts, stack)

    def _start(self, opts: options.RunOptions, stack: Lifecycle) -> Claimer:
        """Start a run's threads, each stop pushed on ``stack``; returns the claimer,
        whose dispatcher the caller starts."""
        lanes = claim_lanes(opts)
        capacity = self._capacity = Capacity(opts.concurrency, opts.batch_size, lanes=lanes)
        # Its flusher starts after the heartbeats, and is stopped (with a final flush)
        # by _finalize, before them.
        recorder = self._recorder = Recorder(
            self.queries, owner=self.queue_manager_id, held=self._held, control=self._control,
            capacity=capacity, progress=self._progress, store_results=self.store_results,
            max_batch=opts.batch_size * options.OUTCOME_BATCHES_BEFORE_FLUSH,
            after_job=self._check_after_job,
        )
        # The event loop, the handler threads, the isolated children, the watchdog.
        runner = self._runner = start_job_runner(
            self.entrypoint_registry, opts, stack, resources=self.resources,
            tracer=self.tracer, held=self._held, control=self._control, capacity=capacity,
            progress=self._progress, recorder=recorder, hand_backs=self._hand_backs,
            on_loop_crash=self._on_loop_crash,
        )
        self._start_heartbeats(opts, stack)
        recorder.start()
        stack.push(self._listening.start(opts))
        stack.push(watch_shutdown(self.shutdown, self._control))
        if self._listening.enabled:
            health = self._listening.start_probes(opts)
            # Probes leave nothing to finish: a thread stuck in a database call (an
            # unreachable server) is not worth waiting for long.
            stack.push(lambda: health.stop(QUICK_JOIN_TIMEOUT))
        claimer = self._claimer = Claimer(
            opts, self.queries, registry=self.entrypoint_registry, owner=self.queue_manager_id,
            held=self._held, control=self._control, capacity=capacity, progress=self._progress,
            buffer=recorder.buffer, dispatch=runner.dispatch,
            listener_verified=self._listening.verified, on_drained=self._on_drained,
        )
        claimer.start_lanes(lanes)  # joined by _finalize, before the final wait
        self._chores.start(opts, self._control.halt, stack)
        return claimer

    def _start_heartbeats(self, opts: options.RunOptions, stack: Lifecycle) -> None:
        self._held.beat_period = heartbeat_periods(self.entrypoint_registry,
                                                   opts.heartbeat_timeout)
        tick = shortest_stale(self.entrypoint_registry, opts.heartbeat_timeout).total_seconds() / 8
        # Heartbeats stop only after the final writes (_finalize): a job keeps
        # beating until its outcome is in the database.
        self._heartbeats = Heartbeats(self.queries, self._held.heartbeat_snapshot,
                                      owner=self.queue_manager_id, tick=tick)
        self._heartbeats.start()
        stack.push(self._heartbeats.stop)

    def _finalize(self, opts: options.RunOptions, stack: Lifecycle) -> None:
        """Stop in one order, whatever ended the run. Each step says why it is where it is."""
        # Every loop (dispatcher, lanes, watcher) sees the halt and stops claiming.
        self._control.halt_all()
        # Claimers first: a claim still in flight lands in job_context before the
        # wait below, so its jobs are waited for or handed back, never stranded
        # (one that outlives this bounded wait hands its jobs back itself).
        if self._claimer is not None:
            self._claimer.stop(self._stop_now)
        if self._runner is not None:
            self._runner.drop_waiting()  # claimed ahead, never started: handed back below
        if self._control.fatal is None:
            timeout = opts.shutdown_timeout
            seconds = None if timeout is None else timeout.total_seconds()
            if self._held.wait_for_running(seconds, self._stop_now) and self._stop_now.is_set():
                logger.warning("second signal: stopping now")
        # Hand-backs and outcome writes run while heartbeats still beat, off the
        # main thread, so a second signal can end the wait for them.
        self._final_writes()
        stack.close()
        logger.info("worker %s stopped", self.queue_manager_id)

    def _final_writes(self) -> None:
        recorder = self._recorder

        def write() -> None:
            self._hand_backs.release_unfinished()
            if recorder is not None:
                recorder.stop()

        run_final_writes(write, self._stop_signals)

    def _on_stop_signal(self, request: StopRequest) -> None:
        # Runs in the main thread between two bytecodes: only set events; the
        # main thread acts on them (never an exception raised into a database call).
        if request.at_once:
            self.shutdown_requested_twice = True
            self._stop_now.set()
            return
        logger.info("received %s: finishing running jobs", request.name)
        self.shutdown.set()
        self._control.halt_all()

    def _on_drained(self) -> None:
        self._drained = True
        self.shutdown.set()  # as PgQueuer does once drained
        self._control.halt_all()

    def _check_after_job(self) -> None:
        hook = self.after_job
        if hook is None or self._control.halt.is_set():
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
            self._control.halt_all()

    def _on_loop_crash(self, error: BaseException | None) -> None:
        logger.error("the event-loop thread stopped unexpectedly (%r); stopping the worker",
                     error)
        self._control.fail(PgqException(
            f"the event-loop thread for async handlers stopped unexpectedly ({error!r})"
        ))
        self._control.halt_all()

    def listener_healthy(self, timeout: timedelta | float = options.HEALTH_CHECK_TIMEOUT) -> bool:
        """Send a probe on the channel and wait for this worker's listener to receive it.

        False at once with ``poll_only`` (there is no listener)."""
        return self._listening.listener_healthy(timeout)

    def healthy(self, timeout: timedelta | float = options.HEALTH_CHECK_TIMEOUT) -> bool:
        """For liveness probes: :meth:`run` is running, its heartbeat thread is
        alive and its listener echoes a probe within ``timeout`` (with
        ``poll_only``, which has no listener, the first two suffice). Blocks up
        to ``timeout``; thread-safe."""
        return self._listening.healthy(self._heartbeats, timeout)

