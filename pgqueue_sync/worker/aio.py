"""The one event-loop thread that runs ``async def`` handlers; the only asyncio user.

Started only when an async handler is registered. Sync code hands it
coroutines and gets ``concurrent.futures.Future`` objects back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple, TypeVar

from ..errors import PgqException

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: How long start() waits for the loop to come up, and close() for it to stop.
LOOP_START_TIMEOUT = 10.0
LOOP_STOP_TIMEOUT = 10.0


class EscapedBaseException(Exception):  # noqa: N818 - it wraps, it is not an error kind
    """Carries a ``SystemExit``/``KeyboardInterrupt`` (or other ``BaseException``)
    raised by a coroutine started with :meth:`EventLoopThread.spawn`.

    asyncio re-raises those out of the loop, which would stop it for every task;
    spawned coroutines raise this instead, with the original as :attr:`original`.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(f"{type(original).__name__} raised in a coroutine")
        self.original = original


class TaskEnd(NamedTuple):
    """How a task spawned on the loop ended, so code off this module need not read
    ``asyncio.Task`` itself: cancelled, or its error (unwrapped from
    :class:`EscapedBaseException`), or its value."""

    cancelled: bool
    error: BaseException | None
    value: Any

    @property
    def raised(self) -> BaseException | None:
        """What the task raised, a cancellation as :class:`asyncio.CancelledError`."""
        return asyncio.CancelledError() if self.cancelled else self.error


def task_end(task: asyncio.Task[Any]) -> TaskEnd:
    """Read how ``task`` (done) ended; a failure to read it is its error."""
    try:
        if task.cancelled():
            return TaskEnd(True, None, None)
        error = task.exception()
        if isinstance(error, EscapedBaseException):
            error = error.original
        return TaskEnd(False, error, None if error is not None else task.result())
    except BaseException as exc:
        return TaskEnd(False, exc, None)


class EventLoopThread:
    """A named daemon thread running an asyncio loop; a context manager.

    Thread-safe: :meth:`submit` may be called from any thread but the loop's own.
    ``on_crash(error)`` runs (on the loop thread) if the loop stops without
    :meth:`close` having been called.
    """

    def __init__(
        self,
        name: str = "pgqueue_sync-event-loop",
        *,
        on_crash: Callable[[BaseException | None], object] | None = None,
    ) -> None:
        self.name = name
        self._on_crash = on_crash
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future[asyncio.AbstractEventLoop] | None = None

    def start(self) -> EventLoopThread:
        """Start the loop; blocks until it runs. Idempotent."""
        if self._thread is not None:
            return self
        self._ready = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        self._loop = self._ready.result(timeout=LOOP_START_TIMEOUT)
        return self

    def _run(self) -> None:
        assert self._ready is not None
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._ready.set_result(loop)
        crash: BaseException | None = None
        try:
            loop.run_forever()
        except BaseException as exc:  # reported below, the thread ends either way
            crash = exc
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            except BaseException:
                logger.debug("could not shut down async generators", exc_info=True)
            loop.close()
            if not self._closing and self._on_crash is not None:
                self._on_crash(crash)

    def is_alive(self) -> bool:
        """True while the loop's thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns at once with its future.

        Cancelling the returned future cancels the coroutine's task.
        """
        loop = self._require_loop()
        if threading.current_thread() is self._thread:
            coro.close()
            raise PgqException("submit() called from the event-loop thread itself")
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def spawn(
        self,
        coro: Coroutine[Any, Any, T],
        on_done: Callable[[TaskEnd], object],
    ) -> Callable[[], None]:
        """Start ``coro`` as a task on the loop; ``on_done`` gets how it ended
        (:class:`TaskEnd`), on the loop thread.

        Cheaper than :meth:`submit` (no ``concurrent.futures.Future`` and no
        future chaining: one hand-over to the loop). Returns a thread-safe
        function that cancels the task, even before it has started.
        """
        loop = self._require_loop()
        tasks: list[asyncio.Task[T]] = []

        def start() -> None:
            task = loop.create_task(_contained(coro))
            task.add_done_callback(lambda ended: on_done(task_end(ended)))
            tasks.append(task)

        def cancel_on_loop() -> None:
            # Callbacks run in FIFO order, so start() has run by now.
            for task in tasks:
                task.cancel()

        def cancel() -> None:
            loop.call_soon_threadsafe(cancel_on_loop)

        loop.call_soon_threadsafe(start)
        return cancel

    def call_soon(self, callback: Any, *args: Any) -> None:
        """Run a plain callback on the loop thread (thread-safe)."""
        self._require_loop().call_soon_threadsafe(callback, *args)

    def close(self, timeout: float = LOOP_STOP_TIMEOUT) -> None:
        """Cancel leftover tasks, stop the loop and join the thread (bounded)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._closing = True
        if loop.is_running():
            loop.call_soon_threadsafe(_cancel_all_and_stop, loop)
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("event-loop thread did not stop within %.1fs", timeout)
        self._loop = self._thread = None

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise PgqException("the event-loop thread is not running; call start() first")
        return self._loop

    def __enter__(self) -> EventLoopThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _contained(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return await coro
    except (asyncio.CancelledError, Exception):
        raise
    except BaseException as exc:  # SystemExit, KeyboardInterrupt: the task's, not the loop's
        raise EscapedBaseException(exc) from exc


def _cancel_all_and_stop(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if not tasks:
        loop.stop()
        return
    gathered = asyncio.gather(*tasks, return_exceptions=True)
    gathered.add_done_callback(lambda _: loop.stop())
