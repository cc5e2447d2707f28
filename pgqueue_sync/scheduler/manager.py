"""``SchedulerManager``: cron schedules run in this process, on PgQueuer's table protocol.

Threads (all named ``pgqueue_sync-*``): the caller of :meth:`SchedulerManager.run`
polls for due schedules; each claimed schedule runs in its own
``-schedule-<id>`` thread (``async def`` ones on ``-scheduler-event-loop``);
``-schedule-heartbeat`` refreshes the heartbeat of running schedules every
second, so a schedule function can never starve it. Database errors in the
poll and the heartbeat are retried with backoff (:mod:`pgqueue_sync.backoff`),
one log line per step.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, MutableMapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from .. import options
from ..backoff import DatabaseRetry
from ..drivers.base import require_autocommit
from ..errors import ConfigurationError, DatabaseError
from ..models import Schedule
from ..preflight import verify_queue_schema
from ..queries import Queries
from ..signals import StopRequest, StopSignals
from ..types import CronEntrypoint, CronExpression, ScheduleId
from ..worker.aio import EventLoopThread
from ..worker.cancellation import ScheduleContext
from ..worker.threads import IDLE, JOIN_TIMEOUT, Idle, Ticker
from .executors import (
    AbstractScheduleExecutor,
    ScheduleExecutor,
    ScheduleExecutorFactoryParameters,
    ScheduleKeywords,
    normalize_expression,
    reject_coroutine,
    wants_context,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger(__name__)

#: How often the heartbeat of running schedules is refreshed (seconds), as in PgQueuer.
SCHEDULE_HEARTBEAT_INTERVAL = 1.0
#: A ``picked`` schedule whose heartbeat is older than this is claimed again. Hard-coded
#: in PgQueuer's claim statement, and so in ours; listed here for reference.
SCHEDULE_STALE_AFTER = timedelta(seconds=30)
#: Added to the time until the next due schedule before polling again, as in PgQueuer.
POLL_LEEWAY = timedelta(seconds=1)
#: Longest single wait of a waiting thread, so "stop now" and signals are seen (seconds).
WAIT_SLICE = 0.25

F = TypeVar("F", bound=Callable[..., Any])
ScheduleKey = tuple[CronEntrypoint, CronExpression]


@dataclasses.dataclass(eq=False)
class _Run:
    """One claimed schedule while it runs here; guarded by the manager's lock."""

    schedule: Schedule
    future: concurrent.futures.Future[Any] | None = None
    releasing: bool = False  # finished; its own thread releases the row
    abandoned: bool = False  # given up at shutdown; the manager released the row


