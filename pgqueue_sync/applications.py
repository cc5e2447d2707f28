"""``PgQueuer``: the facade and composition root, PgQueuer's name in sync form."""

from __future__ import annotations

import threading
from collections.abc import Callable, MutableMapping
from datetime import timedelta
from typing import Any, TypeVar

from .drivers.base import Driver
from .executors import AbstractEntrypointExecutor
from .qm import ExecutorFactory, QueueManager
from .queries import Queries
from .settings import DBSettings
from .types import Channel, OnFailure, QueueExecutionMode

F = TypeVar("F", bound=Callable[..., Any])


class PgQueuer:
    """One queue application: its entrypoints, shared ``resources`` and ``run()``.

    Example::

        conn = psycopg.connect(dsn, autocommit=True)
        pgq = PgQueuer(SyncPsycopgDriver(conn), resources={"http": session})

        @pgq.entrypoint("fetch")
        def fetch(job: Job, ctx: Context) -> None:
            ctx.resources["http"].get(job.payload.decode())

        pgq.run()  # blocks; SIGINT/SIGTERM stop it gracefully

    ``resources`` is the very mapping every job's ``Context.resources`` gets.
    ``pgq.shutdown`` is a :class:`threading.Event`; set it to stop ``run()``.
    """

    def __init__(
        self,
        connection: Driver,
        channel: Channel | str | None = None,
        resources: MutableMapping[str, Any] | None = None,
        queries: Queries | None = None,
        *,
        settings: DBSettings | None = None,
    ) -> None:
        self.connection = connection
        self.queries = queries or Queries(connection, settings=settings)
        self.resources: MutableMapping[str, Any] = {} if resources is None else resources
        self.shutdown = threading.Event()
        self.qm = QueueManager(
            self.queries, channel, resources=self.resources, shutdown=self.shutdown
        )
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
        from .inmemory import InMemoryDriver, InMemoryQueries

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
        )

    def register_executor(self, name: str, executor: AbstractEntrypointExecutor) -> None:
        """Register a ready-made executor; see :meth:`QueueManager.register_executor`."""
        self.qm.register_executor(name, executor)

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
    ) -> None:
        """Run the worker until shut down; see :meth:`QueueManager.run`."""
        self.qm.run(
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
