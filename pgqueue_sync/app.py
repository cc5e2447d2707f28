"""``PgQueuer``: the facade and composition root, PgQueuer's name in sync form."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar

from . import options
from .drivers.base import Driver
from .queries import Queries
from .scheduler.executors import ScheduleKeywords
from .scheduler.manager import SchedulerManager
from .settings import DBSettings
from .signals import StopSignals
from .tracing import TracingProtocol
from .types import Channel
from .worker.executors import AbstractEntrypointExecutor, EntrypointKeywords
from .worker.manager import QueueManager

if TYPE_CHECKING:
    from typing_extensions import Unpack

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

    def entrypoint(self, name: str, **given: Unpack[EntrypointKeywords]) -> Callable[[F], F]:
        """Register a handler; see :meth:`QueueManager.entrypoint` and
        :class:`~pgqueue_sync.worker.executors.EntrypointKeywords`."""
        return self.qm.entrypoint(name, **given)

    def register_executor(self, name: str, executor: AbstractEntrypointExecutor) -> None:
        """Register a ready-made executor; see :meth:`QueueManager.register_executor`."""
        self.qm.register_executor(name, executor)

    def schedule(
        self, entrypoint: str, expression: str, **given: Unpack[ScheduleKeywords]
    ) -> Callable[[F], F]:
        """Register a cron schedule; see :meth:`SchedulerManager.schedule`.

        Example::

            @pgq.schedule("nightly_report", "0 3 * * *")
            def nightly_report(schedule: Schedule) -> None: ...
        """
        return self.sm.schedule(entrypoint, expression, **given)

    def run(self, **given: Unpack[options.RunKeywords]) -> None:
        """Run the worker and the scheduler until shut down; see :meth:`QueueManager.run`.

        Blocks. With both entrypoints and schedules registered, the scheduler
        runs in the ``pgqueue_sync-scheduler`` thread next to the worker; if
        either fails, ``shutdown`` is set, both stop and the error is raised
        here. With only schedules, only the scheduler runs (the worker options
        other than ``shutdown_timeout`` do not apply). ``shutdown_timeout``
        bounds the wait for running jobs and running schedules alike.
        """
        options.known_keywords("run()", given, options.RunKeywords)
        if not self.sm.registry:
            self.qm.run(**given)
        elif not self.qm.entrypoint_registry:
            self.sm.run(shutdown_timeout=given.get("shutdown_timeout"))
        else:
            options.RunOptions.build(**given)  # fail before any thread starts
            self._run_both(given)

    def _run_both(self, given: options.RunKeywords) -> None:
        failures: list[BaseException] = []

        def scheduler() -> None:
            try:
                self.sm.run(shutdown_timeout=given.get("shutdown_timeout"))
            except BaseException as exc:  # re-raised by run() in the caller's thread
                logger.error("scheduler failed (%r); stopping the worker", exc)
                failures.append(exc)
            finally:
                self.shutdown.set()  # fail fast: the worker stops with the scheduler

        thread = threading.Thread(target=scheduler, name="pgqueue_sync-scheduler", daemon=True)
        # While the worker runs, its own handlers take the signals (and hand ours
        # back afterwards); these serve the wait for the scheduler below, where a
        # further signal releases the schedules still running.
        with StopSignals(self.sm.on_stop_signal, stopping=self.shutdown.is_set).installed():
            thread.start()
            try:
                self.qm.run(**given)
            finally:
                self.shutdown.set()
                while thread.is_alive():
                    thread.join(_JOIN_SLICE)
        if failures:
            raise failures[0]
