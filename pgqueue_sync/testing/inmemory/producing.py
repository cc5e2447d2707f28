"""Producing jobs in memory: :meth:`InMemoryQueries.enqueue
<pgqueue_sync.queries.Queries.enqueue>`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, overload

from ...errors import DuplicateJobError
from ...queries.batch import check_conflict_mode, normalize_batch, trace_publish
from ...queries.models import ExecuteAfter, Headers
from ...types import JobId, OnConflict
from .base import InMemoryQueriesBase
from .tables import JobRow, json_copy


class InMemoryProducing(InMemoryQueriesBase):
    """Inserting jobs, one or a batch per atomic step."""

    @overload
    def enqueue(
        self,
        entrypoint: str | Sequence[str],
        payload: bytes | None | Sequence[bytes | None] = ...,
        priority: int | Sequence[int] = ...,
        execute_after: ExecuteAfter | Sequence[ExecuteAfter] = ...,
        dedupe_key: str | None | Sequence[str | None] = ...,
        headers: Headers | Sequence[Headers] = ...,
        *,
        on_conflict: Literal["raise", "update_priority"] = ...,
    ) -> list[JobId]: ...

    @overload
    def enqueue(
        self,
        entrypoint: str | Sequence[str],
        payload: bytes | None | Sequence[bytes | None] = ...,
        priority: int | Sequence[int] = ...,
        execute_after: ExecuteAfter | Sequence[ExecuteAfter] = ...,
        dedupe_key: str | None | Sequence[str | None] = ...,
        headers: Headers | Sequence[Headers] = ...,
        *,
        on_conflict: Literal["skip"],
    ) -> list[JobId | None]: ...

    def enqueue(
        self,
        entrypoint: str | Sequence[str],
        payload: bytes | None | Sequence[bytes | None] = None,
        priority: int | Sequence[int] = 0,
        execute_after: ExecuteAfter | Sequence[ExecuteAfter] = None,
        dedupe_key: str | None | Sequence[str | None] = None,
        headers: Headers | Sequence[Headers] = None,
        *,
        on_conflict: OnConflict = "raise",
    ) -> list[JobId] | list[JobId | None]:
        """Insert one job or a batch atomically; see :meth:`Queries.enqueue`.

        Ids are drawn for every input row, so skipped, merged or rejected rows
        leave gaps exactly as the database sequence does.
        """
        rows = normalize_batch(entrypoint, payload, priority, execute_after, dedupe_key, headers)
        trace_publish(self.tracer, rows)
        check_conflict_mode(on_conflict, rows["dedupe_key"])
        with self._statement() as s:
            ids = [s.next_id("queue") for _ in rows["entrypoint"]]
            active = s.active_keys()
            fresh: list[JobRow] = []
            raised: dict[int, int] = {}
            result: list[JobId | None] = []
            for i, job_id in enumerate(ids):
                key = rows["dedupe_key"][i]
                existing = active.get(key) if key is not None else None
                if existing is None:
                    row = _new_job(s.now, job_id, rows, i)
                    fresh.append(row)
                    if key is not None:
                        active[key] = row
                    result.append(JobId(job_id))
                elif on_conflict == "raise":
                    raise DuplicateJobError(rows["dedupe_key"])
                elif on_conflict == "skip":
                    result.append(None)
                else:
                    raised[existing.id] = max(existing.priority, rows["priority"][i])
                    result.append(JobId(existing.id))
            for row in fresh:
                s.db.jobs[row.id] = row
                s.log(row, "queued")
            for job_id, new_priority in raised.items():
                s.db.jobs[job_id].priority = new_priority
            s.table_changed("insert")
        if on_conflict == "skip":
            return result
        return [i for i in result if i is not None]


def _new_job(now: datetime, job_id: int, rows: Mapping[str, list[Any]], i: int) -> JobRow:
    at: datetime | None = rows["at"][i]
    return JobRow(
        id=job_id,
        priority=rows["priority"][i],
        created=now,
        updated=now,
        heartbeat=now,
        execute_after=at if at is not None else now + rows["delay"][i],
        status="queued",
        entrypoint=rows["entrypoint"][i],
        dedupe_key=rows["dedupe_key"][i],
        payload=rows["payload"][i],
        headers=json_copy(rows["headers"][i].obj),
    )
