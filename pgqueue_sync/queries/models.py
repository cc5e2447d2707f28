"""The values queue operations take and return, besides the job models.

:class:`EntrypointExecutionParameter` (what a claim needs to know per
entrypoint), :class:`PollState` (what the idle dispatcher reads),
:class:`ErrorRecord` (a job's newest logged failure), and the shapes of
outcomes, retries and enqueue arguments. The bulk actions' values live in
:mod:`.bulk`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from ..models import Job, TracebackRecord
from ..types import JOB_STATUS, JobId

#: An outcome to record: the job, its final status and the record of why (if any).
JobOutcome = tuple[Job | JobId | int, JOB_STATUS, TracebackRecord | None]
#: A retry to record: the job, its delay and the record of why.
JobRetry = tuple[Job | JobId | int, timedelta, TracebackRecord | None]
ExecuteAfter = timedelta | datetime | None
Headers = Mapping[str, Any] | None


@dataclasses.dataclass(frozen=True)
class EntrypointExecutionParameter:
    """What the claim needs to know about one entrypoint.

    ``concurrency_limit``: fleet-wide limit (0 = none). ``stale_after``: this
    entrypoint's own stale-job timeout (``None``: the worker's heartbeat timeout).
    """

    concurrency_limit: int = 0
    stale_after: timedelta | None = None


@dataclasses.dataclass(frozen=True)
class PollState:
    """What the idle dispatcher needs to choose its wait."""

    eligible: bool
    eta: timedelta | None
    queued: bool
    #: Time until the next picked job of these entrypoints goes stale (may be
    #: negative: already stale), or ``None`` when none is picked.
    stale_eta: timedelta | None = None


@dataclasses.dataclass(frozen=True)
class ErrorRecord:
    """The newest failure record logged for a job: the log row's status and time, and
    the exception type and message it stored."""

    job_id: JobId
    logged: datetime
    status: JOB_STATUS
    record: TracebackRecord

    @property
    def summary(self) -> str:
        """``"Type: message"`` on one line (``"Type"`` when the message is empty)."""
        message = " ".join(self.record.exception_message.split())
        kind = self.record.exception_type or "error"
        return f"{kind}: {message}" if message else kind
