"""Schedule executors: what runs a schedule's function, and how a cron expression is read.

:class:`ScheduleExecutor` calls the registered ``def`` or ``async def``
function; a custom executor (``schedule(executor_factory=...)``) subclasses
:class:`AbstractScheduleExecutor`. :class:`ScheduleKeywords` declares the
options of ``schedule()`` once.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypedDict

from croniter import CroniterBadDateError, croniter

from ..errors import ConfigurationError
from ..models import Schedule, utc_now
from ..types import CronEntrypoint, CronExpression
from ..worker.cancellation import ScheduleContext

ScheduleFunction = Callable[..., Any]


def normalize_expression(expression: str) -> CronExpression:
    """The text PgQueuer stores for ``expression``: ``@hourly`` -> ``0 * * * *``.

    Rows are unique per ``(expression, entrypoint)``, so this exact text is
    what lets a PgQueuer scheduler and this one share a row. Raises
    :class:`ConfigurationError` for anything croniter rejects.
    """
    if not isinstance(expression, str) or not croniter.is_valid(expression):
        raise ConfigurationError(
            f"invalid cron expression {expression!r}: use five fields (minute hour "
            "day-of-month month day-of-week), six with seconds last ('* * * * * */10'), "
            "or an alias such as '@hourly'"
        )
    cron = croniter(expression)
    try:
        cron.get_next(float)
    except CroniterBadDateError:
        raise ConfigurationError(
            f"cron expression {expression!r} never fires (no such date, e.g. 31 February); "
            "fix its day-of-month and month fields"
        ) from None
    return CronExpression(" ".join(cron.expressions))


@dataclasses.dataclass
class ScheduleExecutorFactoryParameters:
    """What a schedule executor factory receives for one registration."""

    entrypoint: CronEntrypoint
    expression: CronExpression
    func: ScheduleFunction
    clean_old: bool
    accepts_context: bool = False


class AbstractScheduleExecutor(abc.ABC):
    """Runs one schedule's function. Subclass it to change how the function is called.

    ``execute`` may be a plain method (run in its own thread) or an ``async def``
    (run on the scheduler's event-loop thread); override :attr:`is_async` if it
    returns a coroutine without being a coroutine function.
    """

    def __init__(self, parameters: ScheduleExecutorFactoryParameters) -> None:
        self.parameters = parameters

    @property
    def is_async(self) -> bool:
        """True when ``execute`` returns a coroutine."""
        return inspect.iscoroutinefunction(self.execute)

    @abc.abstractmethod
    def execute(self, schedule: Schedule, context: ScheduleContext) -> Any:
        """Run the schedule once; an exception is logged and the schedule released."""

    def get_next(self) -> datetime:
        """The next fire time after now, in UTC (from this host's clock)."""
        cron = croniter(self.parameters.expression, start_time=utc_now())
        return datetime.fromtimestamp(cron.get_next(float), timezone.utc)

    def next_in(self) -> timedelta:
        """Time from now until :meth:`get_next`."""
        return self.get_next() - utc_now()


class ScheduleExecutor(AbstractScheduleExecutor):
    """The default: call ``func(schedule)`` or ``func(schedule, context)``."""

    def __init__(self, parameters: ScheduleExecutorFactoryParameters) -> None:
        super().__init__(parameters)
        self._func_is_async = is_async_callable(parameters.func)

    @property
    def is_async(self) -> bool:
        """True for ``async def`` functions."""
        return self._func_is_async

    def execute(self, schedule: Schedule, context: ScheduleContext) -> Any:
        """Call the function; for async functions this returns its coroutine."""
        if self.parameters.accepts_context:
            return self.parameters.func(schedule, context)
        return self.parameters.func(schedule)


ScheduleExecutorFactory = Callable[[ScheduleExecutorFactoryParameters], AbstractScheduleExecutor]


class ScheduleKeywords(TypedDict, total=False):
    """The keywords of ``schedule()``, declared once for :meth:`SchedulerManager.schedule`
    and :meth:`PgQueuer.schedule <pgqueue_sync.app.PgQueuer.schedule>`."""

    #: Delete every existing row of the entrypoint when :meth:`SchedulerManager.run` starts.
    clean_old: bool
    #: Pass a ``ScheduleContext`` (None: when a parameter is annotated so).
    accepts_context: bool | None
    #: Builds the executor (default :class:`ScheduleExecutor`).
    executor_factory: ScheduleExecutorFactory | None


def wants_context(func: Callable[..., Any]) -> bool:
    """True when a positional parameter is annotated exactly as ``ScheduleContext``."""
    try:
        parameters = inspect.signature(func, eval_str=True).parameters
    except (NameError, TypeError, ValueError):
        try:
            parameters = inspect.signature(func).parameters
        except (TypeError, ValueError):
            return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(
        p.kind in positional
        and (p.annotation is ScheduleContext or p.annotation == "ScheduleContext")
        for p in parameters.values()
    )


def is_async_callable(func: object) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    if inspect.iscoroutinefunction(func):
        return True
    # An instance whose class defines ``async def __call__``.
    call = inspect.getattr_static(type(func), "__call__", None)
    return inspect.iscoroutinefunction(call)


def reject_coroutine(result: object, schedule: Schedule) -> None:
    if inspect.iscoroutine(result):
        result.close()
        raise ConfigurationError(
            f"schedule {schedule.entrypoint!r} returned a coroutine from a sync executor; "
            "declare the function 'async def' or set is_async on the executor"
        )