class SchedulerManager:
    """Runs cron schedules; register functions with :meth:`schedule`, then :meth:`run`.

    Several schedulers (these and PgQueuer's) may share a database: a due
    schedule is claimed by exactly one of them. ``resources`` is shared by
    reference with every :class:`ScheduleContext`; ``shutdown`` is a
    :class:`threading.Event` that stops :meth:`run` when set from any thread.
    """

    def __init__(
        self,
        queries: Queries,
        *,
        resources: MutableMapping[str, Any] | None = None,
        shutdown: threading.Event | None = None,
    ) -> None:
        self.queries = queries
        self.resources: MutableMapping[str, Any] = {} if resources is None else resources
        self.shutdown = shutdown or threading.Event()
        self.registry: dict[ScheduleKey, AbstractScheduleExecutor] = {}
        # Construct these in single-threaded __init__ so run()'s threads share them.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running: dict[ScheduleId, _Run] = {}
        self._stop_now = threading.Event()
        self._loop: EventLoopThread | None = None


    def schedule(
        self, entrypoint: str, expression: str, **given: Unpack[ScheduleKeywords]
    ) -> Callable[[F], F]:
        """Register a ``def`` or ``async def`` function to run on a cron ``expression``.

        Takes the keywords of :class:`ScheduleKeywords`. Example::

            @sm.schedule("cleanup", "*/5 * * * *")
            def cleanup(schedule: Schedule) -> None: ...

        ``expression`` has five fields, six with seconds last, or is an alias
        such as ``@daily``; times are UTC. ``clean_old=True`` deletes every
        existing row of ``entrypoint`` when :meth:`run` starts (rows of old
        expressions, and those other processes registered). A positional
        parameter annotated ``ScheduleContext`` gets the context unless
        ``accepts_context`` says otherwise. Raises :class:`ConfigurationError`
        for an invalid expression or a pair registered twice.
        """
        if not isinstance(entrypoint, str) or not entrypoint:
            raise ConfigurationError(
                f"schedule entrypoint must be a non-empty string, got {entrypoint!r}"
            )
        key: ScheduleKey = (CronEntrypoint(entrypoint), normalize_expression(expression))
        self._check_unique(key)
        options.known_keywords("schedule()", given, ScheduleKeywords)
        factory = given.get("executor_factory") or ScheduleExecutor
        accepts_context = given.get("accepts_context")

        def register(func: F) -> F:
            self._check_unique(key)
            wants = wants_context(func) if accepts_context is None else accepts_context
            parameters = ScheduleExecutorFactoryParameters(
                entrypoint=key[0],
                expression=key[1],
                func=func,
                clean_old=bool(given.get("clean_old", False)),
                accepts_context=wants,
            )
            self.registry[key] = factory(parameters)
            return func

        return register

    def _check_unique(self, key: ScheduleKey) -> None:
        if key in self.registry:
            raise ConfigurationError(
                f"schedule {key[0]!r} with expression {key[1]!r} is already registered; "
                "each (entrypoint, expression) pair must be unique"
            )

    @property
    def active_heartbeat_ids(self) -> set[ScheduleId]:
        """Ids of the schedules running here now (a snapshot)."""
        with self._lock:
            return set(self._running)  # abandoned runs have left it


    def run(self, *, shutdown_timeout: timedelta | float | None = None) -> None:
        """Run due schedules until :attr:`shutdown` is set.

        Blocks the calling thread. From the main thread it handles SIGINT and
        SIGTERM: the first stops claiming and lets running schedules finish
        within ``shutdown_timeout`` (``None``: wait for them); schedules still
        running then, or at a second signal, are released at once (``async``
        ones are cancelled; ``def`` ones cannot be, and are left behind).
        Raises :class:`ConfigurationError` when nothing is registered and
        :class:`SchemaError` when the schema is missing. Database errors while
        polling are logged and retried with backoff; after one, the schedules
        are registered again before the next poll (their rows are gone if the
        schema was reinstalled meanwhile).
        """
        timeout = None if shutdown_timeout is None else options.duration(
            "shutdown_timeout", shutdown_timeout
        )
        if not self.registry:
            raise ConfigurationError("no schedules registered; decorate a function first")
        require_autocommit(self.queries.driver, "scheduler")
        self.verify_structure()
        self._stop_now.clear()
        with StopSignals(self.on_stop_signal, stopping=self.shutdown.is_set).installed():
            self._run(timeout)

    def verify_structure(self) -> None:
        """Raise :class:`SchemaError` unless the schema (schedules table included) exists."""
        verify_queue_schema(self.queries)

    def _run(self, timeout: timedelta | None) -> None:
        self._register_rows()
        with contextlib.ExitStack() as stack:
            if any(executor.is_async for executor in self.registry.values()):
                self._loop = EventLoopThread("pgqueue_sync-scheduler-event-loop").start()
                stack.callback(self._close_loop)
            heartbeat = Ticker(self._beat, SCHEDULE_HEARTBEAT_INTERVAL,
                               name="pgqueue_sync-schedule-heartbeat", jitter=0.0).start()
            stack.callback(heartbeat.stop)
            # Pushed last, so it runs first: rows are released before the heartbeat
            # stops and before the loop cancels what is left of async schedules.
            stack.callback(self._abandon_running)
            logger.info("scheduler started: %s",
                        ", ".join(f"{ep!r} ({expr})" for ep, expr in sorted(self.registry)))
            self._poll_loop()
            self._wait_for_running(timeout)
        logger.info("scheduler stopped")

    def _register_rows(self) -> None:
        clean = {key[0] for key, ex in self.registry.items() if ex.parameters.clean_old}
        if clean:
            self.queries.delete_schedule(entrypoints=sorted(clean))
        self.queries.insert_schedule(self._next_runs())

    def _next_runs(self) -> dict[tuple[CronEntrypoint | str, CronExpression | str], timedelta]:
        """Each registered pair -> the delay its claim sets ``next_run`` to."""
        return {key: executor.next_in() for key, executor in self.registry.items()}

    def _poll_loop(self) -> None:
        # The scheduler outlives a database restart: it backs off, then polls again.
        retry = DatabaseRetry("the scheduler", stop=self.shutdown, log=logger,
                              recovered="database reachable again; the scheduler resumes")
        retry.run(self._poll_once)

    def _poll_once(self, failed_before: bool) -> None:
        if failed_before:
            # The rows may be gone (the schema was reinstalled meanwhile):
            # register them again; rows that exist stay as they are.
            self.queries.insert_schedule(self._next_runs())
        for schedule in self.queries.fetch_schedule(self._next_runs()):
            self._dispatch(schedule)
        self.shutdown.wait(self._poll_wait())

    def _poll_wait(self) -> float:
        soonest = min(executor.next_in() for executor in self.registry.values())
        return max((soonest + POLL_LEEWAY).total_seconds(), 0.0)


    def _dispatch(self, schedule: Schedule) -> None:
        executor = self.registry[(schedule.entrypoint, schedule.expression)]
        with self._lock:
            if schedule.id in self._running:
                # Claimed again because its heartbeat went stale (e.g. the database
                # was unreachable for 30 s): the run in progress releases it.
                logger.warning("schedule %d (%r) is still running here; not starting it twice",
                               schedule.id, schedule.entrypoint)
                return
            run = self._running[schedule.id] = _Run(schedule)
        thread = threading.Thread(target=self._execute, args=(executor, run),
                                  name=f"pgqueue_sync-schedule-{schedule.id}", daemon=True)
        thread.start()

    def _execute(self, executor: AbstractScheduleExecutor, run: _Run) -> None:
        schedule = run.schedule
        logger.debug("running schedule %d (%r, %s)",
                     schedule.id, schedule.entrypoint, schedule.expression)
        context = ScheduleContext(resources=self.resources)
        try:
            if executor.is_async:
                self._await(executor.execute(schedule, context), run)
            else:
                reject_coroutine(executor.execute(schedule, context), schedule)
        except concurrent.futures.CancelledError:
            logger.warning("schedule %d (%r) was cancelled at shutdown",
                           schedule.id, schedule.entrypoint)
        except BaseException:  # sys.exit() too: logged; the schedule is released anyway
            logger.exception("schedule %d (%r) failed", schedule.id, schedule.entrypoint)
        else:
            logger.debug("schedule %d (%r) done", schedule.id, schedule.entrypoint)
        finally:
            self._finish(run)

    def _await(self, coro: Any, run: _Run) -> None:
        assert self._loop is not None
        future = self._loop.submit(coro)
        with self._lock:
            run.future = future
            abandoned = run.abandoned
        if abandoned:
            future.cancel()
        while True:
            try:
                future.result(timeout=WAIT_SLICE * 4)
                return
            except concurrent.futures.TimeoutError:
                continue

    def _finish(self, run: _Run) -> None:
        with self._lock:
            if run.abandoned:
                logger.warning("schedule %d (%r) finished after it was released at shutdown",
                               run.schedule.id, run.schedule.entrypoint)
                return
            run.releasing = True
        try:
            self._release([run.schedule.id])
        finally:
            with self._idle:
                self._running.pop(run.schedule.id, None)
                self._idle.notify_all()

    def _release(self, ids: list[ScheduleId]) -> None:
        try:
            self.queries.set_schedule_queued(ids)
        except DatabaseError as exc:
            logger.error("could not release schedules %s (%s); they are claimed again once "
                         "their heartbeat is %ds old", ids, exc,
                         SCHEDULE_STALE_AFTER.total_seconds())

    def _beat(self) -> Idle | None:
        # A failure propagates to the Ticker, which backs off and logs one line
        # per step (not one per second while the database is broken).
        ids = self.active_heartbeat_ids
        if not ids:
            return IDLE
        self.queries.update_schedule_heartbeat(ids)
        return None


    def on_stop_signal(self, request: StopRequest) -> None:
        """What a stop signal does to a running scheduler (see :mod:`pgqueue_sync.signals`)."""
        if request.at_once:
            logger.warning("%s again: releasing running schedules now", request.name)
            self._stop_now.set()
            return
        logger.info("received %s: finishing running schedules", request.name)
        self.shutdown.set()

    def _wait_for_running(self, timeout: timedelta | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout.total_seconds()
        with self._idle:
            while self._running and not self._stop_now.is_set():
                left = WAIT_SLICE if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    return
                self._idle.wait(min(left, WAIT_SLICE))

    def _abandon_running(self) -> None:
        with self._lock:
            runs = [run for run in self._running.values() if not run.releasing]
            for run in runs:
                run.abandoned = True
                del self._running[run.schedule.id]
            releasing = any(run.releasing for run in self._running.values())
        for run in runs:
            if run.future is not None:
                run.future.cancel()
        if runs:
            ids = [run.schedule.id for run in runs]
            logger.warning("releasing %d schedules still running at shutdown: %s",
                           len(ids), ids)
            self._release(ids)
        if releasing:
            self._wait_for_releases()

    def _wait_for_releases(self) -> None:
        deadline = time.monotonic() + JOIN_TIMEOUT
        with self._idle:
            while self._running and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(min(left, WAIT_SLICE))

    def _close_loop(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None
