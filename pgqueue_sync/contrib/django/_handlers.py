"""The declared handlers, registered as the worker registers them, for the test helpers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from ...app import PgQueuer
from ...errors import ConfigurationError
from ...models import Job
from ...queries import EntrypointExecutionParameter, Queries
from ...worker.cancellation import CancellationToken, Context
from . import registry
from .conf import get_settings
from .errors import DjangoConfigurationError
from .producer import get_queries
from .task_store import RETURN_KEY

logger = logging.getLogger(__name__)


class UnknownEntrypointError(ConfigurationError):
    """A job names an entrypoint that has no declared handler; the message lists those that do."""

    def __init__(self, entrypoint: str, declared: Sequence[str]) -> None:
        self.entrypoint = entrypoint
        self.declared = list(declared)
        names = ", ".join(map(repr, declared)) or "none"
        super().__init__(
            f"no handler is declared for entrypoint {entrypoint!r} (declared: {names}); "
            f"declare it with @entrypoint({entrypoint!r}) in an app's tasks module "
            "or a PGQUEUE_SYNC['TASK_MODULES'] module"
        )



class Handlers:
    """The declared entrypoints and Django Tasks queues, registered as the worker registers them.

    A throw-away :class:`PgQueuer` serves as the registry (option checks and
    executors as in the worker); it never runs.
    """

    def __init__(self, using: str | None, resources: MutableMapping[str, Any] | None) -> None:
        _import_declarations()
        conf = get_settings()
        self.alias = using or conf.database_alias
        self.queries: Queries = get_queries(self.alias)
        self.pgq = PgQueuer(self.queries.driver, queries=self.queries, resources=resources,
                            store_results=conf.store_results)
        for name, declared in registry.entrypoints().items():
            self.pgq.entrypoint(name, **declared.options)(declared.func)
        self.tasks = frozenset(_register_task_queues(self.pgq))
        self._registry = self.pgq.qm.entrypoint_registry

    @property
    def names(self) -> list[str]:
        return sorted(self._registry)

    def require(self, name: str) -> None:
        if name not in self._registry:
            raise UnknownEntrypointError(name, self.names)

    def claim_parameters(self, names: Iterable[str]) -> dict[str, EntrypointExecutionParameter]:
        return {name: self._registry[name].claim_parameters for name in names}

    def run(self, job: Job) -> Any:
        """Run one job in this thread; raises what the handler raises."""
        if job.entrypoint in self.tasks:
            from .task_runner import run_task_job

            # Not DjangoTaskExecutor.execute: its tidy_connections() would
            # close the test's connection inside its transaction.
            return run_task_job(job)
        executor = self._registry[job.entrypoint].executor
        context = Context(CancellationToken(), self.pgq.resources)
        value = executor.execute(job, context)
        return _await(value) if executor.is_async else value

    def return_value(self, job: Job, value: Any) -> Any:
        if job.entrypoint in self.tasks and isinstance(value, Mapping):
            return value.get(RETURN_KEY)
        return value

    def stores_result(self, name: str) -> bool:
        reg = self._registry[name]
        return self.pgq.qm.store_results if reg.store_result is None else reg.store_result

    def holds_failures(self, name: str) -> bool:
        return self._registry[name].on_failure == "hold"


def _register_task_queues(pgq: PgQueuer) -> list[str]:
    try:
        from .backend import register_task_entrypoints

        return register_task_entrypoints(pgq)
    except DjangoConfigurationError:  # no Tasks API, or no TASKS entry uses our backend
        return []


_imported_lock = threading.Lock()
_imported: set[tuple[str | None, tuple[str, ...]]] = set()


def _import_declarations() -> None:
    """Import the modules the worker imports (once per configuration and process)."""
    conf = get_settings()
    key = (conf.autodiscover, conf.task_modules)
    with _imported_lock:
        if key in _imported:
            return
    from .worker import import_task_modules

    import_task_modules(conf)
    with _imported_lock:
        _imported.add(key)


def invoke(handlers: Handlers, job: Job) -> tuple[Any, Exception | None]:
    try:
        return handlers.run(job), None
    except Exception as exc:  # the handler's failure is the job's outcome
        return None, exc


def _await(coroutine: Any) -> Any:
    from asgiref.sync import async_to_sync

    async def wait() -> Any:
        return await coroutine

    # async_to_sync runs thread-sensitive sync_to_async code (Django's async
    # ORM) back in this thread, on the test's connection.
    return async_to_sync(wait)()


