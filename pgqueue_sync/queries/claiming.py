"""Claiming jobs (:meth:`~pgqueue_sync.queries.Queries.dequeue`) and keeping
the claimed ones alive (heartbeats)."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from ..drivers.base import check_reply
from ..errors import ConfigurationError, DatabaseError, DeadlockDetected, UniqueViolation
from ..models import Job
from ..results import StoredResult
from ..sql.arrays import int_array, text_array
from ..types import QueueManagerId
from .models import EntrypointExecutionParameter, JobOutcome, JobRetry
from .outcomes import (
    OutcomeQueries,
    log_lost_results,
    outcome_steps,
    result_literals,
    results_failed,
)
from .values import int_ids, limit_of, stale_after_of

logger = logging.getLogger(__name__)


class ClaimingQueries(OutcomeQueries):
    """The claim, which also records the previous batch's outcomes, and heartbeats."""

    def dequeue(
        self,
        batch_size: int,
        entrypoints: Mapping[str, EntrypointExecutionParameter | int],
        queue_manager_id: QueueManagerId | uuid.UUID,
        global_concurrency_limit: int | None,
        heartbeat_timeout: timedelta,
        *,
        completed: Sequence[JobOutcome] = (),
        results: Sequence[StoredResult] = (),
        retries: Sequence[JobRetry] = (),
        include_stale: bool = True,
    ) -> list[Job]:
        """Claim up to ``batch_size`` jobs for ``queue_manager_id`` and log them ``picked``.

        Jobs come in ``priority DESC, id ASC`` order, each entrypoint scanned
        separately. Honours each entrypoint's fleet-wide ``concurrency_limit``
        (seats in ``slot``), the worker's own budget ``global_concurrency_limit``
        (``None``/0: none), and re-picks ``picked`` jobs whose heartbeat is older
        than ``heartbeat_timeout``. Losing a seat race to another worker returns
        an empty list, never an error.

        ``completed`` and ``retries`` (the :meth:`log_jobs` arguments) record
        this worker's finished jobs in the same statement, saving a round trip
        per cycle, guarded as ``log_jobs(..., queue_manager_id=...)`` is; if
        the claim loses a seat race they are still recorded, by a separate
        statement. ``results`` (see :meth:`log_jobs`) are stored with them.
        ``include_stale=False`` leaves stale re-picks to a later claim (the
        worker looks for them every few seconds, see :meth:`Statements.dequeue`).
        """
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")

        def finish_alone() -> None:
            self.log_jobs(completed, results=results, retries=retries,
                          queue_manager_id=queue_manager_id)

        if not entrypoints:
            finish_alone()
            return []
        registered = _registered_params(entrypoints)
        budget = global_concurrency_limit or None
        finish = self._finish_params(completed, retries, queue_manager_id)
        stored = result_literals(results) if finish else {}
        query = self.statements.dequeue(
            capacity=registered["capacity"], budget=budget is not None,
            finish=outcome_steps(finish), results=bool(stored), stale=include_stale,
        )
        params = {
            **finish,
            **stored,
            **registered,
            "batch": batch_size,
            "queue_manager_id": queue_manager_id,
            "budget": budget,
            "heartbeat_timeout": heartbeat_timeout,
        }
        try:
            rows = self.driver.fetch(query, params)
            check_reply(rows, query)  # psycopg drivers check (and drop) themselves
        except UniqueViolation as exc:
            if exc.constraint_name != self.settings.index_name("picked_slot_idx"):
                raise
            logger.debug("dequeue lost a concurrency seat race; treating as an empty batch")
            finish_alone()
            return []
        except DeadlockDetected:
            logger.debug("dequeue deadlocked with another claim; treating as an empty batch")
            finish_alone()
            return []
        except DatabaseError as exc:
            if not results_failed(exc, stored):
                raise
            # Outcomes matter more than results: claim and record them without.
            log_lost_results(exc, results)
            return self.dequeue(
                batch_size, entrypoints, queue_manager_id, global_concurrency_limit,
                heartbeat_timeout, completed=completed, retries=retries,
                include_stale=include_stale,
            )
        return [Job.from_row(row) for row in rows]

    def update_heartbeat(
        self,
        job_ids: Iterable[int],
        *,
        queue_manager_id: QueueManagerId | uuid.UUID | None = None,
    ) -> None:
        """Set ``heartbeat = NOW()`` for the (deduplicated) running job ids; with
        ``queue_manager_id`` only for rows still picked by that worker."""
        ids = sorted(set(int_ids(job_ids)))
        if ids:
            query = self.statements.update_heartbeat(guarded=queue_manager_id is not None)
            params = {"ids": int_array(ids), "queue_manager_id": queue_manager_id}
            self.driver.execute(query, params)


def _registered_params(
    entrypoints: Mapping[str, EntrypointExecutionParameter | int],
) -> dict[str, Any]:
    # A worker passes the same registry on every claim: build its literals once.
    items = []
    for name, value in entrypoints.items():
        stale = stale_after_of(value)
        items.append((name, limit_of(value), None if stale is None else stale.total_seconds()))
    return dict(_registered_literals(tuple(items)))


@functools.lru_cache(maxsize=64)
def _registered_literals(
    items: tuple[tuple[str, int, float | None], ...],
) -> dict[str, Any]:
    return {
        "entrypoints": text_array(name for name, _, _ in items),
        "limits": int_array(limit for _, limit, _ in items),
        "stale_after": text_array(
            None if seconds is None else f"{seconds} seconds" for _, _, seconds in items
        ),
        "capacity": any(limit for _, limit, _ in items),
    }
