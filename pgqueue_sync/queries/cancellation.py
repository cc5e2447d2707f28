"""Cancelling jobs and the notifications workers listen for.

:func:`cancellation_payloads` is shared with the in-memory adapter, which sends
the same events.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime

from ..models import CancellationEvent, HealthCheckEvent, dump_event, utc_now
from ..types import Channel, HealthCheckId, JobId
from .outcomes import OutcomeQueries
from .values import int_ids

#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
NOTIFY_PAYLOAD_LIMIT = 7_999


class CancellationQueries(OutcomeQueries):
    """Cancelling jobs, and sending the cancellation and health-check events."""

    def mark_job_as_cancelled(self, ids: Iterable[int]) -> list[JobId]:
        """Cancel jobs: delete queued or picked rows, log ``canceled``, notify workers.

        Workers running one of the ids see its cancellation token set. Both
        effects happen atomically: inside a caller's transaction, at its commit.
        Returns the ids that still existed.
        """
        id_list = int_ids(ids)
        if not id_list:
            return []
        with self.driver.transaction() as tx:
            done = self._on(tx)
            logged = done.log_jobs((i, "canceled", None) for i in id_list)
            done.notify_job_cancellation(id_list)
        return logged

    def notify_job_cancellation(self, ids: Iterable[int]) -> None:
        """Send a ``cancellation_event`` for ``ids`` without touching any row.

        Many ids go out as several events, each under PostgreSQL's payload limit.
        """
        for payload in cancellation_payloads(self.settings.channel, ids, utc_now()):
            self._notify(payload)

    def notify_health_check(self, health_check_id: HealthCheckId | uuid.UUID) -> None:
        """Send a ``health_check_event`` (a worker's probe of its own listener)."""
        event = HealthCheckEvent(
            channel=self.settings.channel, sent_at=utc_now(), id=HealthCheckId(health_check_id)
        )
        self._notify(dump_event(event))

    def _notify(self, payload: str) -> None:
        params = {"channel": self.settings.channel, "payload": payload}
        self.driver.execute(self.statements.notify, params)


def cancellation_payloads(
    channel: str, ids: Iterable[int], now: datetime, *, received_at: datetime | None = None
) -> list[str]:
    """The ``cancellation_event`` payloads announcing ``ids``: as few as fit under
    :data:`NOTIFY_PAYLOAD_LIMIT` bytes each (one, with no ids, for none)."""

    def payload(chunk: list[int]) -> str:
        event = CancellationEvent(channel=Channel(channel), sent_at=now,
                                  ids=[JobId(i) for i in chunk],
                                  received_at=now if received_at is None else received_at)
        return dump_event(event)

    room = NOTIFY_PAYLOAD_LIMIT - len(payload([]).encode())
    return [payload(chunk) for chunk in _id_chunks(int_ids(ids), room=room)]


def _id_chunks(ids: list[int], *, room: int) -> Iterator[list[int]]:
    chunk: list[int] = []
    used = 0
    for job_id in ids:
        width = len(str(job_id)) + 1  # the digits and a comma
        if chunk and used + width > room:
            yield chunk
            chunk, used = [], 0
        chunk.append(job_id)
        used += width
    if chunk or not ids:
        yield chunk
