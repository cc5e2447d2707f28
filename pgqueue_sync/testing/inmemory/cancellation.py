"""Cancelling jobs in memory, and the events workers listen for."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from ...models import HealthCheckEvent, dump_event
from ...queries.cancellation import cancellation_payloads
from ...queries.values import int_ids, outcome_params
from ...types import HealthCheckId, JobId
from .base import InMemoryQueriesBase
from .outcomes import write_outcomes


class InMemoryCancellation(InMemoryQueriesBase):
    """Cancelling jobs, and sending the cancellation and health-check events."""

    def mark_job_as_cancelled(self, ids: Iterable[int]) -> list[JobId]:
        """Delete queued or picked rows, log ``canceled`` and send a ``cancellation_event``.

        Both happen in one atomic step; listeners get the table's ``delete``
        event, then the cancellation. Returns the ids that still existed.
        """
        id_list = int_ids(ids)
        if not id_list:
            return []
        outcomes = outcome_params((i, "canceled", None) for i in id_list)
        with self._statement() as s:
            logged = write_outcomes(s, outcomes)
            s.payloads.extend(cancellation_payloads(self.settings.channel, id_list, s.now))
        return logged

    def notify_job_cancellation(self, ids: Iterable[int]) -> None:
        """Send a ``cancellation_event`` for ``ids`` without touching any row (several
        events for many ids, as PostgreSQL's payload limit makes the database do)."""
        id_list = list(ids)
        with self._statement() as s:
            s.payloads.extend(cancellation_payloads(self.settings.channel, id_list, s.now))

    def notify_health_check(self, health_check_id: HealthCheckId | uuid.UUID) -> None:
        """Send a ``health_check_event`` (a worker's probe of its own listener)."""
        probe = HealthCheckId(health_check_id)
        with self._statement() as s:
            event = HealthCheckEvent(self.settings.channel, s.now, probe, received_at=s.now)
            s.payloads.append(dump_event(event))
