"""Run an entrypoint's ``def`` handler in a child process, where a timeout can stop it.

A thread cannot be stopped: a handler that hangs in a worker thread holds that
thread until it returns. With ``entrypoint(..., isolation="process")`` the
worker thread instead hands the job to a pool of child processes and waits.
When the job's cancellation token is set (the entrypoint's ``timeout`` passed,
see :mod:`pgqueue_sync.worker.timeouts`, or the job was cancelled), the child running
it is killed and the worker thread is free at once.

What crosses the process boundary (pickled): the handler, by reference (its
module is imported in the child, so it must be a module-level function whose
module imports without side effects such as opening connections), the
:class:`~pgqueue_sync.models.Job`, and the handler's return value or exception.
What does not: ``Context``, its ``resources`` and its cancellation token (a
child cannot share the worker's connections or objects), so an isolated
handler takes the job only.

The pool is `pebble <https://pypi.org/project/Pebble/>`_'s ``ProcessPool``
(the ``process`` extra): it kills a child whose task times out or is
cancelled, reports a child that died, and starts replacements, which is the
delicate part of a hand-written pool. Children are started with ``spawn``:
a fresh interpreter each, so no connection, pool, thread or event loop of
the worker crosses into them. The pool starts on the first job, not at
registration, so a process that forks after registering never copies one.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import multiprocessing
import threading
from typing import Any

from ..errors import ConfigurationError, PgqException
from ..models import Job
from .cancellation import Context, JobCancelled

logger = logging.getLogger(__name__)

#: The start method of the children: a fresh interpreter, nothing inherited.
START_METHOD = "spawn"
#: Seconds :meth:`ProcessIsolation.close` waits for children to finish their jobs.
CLOSE_TIMEOUT = 10.0
#: How often a call waiting for its child looks whether the pool was stopped (seconds).
RESULT_WAIT_SLICE = 0.5
#: How to get the pool library.
INSTALL_HINT = 'pip install "pgqueue_sync[process]"'


class HandlerProcessDied(PgqException, RuntimeError):
    """The child process running a handler died before returning (killed or crashed)."""


def check_isolatable(func: Any, entrypoint: str) -> None:
    """Raise :class:`ConfigurationError` unless ``func`` can run in a child process."""
    where = f"entrypoint {entrypoint!r}: isolation='process'"
    qualname = getattr(func, "__qualname__", "")
    if not callable(func) or not getattr(func, "__module__", None) or not qualname:
        raise ConfigurationError(f"{where} needs a plain function, got {func!r}")
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise ConfigurationError(
            f"{where} needs a module-level function (the child imports it by name), but "
            f"{qualname!r} is defined inside a function or is a lambda; move it to module level"
        )
    if inspect.iscoroutinefunction(func):
        raise ConfigurationError(
            f"{where} runs def handlers; {qualname!r} is async def (an async handler is "
            f"cancelled at its timeout without a process)"
        )
    _pebble()  # fail at registration, not at the first job, when the extra is missing


class ProcessIsolation:
    """The callable registered in place of an isolated handler: ``(job, context) -> result``.

    ``processes`` children run at most that many jobs of this entrypoint at once
    (more wait for a free child). Setting the job's cancellation token kills the
    child running it, and the call raises :class:`JobCancelled`.
    """

    def __init__(self, func: Any, *, entrypoint: str, processes: int) -> None:
        check_isolatable(func, entrypoint)
        if processes < 1:
            raise ConfigurationError(
                f"entrypoint {entrypoint!r}: isolation='process' needs at least one "
                f"process, got {processes}"
            )
        self.func = func
        self.entrypoint = entrypoint
        self.processes = processes
        self._pool: Any = None
        self._lock = threading.Lock()
        self._kills = 0  # immediate closes so far: a waiting call gives up on a change

    def __call__(self, job: Job, context: Context) -> Any:
        with self._lock:
            future = self._ensure_pool().schedule(self.func, args=(job,))
            generation = self._kills
        # A cancelled job (or one past its entrypoint's timeout) kills its child.
        context.cancellation.add_callback(future.cancel)
        try:
            return self._result(future, generation)
        except concurrent.futures.CancelledError:
            raise JobCancelled() from None
        except _pebble().ProcessExpired as exc:
            raise HandlerProcessDied(
                f"the process running entrypoint {self.entrypoint!r} died before returning "
                f"(exit code {exc.exitcode})"
            ) from None

    def _result(self, future: Any, generation: int) -> Any:
        # In slices: a pool stopped at once (a hand-back) must free this thread even
        # if its future is never resolved.
        while True:
            try:
                return future.result(timeout=RESULT_WAIT_SLICE)
            except TimeoutError:
                if self._kills != generation:
                    future.cancel()
                    raise HandlerProcessDied(
                        f"entrypoint {self.entrypoint!r}: its process was stopped with the "
                        f"worker"
                    ) from None

    def close(self, *, immediate: bool = False, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop the children: let running jobs finish (up to ``timeout``), or kill them
        at once with ``immediate``. Idempotent; the next job (a later ``run()``)
        starts a new pool."""
        with self._lock:
            pool, self._pool = self._pool, None
            if immediate:
                self._kills += 1
        if pool is None:
            return
        if immediate:
            pool.stop()
        else:
            pool.close()
        pool.join(timeout)
        if pool.active:
            logger.warning("entrypoint %r: child processes still running after %.0f s; "
                           "killing them", self.entrypoint, timeout)
            pool.stop()
            pool.join(timeout)

    def _ensure_pool(self) -> Any:
        # Called with the lock held.
        if self._pool is None:
            self._pool = _pebble().ProcessPool(
                max_workers=self.processes, context=multiprocessing.get_context(START_METHOD)
            )
        return self._pool


def _pebble() -> Any:
    try:
        import pebble
    except ImportError:
        raise ConfigurationError(
            f"isolation='process' needs the pebble library: {INSTALL_HINT}"
        ) from None
    return pebble
