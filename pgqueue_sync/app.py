"""``PgQueuer``: the facade and composition root, PgQueuer's name in sync form."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, MutableMapping
from datetime import timedelta
from typing import Any, TypeVar

from . import options
from .drivers.base import Driver
from .queries import Queries
from .scheduler.manager import ScheduleExecutorFactory, SchedulerManager, signal_handlers
from .settings import DBSettings
from .tracing import TracingProtocol
from .types import Channel, Isolation, OnFailure, QueueExecutionMode
from .worker.executors import AbstractEntrypointExecutor
from .worker.manager import ExecutorFactory, QueueManager

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
#: How often run() re-checks the scheduler thread while waiting for it to stop (seconds).
_JOIN_SLICE = 0.5


class PgQueuer:
    """One queue application: its entrypoints, schedules, shared ``resources`` and ``run()``.

    Example::

        conn = psycopg.connect(dsn, autocommit=True)
        pgq = PgQueuer(SyncPsycopgDriver(conn), resources={"http": session})

        @pgq.entrypoint("fetch")
        def fetch(job: Job, ctx: Context) -> None:
            ctx.resources["http"].get(job.payload.decode())

        pgq.run()  # blocks; SIGINT/SIGTERM stop it gracefully

    ``resources`` is the very mapping every job's ``Context.resources`` and
    every schedule's ``ScheduleContext.resources`` get. ``pgq.shutdown`` is a
    :class:`threading.Event` shared by the worker (``pgq.qm``) and the
    scheduler (``pgq.sm``); set it to stop ``run()``. ``store_results=True``
    keeps handlers' return values in the opt-in results table (see
    :mod:`pgqueue_sync.results`).
    """

    def __init__(
        self,
        connection: Driver,
        channel: Channel | str | None = None,
        resources: MutableMapping[str, Any] | None = None,
        queries: Queries | None = None,
        *,
        settings: DBSettings | None = None,
        tracer: TracingProtocol | None = None,
        store_results: bool = False,
    ) -> None:
        self.connection = connection
        self.queries = queries or Queries(connection, settings=settings, tracer=tracer)
        self.resources: MutableMapping[str, Any] = {} if resources is None else resources
        self.shutdown = threading.Event()
        self.qm = QueueManager(
            self.queries, channel, resources=self.resources, shutdown=self.shutdown, tracer=tracer,
            store_results=store_results,
        )
        self.sm = SchedulerManager(self.queries, resources=self.resources, shutdown=self.shutdown)
        self.channel = self.qm.channel

    @classmethod
    def from_psycopg_connection(cls, connection: Any, **kwargs: Any) -> PgQueuer:
        """A facade over one autocommit psycopg connection."""
        from .drivers.psycopg import SyncPsycopgDriver

        return cls(SyncPsycopgDriver(connection), **kwargs)

    @classmethod
    def from_psycopg_pool(cls, pool: Any, **kwargs: Any) -> PgQueuer:
        """A facade over a ``psycopg_pool.ConnectionPool`` (LISTEN uses its own connection)."""
        from .drivers.psycopg import SyncPsycopgPoolDriver

        return cls(SyncPsycopgPoolDriver(pool), **kwargs)

    @classmethod
    def in_memory(
        cls, channel: Channel | str | None = None, resources: MutableMapping[str, Any] | None = None
    ) -> PgQueuer:
        """A facade over the in-memory adapter: no database, one process, no durability.

        For tests of handlers; see :mod:`pgqueue_sync.testing`.
        """
        from .testing.inmemory import InMemoryDriver, InMemoryQueries

        driver = InMemoryDriver()
        queries = InMemoryQueries(driver)
        return cls(driver, channel, resources, queries)  # type: ignore[arg-type]

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
        timeout: timedelta | float | None = options.ENTRYPOINT_TIMEOUT,
        isolation: Isolation = options.ISOLATION,
    ) -> Callable[[F], F]:
        """Register a handler; see :meth:`QueueManager.entrypoint`."""
        return self.qm.entrypoint(
            name,
            concurrency_limit=concurrency_limit,
            accepts_context=accepts_context,
            on_failure=on_failure,
            executor_factory=executor_factory,
            serialized_dispatch=serialized_dispatch,
            requests_per_second=requests_per_second,
            retry_timer=retry_timer,
            store_result=store_result,
            timeout=timeout,
            isolation=isolation,
        )

    def register_executor(self, name: str, executor: AbstractEntrypointExecutor) -> None:
        """Register a ready-made executor; see :meth:`QueueManager.register_executor`."""
        self.qm.register_executor(name, executor)

    def schedule(
        self,
        entrypoint: str,
        expression: str,
        *,
        clean_old: bool = False,
        accepts_context: bool | None = None,
        executor_factory: ScheduleExecutorFactory | None = None,
    ) -> Callable[[F], F]:
        """Register a cron schedule; see :meth:`SchedulerManager.schedule`.

        Example::

            @pgq.schedule("nightly_report", "0 3 * * *")
            def nightly_report(schedule: Schedule) -> None: ...
        """
        return self.sm.schedule(
            entrypoint,
            expression,
            clean_old=clean_old,
            accepts_context=accepts_context,
            executor_factory=executor_factory,
        )

    def run(
        self,
        *,
        dequeue_timeout: timedelta | float = timedelta(seconds=30),
        batch_size: int = 10,
        mode: QueueExecutionMode | str = QueueExecutionMode.continuous,
        max_concurrent_tasks: int | None = None,
        shutdown_on_listener_failure: bool = False,
        heartbeat_timeout: timedelta | float = timedelta(seconds=30),
        log_aggregation_interval: timedelta | float | None = timedelta(seconds=30),
        concurrency: int | None = None,
        shutdown_timeout: timedelta | float | None = None,
        wait_for_database: timedelta | float = options.WAIT_FOR_DATABASE,
        queue_upkeep: bool = options.QUEUE_UPKEEP,
        listen_dsn: str | None = None,
        poll_only: bool = False,
        poll_interval: timedelta | float = options.POLL_INTERVAL,
        keep_log: timedelta | float | None = options.KEEP_LOG,
        keep_statistics: timedelta | float | None = options.KEEP_STATISTICS,
        keep_results: timedelta | float | None = options.KEEP_RESULTS,
    ) -> None:
        """Run the worker and the scheduler until shut down; see :meth:`QueueManager.run`.

        Blocks. With both entrypoints and schedules registered, the scheduler
        runs in the ``pgqueue_sync-scheduler`` thread next to the worker; if
        either fails, ``shutdown`` is set, both stop and the error is raised
        here. With only schedules, only the scheduler runs (the worker options
        other than ``shutdown_timeout`` do not apply). ``shutdown_timeout``
        bounds the wait for running jobs and running schedules alike.
        """
        worker_options: dict[str, Any] = {
            "dequeue_timeout": dequeue_timeout,
            "batch_size": batch_size,
            "mode": mode,
            "max_concurrent_tasks": max_concurrent_tasks,
            "shutdown_on_listener_failure": shutdown_on_listener_failure,
            "heartbeat_timeout": heartbeat_timeout,
            "log_aggregation_interval": log_aggregation_interval,
            "concurrency": concurrency,
            "shutdown_timeout": shutdown_timeout,
            "wait_for_database": wait_for_database,
            "queue_upkeep": queue_upkeep,
            "listen_dsn": listen_dsn,
            "poll_only": poll_only,
            "poll_interval": poll_interval,
            "keep_log": keep_log,
            "keep_statistics": keep_statistics,
            "keep_results": keep_results,
        }
        if not self.sm.registry:
            self.qm.run(**worker_options)
        elif not self.qm.entrypoint_registry:
            self.sm.run(shutdown_timeout=shutdown_timeout)
        else:
            options.RunOptions.build(**worker_options)  # fail before any thread starts
            self._run_both(worker_options)

    def _run_both(self, worker_options: dict[str, Any]) -> None:
        failures: list[BaseException] = []

        def scheduler() -> None:
            try:
                self.sm.run(shutdown_timeout=worker_options["shutdown_timeout"])
            except BaseException as exc:  # re-raised by run() in the caller's thread
                logger.error("scheduler failed (%r); stopping the worker", exc)
                failures.append(exc)
            finally:
                self.shutdown.set()  # fail fast: the worker stops with the scheduler

        thread = threading.Thread(target=scheduler, name="pgqueue_sync-scheduler", daemon=True)
        # While the worker runs, its own handlers take the signals (and hand ours
        # back afterwards); these serve the wait for the scheduler below, where a
        # further signal releases the schedules still running.
        with signal_handlers(self.sm._on_signal):
            thread.start()
            try:
                self.qm.run(**worker_options)
            finally:
                self.shutdown.set()
                while thread.is_alive():
                    thread.join(_JOIN_SLICE)
        if failures:
            raise failures[0]
