"""Claiming jobs in memory (``dequeue``), step by step as the SQL claim does,
and heartbeats."""

from __future__ import annotations

import collections
import dataclasses
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Literal

from ...errors import ConfigurationError
from ...models import Job
from ...queries.models import EntrypointExecutionParameter, JobOutcome, JobRetry
from ...queries.values import int_ids, limit_of, outcome_params, stale_after_of
from ...results import StoredResult
from ...types import QueueManagerId
from .driver import Statement
from .outcomes import InMemoryOutcomes, guard_passes, no_results, write_outcomes
from .tables import JobRow


@dataclasses.dataclass
class _Registered:
    limit: int
    stale_after: timedelta


@dataclasses.dataclass
class _Claim:
    row: JobRow
    kind: Literal["open", "limited", "stale"]
    seat: int | None = None


class InMemoryClaiming(InMemoryOutcomes):
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
        """Claim up to ``batch_size`` jobs; see :meth:`Queries.dequeue`.

        Candidates are chosen from the state *before* ``completed`` is recorded,
        as the single SQL statement sees its snapshot: a finished job still holds
        its seat for this claim. Never loses a seat race (there is none here).
        """
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        no_results(results)
        if not entrypoints:
            self.log_jobs(completed, retries=retries, queue_manager_id=queue_manager_id)
            return []
        registered = {
            name: _Registered(
                limit_of(param), _coalesce(stale_after_of(param), heartbeat_timeout)
            )
            for name, param in entrypoints.items()
        }
        finish = outcome_params(completed, retries)
        budget = global_concurrency_limit or None
        with self._statement() as s:
            plan = _plan_claim(s, registered, batch_size, queue_manager_id, budget,
                               stale=include_stale)
            if finish:
                write_outcomes(s, finish, queue_manager_id)
            # A row also finished by this call keeps its finished state.
            finished = set(finish.get("ids", ()))
            claimed = [
                _apply_claim(s, c, queue_manager_id) for c in plan if c.row.id not in finished
            ]
        return [row.to_job() for row in sorted(claimed, key=JobRow.order)]

    def update_heartbeat(
        self,
        job_ids: Iterable[int],
        *,
        queue_manager_id: QueueManagerId | uuid.UUID | None = None,
    ) -> None:
        """Set ``heartbeat = NOW()`` for the given job ids; with ``queue_manager_id``
        only for rows still picked by that worker."""
        ids = set(int_ids(job_ids))
        if not ids:
            return
        with self._statement() as s:
            for job_id in ids & s.db.jobs.keys():
                row = s.db.jobs[job_id]
                if guard_passes(row, queue_manager_id):
                    row.heartbeat = s.now


def _plan_claim(
    s: Statement,
    registered: Mapping[str, _Registered],
    batch: int,
    me: QueueManagerId | uuid.UUID,
    budget: int | None,
    *,
    stale: bool = True,
) -> list[_Claim]:
    """Choose what one dequeue claims, following the SQL pipeline step by step."""
    rows = list(s.db.jobs.values())
    candidates: list[_Claim] = _fresh_open(s, rows, registered, batch)
    seats: dict[str, list[int]] = {}
    for name, reg in registered.items():
        if reg.limit > 0:
            candidates += _fresh_limited(s, rows, name, reg.limit, batch, seats)
    if stale:
        candidates += _stale(s, rows, registered, batch)
    candidates.sort(key=lambda c: c.row.order())
    if budget is not None:
        load = sum(1 for r in rows if r.queue_manager_id == me)
        cap = max(min(batch, budget - load), 0)
    else:
        cap = batch
    return _seat(candidates[:cap], seats)


def _claimable(s: Statement, rows: Iterable[JobRow], name: str) -> list[JobRow]:
    found = [
        r for r in rows
        if r.entrypoint == name and r.status == "queued" and r.execute_after <= s.now
    ]
    return sorted(found, key=JobRow.order)


def _fresh_open(
    s: Statement, rows: list[JobRow], registered: Mapping[str, _Registered], batch: int
) -> list[_Claim]:
    found = [
        r
        for name, reg in registered.items()
        if reg.limit == 0
        for r in _claimable(s, rows, name)[:batch]
    ]
    return [_Claim(r, "open") for r in sorted(found, key=JobRow.order)[:batch]]


def _fresh_limited(
    s: Statement,
    rows: list[JobRow],
    name: str,
    limit: int,
    batch: int,
    seats: dict[str, list[int]],
) -> list[_Claim]:
    # In-flight counts every row holding a worker id, stale ones included.
    busy = sum(1 for r in rows if r.entrypoint == name and r.queue_manager_id is not None)
    if busy >= limit:
        return []
    room = min(batch, limit - busy)
    held = {r.slot for r in rows if r.entrypoint == name and r.status == "picked"}
    seats[name] = [seat for seat in range(busy + room) if seat not in held]
    return [_Claim(r, "limited") for r in _claimable(s, rows, name)[:room]]


def _stale(
    s: Statement, rows: list[JobRow], registered: Mapping[str, _Registered], batch: int
) -> list[_Claim]:
    # No capacity gate: a re-pick inherits the seat the stale row holds.
    found = [
        r
        for r in rows
        if r.status == "picked"
        and r.entrypoint in registered
        and r.heartbeat < s.now - registered[r.entrypoint].stale_after
        and r.execute_after <= s.now
    ]
    return [_Claim(r, "stale") for r in sorted(found, key=JobRow.order)[:batch]]


def _seat(eligible: list[_Claim], seats: dict[str, list[int]]) -> list[_Claim]:
    """The k-th limited claim of an entrypoint takes its k-th free seat, or is dropped."""
    taken: collections.Counter[str] = collections.Counter()
    kept: list[_Claim] = []
    for claim in eligible:
        if claim.kind == "limited":
            name = claim.row.entrypoint
            free = seats.get(name, [])
            if taken[name] >= len(free):
                continue
            claim.seat = free[taken[name]]
            taken[name] += 1
        kept.append(claim)
    return kept


def _apply_claim(s: Statement, claim: _Claim, me: QueueManagerId | uuid.UUID) -> JobRow:
    row = claim.row
    row.status, row.updated, row.heartbeat = "picked", s.now, s.now
    row.queue_manager_id = me
    if claim.kind != "stale":
        row.slot = claim.seat
    s.log(row, "picked")
    return row


def _coalesce(value: timedelta | None, default: timedelta) -> timedelta:
    return default if value is None else value  # COALESCE: only NULL falls back
