"""Drive the real PgQueuer 1.6.0 package (async, asyncpg) from synchronous tests.

* :func:`asyncpg_params` turns a libpq DSN (what the ``dsn`` fixture yields) into
  ``asyncpg.connect`` keyword arguments.
* :func:`run_async_queries` runs one coroutine against PgQueuer's own async
  ``Queries`` over a fresh asyncpg connection (enqueue, cancel, requeue, ...).
* :class:`AsyncWorker` / :func:`async_worker` run a PgQueuer worker
  (``PgQueuer.run``) in a thread with its own event loop, so a test can run it
  next to a ``pgqueue_sync`` worker, and stop it with a bounded join.

Only PgQueuer's public API is used; nothing of it is copied into the product.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
from pgqueuer import AsyncpgDriver
from pgqueuer import PgQueuer as AsyncPgQueuer
from pgqueuer import Queries as AsyncQueries
from psycopg.conninfo import conninfo_to_dict

T = TypeVar("T")

#: libpq keyword -> asyncpg.connect keyword.
_ASYNCPG_KEYS = {
    "host": "host",
    "port": "port",
    "user": "user",
    "password": "password",
    "dbname": "database",
    "sslmode": "ssl",
}


def asyncpg_params(dsn: str) -> dict[str, Any]:
    """``asyncpg.connect`` keyword arguments for a libpq key=value DSN.

    ``options`` (e.g. ``-c synchronous_commit=off``) become ``server_settings``;
    other libpq keywords have no asyncpg equivalent a test needs and are refused.
    """
    params: dict[str, Any] = {}
    for key, value in conninfo_to_dict(dsn).items():
        if key in _ASYNCPG_KEYS:
            params[_ASYNCPG_KEYS[key]] = int(str(value)) if key == "port" else value
        elif key == "options":
            settings: dict[str, str] = {}
            for option in str(value).replace("-c ", "-c").split():
                name, _, setting = option.removeprefix("-c").partition("=")
                settings[name] = setting
            params["server_settings"] = settings
        else:
            raise ValueError(f"no asyncpg equivalent for DSN keyword {key!r} in the tests")
    return params


def run_async_queries(dsn: str, operation: Callable[[AsyncQueries], Awaitable[T]]) -> T:
    """Run ``operation(queries)`` with PgQueuer's async ``Queries`` on its own connection.

    Must be called from a thread without a running event loop (any test thread).
    """

    async def main() -> T:
        connection = await asyncpg.connect(**asyncpg_params(dsn))
        try:
            return await operation(AsyncQueries(AsyncpgDriver(connection)))
        finally:
            await connection.close()

    return asyncio.run(main())


class AsyncWorker:
    """A PgQueuer 1.6.0 worker (``PgQueuer.run``) in a thread with its own event loop.

    ``register(pgq)`` is called inside the worker's loop, before ``run``, to add
    entrypoints (PgQueuer 1.x accepts ``async def`` handlers only). ``run_options``
    go to ``PgQueuer.run`` unchanged, e.g. ``mode=QueueExecutionMode.drain``.
    The worker uses one asyncpg connection, as PgQueuer's own examples do.
    """

    def __init__(
        self,
        dsn: str,
        register: Callable[[AsyncPgQueuer], None],
        *,
        name: str = "pgqueuer-worker",
        **run_options: Any,
    ) -> None:
        self.dsn = dsn
        self.register = register
        self.run_options = run_options
        self.pgq: AsyncPgQueuer | None = None
        self.errors: list[BaseException] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._target, name=name, daemon=True)

    def start(self) -> AsyncWorker:
        """Start the worker's thread; returns ``self``."""
        self._thread.start()
        return self

    def _target(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by stop()/join()
            self.errors.append(exc)

    async def _main(self) -> None:
        connection = await asyncpg.connect(**asyncpg_params(self.dsn))
        try:
            pgq = AsyncPgQueuer(AsyncpgDriver(connection))
            self.register(pgq)
            with self._lock:
                self.pgq = pgq
                self._loop = asyncio.get_running_loop()
                if self._stop_requested:
                    pgq.shutdown.set()
            await pgq.run(**self.run_options)
        finally:
            with self._lock:
                self._loop = None
            await connection.close()

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def request_stop(self) -> None:
        """Set the worker's shutdown event from this thread (thread-safe, idempotent)."""
        with self._lock:
            self._stop_requested = True
            if self._loop is not None and self.pgq is not None:
                with contextlib.suppress(RuntimeError):  # loop already closing
                    self._loop.call_soon_threadsafe(self.pgq.shutdown.set)

    def join(self, timeout: float = 30.0) -> None:
        """Wait for the thread to end (drain mode ends by itself); raise what it raised."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"PgQueuer worker still running after {timeout}s"
        if self.errors:
            raise self.errors[0]

    def stop(self, timeout: float = 30.0) -> None:
        """Request shutdown, then :meth:`join` with a bound."""
        self.request_stop()
        self.join(timeout)


@contextlib.contextmanager
def async_worker(
    dsn: str, register: Callable[[AsyncPgQueuer], None], **run_options: Any
) -> Iterator[AsyncWorker]:
    """Run an :class:`AsyncWorker` for the ``with`` block; stop and join it afterwards.

    Errors of the worker are raised when the block itself did not fail.
    """
    worker = AsyncWorker(dsn, register, **run_options).start()
    try:
        yield worker
    except BaseException:
        worker.request_stop()
        worker._thread.join(30)
        raise
    worker.stop()
