"""How an entrypoint's function is called: the executor extension point and retries.

An executor's ``execute(job, context)`` is called from a handler thread; when
the executor reports :attr:`AbstractEntrypointExecutor.is_async`, ``execute``
returns a coroutine that the worker runs on its event-loop thread instead.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import random
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, TypedDict

from ..errors import ConfigurationError, RetryRequested
from ..models import Job
from ..types import Isolation, OnFailure
from .cancellation import Context

Handler = Callable[..., Any]


@dataclasses.dataclass
class EntrypointExecutorParameters:
    """What an executor factory receives for one entrypoint."""

    concurrency_limit: int
    func: Handler
    accepts_context: bool = False
    on_failure: OnFailure = "delete"


class AbstractEntrypointExecutor(abc.ABC):
    """Runs one entrypoint's jobs. Subclass it to change how handlers are called.

    ``execute`` may be a plain method (run in a handler thread) or an
    ``async def`` (run on the event-loop thread); override :attr:`is_async`
    if it returns a coroutine without being a coroutine function.
    """

    def __init__(self, parameters: EntrypointExecutorParameters) -> None:
        self.parameters = parameters

    @property
    def is_async(self) -> bool:
        """True when ``execute`` returns a coroutine."""
        return inspect.iscoroutinefunction(self.execute)

    @abc.abstractmethod
    def execute(self, job: Job, context: Context) -> Any:
        """Run the job; raise to fail it, raise :class:`RetryRequested` to retry it."""

    def timed_out(self, job: Job, error: TimeoutError) -> BaseException:
        """What to record when ``job`` outlived its entrypoint's ``timeout``: the
        exception :meth:`execute` would have raised had the handler raised
        ``error``. The default records ``error`` itself (a failure); an executor
        that turns failures into retries returns its retry instead."""
        return error


class EntrypointExecutor(AbstractEntrypointExecutor):
    """The default: call ``func(job)`` or ``func(job, context)``."""

    def __init__(self, parameters: EntrypointExecutorParameters) -> None:
        super().__init__(parameters)
        self._func_is_async = inspect.iscoroutinefunction(parameters.func)

    @property
    def is_async(self) -> bool:
        """True for ``async def`` handlers."""
        return self._func_is_async

    def execute(self, job: Job, context: Context) -> Any:
        """Call the handler; for async handlers this returns its coroutine."""
        if self.parameters.accepts_context:
            return self.parameters.func(job, context)
        return self.parameters.func(job)


class DatabaseRetryEntrypointExecutor(EntrypointExecutor):
    """Turns failures into durable retries with exponential backoff.

    While ``job.attempts < max_attempts`` an exception becomes
    ``RetryRequested(delay=min(initial_delay * backoff_multiplier ** attempts,
    max_delay))``; afterwards it propagates (``exception``, or ``failed`` with
    ``on_failure="hold"``). ``jitter`` (0..1) spreads each delay by up to that
    fraction either way. The retry state lives in the row, so it survives restarts.
    """

    def __init__(
        self,
        parameters: EntrypointExecutorParameters,
        max_attempts: int = 5,
        initial_delay: timedelta = timedelta(seconds=1),
        max_delay: timedelta = timedelta(minutes=5),
        backoff_multiplier: float = 2.0,
        jitter: float = 0.0,
    ) -> None:
        super().__init__(parameters)
        _check_backoff(max_attempts, initial_delay, max_delay, backoff_multiplier, jitter)
        self.max_attempts = max_attempts
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.backoff_multiplier = backoff_multiplier
        self.jitter = jitter

    def execute(self, job: Job, context: Context) -> Any:
        """Run the handler, converting failures into retries while attempts remain."""
        if self.is_async:
            return self._execute_async(job, context)
        try:
            return super().execute(job, context)
        except RetryRequested:
            raise
        except Exception as exc:
            raise self._retry_for(job, exc) from exc

    async def _execute_async(self, job: Job, context: Context) -> Any:
        coro: Coroutine[Any, Any, Any] = super().execute(job, context)
        try:
            return await coro
        except RetryRequested:
            raise
        except Exception as exc:
            raise self._retry_for(job, exc) from exc

    def timed_out(self, job: Job, error: TimeoutError) -> BaseException:
        """A timeout counts as a failure: retried while attempts remain."""
        retry = self._retry_for(job, error)
        if retry is not error:
            retry.__cause__ = error
        return retry

    def _retry_for(self, job: Job, exc: Exception) -> BaseException:
        if job.attempts >= self.max_attempts:
            return exc
        return RetryRequested(delay=self.delay_for(job.attempts), reason=str(exc))

    def delay_for(self, attempts: int) -> timedelta:
        """The backoff before the retry that follows ``attempts`` earlier retries."""
        try:
            seconds = self.initial_delay.total_seconds() * self.backoff_multiplier**attempts
        except OverflowError:  # a job with thousands of attempts: the cap applies
            seconds = float("inf")
        seconds = min(seconds, self.max_delay.total_seconds())
        if self.jitter:
            seconds *= 1 + random.uniform(-self.jitter, self.jitter)
        return timedelta(seconds=max(seconds, 0.0))


#: Builds an entrypoint's executor from its parameters (``entrypoint(executor_factory=)``).
ExecutorFactory = Callable[[EntrypointExecutorParameters], AbstractEntrypointExecutor]


class EntrypointKeywords(TypedDict, total=False):
    """The keywords of ``entrypoint()``, declared once for :meth:`QueueManager.entrypoint
    <pgqueue_sync.worker.manager.QueueManager.entrypoint>` and :meth:`PgQueuer.entrypoint
    <pgqueue_sync.app.PgQueuer.entrypoint>`."""

    #: Running jobs of this entrypoint fleet-wide (0: no limit); every worker must agree.
    concurrency_limit: int
    #: Pass a :class:`Context` to the handler (None: when its signature asks for one).
    accepts_context: bool | None
    #: What a failed job becomes: ``"delete"`` (logged, removed) or ``"hold"`` (kept).
    on_failure: OnFailure
    #: Builds the executor (default :class:`EntrypointExecutor`).
    executor_factory: ExecutorFactory | None
    #: True means a ``concurrency_limit`` of 1.
    serialized_dispatch: bool
    #: A token bucket in *this* worker (default: no limit).
    requests_per_second: float
    #: This entrypoint's stale-job timeout (default: the worker's ``heartbeat_timeout``).
    retry_timer: timedelta | float | None
    #: Store the handler's return value (None: the worker's ``store_results``).
    store_result: bool | None
    #: Bound on each run (None: no timeout); see docs/timeouts.md.
    timeout: timedelta | float | None
    #: ``"thread"`` (default) or ``"process"``; see docs/timeouts.md.
    isolation: Isolation



def retry_request(exc: BaseException) -> RetryRequested | None:
    """The retry an exception asks for: itself, or the longest of a group of retries.

    Returns ``None`` unless ``exc`` is a :class:`RetryRequested` or an exception
    group made only of them.
    """
    if isinstance(exc, RetryRequested):
        return exc
    members = getattr(exc, "exceptions", None)
    if not members or not isinstance(members, (list, tuple)):
        return None
    retries = [retry_request(m) for m in members]
    if any(r is None for r in retries):
        return None
    return max((r for r in retries if r is not None), key=lambda r: r.delay)


def accepts_context(func: Handler) -> bool:
    """True when a positional parameter of ``func`` is annotated exactly as ``Context``."""
    try:
        signature = inspect.signature(func, eval_str=True)
    except (NameError, TypeError, ValueError):
        signature = inspect.signature(func)
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(
        p.kind in positional and (p.annotation is Context or p.annotation == "Context")
        for p in signature.parameters.values()
    )


def _check_backoff(
    max_attempts: int,
    initial_delay: timedelta,
    max_delay: timedelta,
    multiplier: float,
    jitter: float,
) -> None:
    if max_attempts < 0:
        raise ConfigurationError(f"max_attempts must be >= 0, got {max_attempts}")
    if initial_delay < timedelta(0) or max_delay < initial_delay:
        raise ConfigurationError(
            f"need 0 <= initial_delay <= max_delay, got {initial_delay} and {max_delay}"
        )
    if multiplier < 1:
        raise ConfigurationError(f"backoff_multiplier must be >= 1, got {multiplier}")
    if not 0 <= jitter <= 1:
        raise ConfigurationError(f"jitter must be between 0 and 1, got {jitter}")
