"""What a worker or a scheduler checks before it starts: the schema it needs is there.

One definition for both (:meth:`QueueManager.verify_structure
<pgqueue_sync.worker.manager.QueueManager.verify_structure>` and
:meth:`SchedulerManager.verify_structure
<pgqueue_sync.scheduler.manager.SchedulerManager.verify_structure>`).
"""

from __future__ import annotations

from .errors import ConfigurationError, SchemaError
from .queries import Queries
from .results import missing_table_problem
from .schema import Schema


def in_process(driver: object) -> bool:
    """True for the in-memory driver, which has no catalog and fans notifications
    out in-process."""
    return hasattr(driver, "add_listener")


def verify_queue_schema(queries: Queries, *, results: bool = False) -> None:
    """Raise :class:`SchemaError` unless the tables, columns and indexes of a 1.6
    queue exist (the schedules table included), and with ``results`` the results table.

    The in-memory adapter has nothing to check, but cannot store results
    (:class:`ConfigurationError`).
    """
    if in_process(queries.driver):
        if results:
            raise ConfigurationError(
                "the in-memory adapter cannot store job results; drop store_results"
            )
        return
    problems = Schema(queries.driver, queries.settings).verify("present")
    if problems:
        raise SchemaError(
            "the queue schema is missing or outdated: " + "; ".join(problems)
            + " (run 'pgq-sync install' or 'pgq-sync upgrade')"
        )
    if results:
        problem = missing_table_problem(queries.driver, queries.settings)
        if problem:
            raise SchemaError(problem)
