"""Producing jobs: :meth:`Queries.enqueue <pgqueue_sync.queries.Queries.enqueue>`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, overload

from ..errors import DuplicateJobError, UniqueViolation
from ..types import JobId, OnConflict
from .base import QueriesBase
from .batch import check_conflict_mode, enqueue_params, normalize_batch, trace_publish
from .models import ExecuteAfter, Headers


class ProducingQueries(QueriesBase):
    """Inserting jobs, one or a batch per statement."""

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
        """Insert one job (scalar arguments) or a batch (lists of equal length) atomically.

        ``execute_after`` is a delay (``timedelta``, from the database's ``NOW()``)
        or an aware ``datetime``. ``dedupe_key`` is unique among queued and picked
        jobs; ``on_conflict`` decides what a duplicate does:

        * ``"raise"``: :class:`DuplicateJobError`, and nothing of the batch is inserted;
        * ``"skip"``: the duplicate is left out and its position in the result is ``None``;
        * ``"update_priority"``: the existing job keeps its id and gets the higher priority.

        Returns the job ids in input order. On a connection inside the caller's
        transaction the jobs (and the workers' wake-up) appear at commit; a
        duplicate in ``"raise"`` mode then aborts that transaction, as any
        integrity error does.
        """
        rows = normalize_batch(entrypoint, payload, priority, execute_after, dedupe_key, headers)
        check_conflict_mode(on_conflict, rows["dedupe_key"])
        trace_publish(self.tracer, rows)
        params = {**enqueue_params(rows), "table": self.statements.queue_table_text}
        try:
            result = self.driver.fetch(self.statements.enqueue(on_conflict), params)
        except UniqueViolation as exc:
            if exc.constraint_name == self.settings.index_name("unique_dedupe_key"):
                raise DuplicateJobError(rows["dedupe_key"]) from exc
            raise
        ids = [None if r["id"] is None else JobId(r["id"]) for r in result]
        if on_conflict == "skip":
            return ids
        return [JobId(i) for i in ids if i is not None]
