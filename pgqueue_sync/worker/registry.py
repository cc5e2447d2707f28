"""What registering an entrypoint keeps: one :class:`Registration` per entrypoint
(the worker's ``entrypoint_registry``), and how ``entrypoint()``'s keywords are
checked and turned into one (executor, claim parameters, rate limit, process
isolation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from .. import options
from ..errors import ConfigurationError
from ..queries import EntrypointExecutionParameter
from ..types import Isolation, OnFailure
from .executors import (
    AbstractEntrypointExecutor,
    EntrypointExecutor,
    EntrypointExecutorParameters,
    EntrypointKeywords,
    accepts_context,
)
from .isolation import ProcessIsolation
from .ratelimit import TokenBucket, rate_bucket


@dataclasses.dataclass
class Registration:
    """One registered entrypoint: how its jobs are claimed, run and recorded."""

    executor: AbstractEntrypointExecutor
    on_failure: OnFailure
    #: What a claim of this entrypoint's jobs passes to the database (its
    #: fleet-wide concurrency limit, its stale-job timeout).
    claim_parameters: EntrypointExecutionParameter
    bucket: TokenBucket | None  # requests_per_second in this worker; None: no limit
    store_result: bool | None = None  # None: the worker's store_results
    timeout: timedelta | None = None  # entrypoint(timeout=...): None, no timeout
    #: The child processes of an ``isolation="process"`` entrypoint (None: threads).
    isolation: ProcessIsolation | None = None

    def stores(self, store_results: bool) -> bool:
        """Whether this entrypoint stores results, given the worker's ``store_results``."""
        return store_results if self.store_result is None else self.store_result


def handler_registration(
    name: str,
    func: Callable[..., Any],
    given: EntrypointKeywords,
    *,
    timeout: timedelta | None,
    isolation: Isolation,
) -> Registration:
    """The registration of ``func`` for ``entrypoint(name, **given)``, whose ``timeout``
    and ``isolation`` were checked already; raises :class:`ConfigurationError`."""
    limit = options.concurrency_limit(given.get("concurrency_limit", 0),
                                      given.get("serialized_dispatch", False))
    parameters = EntrypointExecutorParameters(
        concurrency_limit=limit,
        func=func,
        accepts_context=_accepts(func, given.get("accepts_context")),
        on_failure=options.on_failure(given.get("on_failure", "delete")),
    )
    runner = _isolate(name, parameters) if isolation == "process" else None
    executor = (given.get("executor_factory") or EntrypointExecutor)(parameters)
    stale = options.optional_duration("retry_timer", given.get("retry_timer"))
    rate = given.get("requests_per_second", float("inf"))
    registration = executor_registration(executor, limit=limit, rate=rate, stale_after=stale)
    registration.store_result = given.get("store_result")
    registration.timeout = timeout
    registration.isolation = runner
    return registration


def executor_registration(
    executor: AbstractEntrypointExecutor,
    *,
    limit: int,
    rate: float = float("inf"),
    stale_after: timedelta | None = None,
) -> Registration:
    """The registration of a ready-made executor; raises :class:`ConfigurationError`
    for a bad ``rate``."""
    bucket = rate_bucket(rate)
    claim = EntrypointExecutionParameter(concurrency_limit=limit, stale_after=stale_after)
    return Registration(executor, executor.parameters.on_failure, claim, bucket)


def shortest_stale(registry: Mapping[str, Registration], heartbeat_timeout: timedelta) -> timedelta:
    """The shortest stale-job timeout of any registered entrypoint."""
    timeouts = [reg.claim_parameters.stale_after for reg in registry.values()]
    return min([heartbeat_timeout, *(t for t in timeouts if t is not None)])


def heartbeat_periods(
    registry: Mapping[str, Registration], heartbeat_timeout: timedelta
) -> dict[str, float]:
    """Each entrypoint's heartbeat period (seconds): half its stale-job timeout."""
    return {
        name: (reg.claim_parameters.stale_after or heartbeat_timeout).total_seconds() / 2
        for name, reg in registry.items()
    }


def close_isolated(registry: Mapping[str, Registration], *, immediate: bool) -> None:
    """Stop the child processes of every ``isolation="process"`` entrypoint (see
    :meth:`ProcessIsolation.close`)."""
    for reg in registry.values():
        if reg.isolation is not None:
            reg.isolation.close(immediate=immediate)


def _isolate(name: str, parameters: EntrypointExecutorParameters) -> ProcessIsolation:
    """Make ``parameters`` call the handler in a child process (isolation="process")."""
    if parameters.accepts_context:
        raise ConfigurationError(
            f"entrypoint {name!r}: isolation='process' handlers take the job only (a "
            f"Context and its resources cannot cross into the child process); drop "
            f"the context parameter or use isolation='thread'"
        )
    processes = parameters.concurrency_limit or options.ISOLATED_PROCESSES
    runner = ProcessIsolation(parameters.func, entrypoint=name, processes=processes)
    # The executor calls the runner in a handler thread as it would the handler;
    # the runner takes the context to kill the child when the job is cancelled.
    parameters.func, parameters.accepts_context = runner, True
    return runner


def _accepts(func: Callable[..., Any], given: bool | None) -> bool:
    return accepts_context(func) if given is None else given
