"""Module-level handlers for the process-isolation tests: a child imports them by name."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from pgqueue_sync import Job


def echo(job: Job) -> dict[str, object]:
    """The job as the child saw it, and the child's pid."""
    return {"id": job.id, "payload": job.payload, "pid": os.getpid()}


def fail(job: Job) -> None:
    raise ValueError(f"job {job.id} failed in the child")


def hang(job: Job) -> None:
    """Write the child's pid where the payload says, then never return."""
    assert job.payload is not None
    Path(job.payload.decode()).write_text(str(os.getpid()))
    while True:
        time.sleep(60)


def die(job: Job) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def exit_hard(job: Job) -> None:
    os._exit(3)


async def asynchronous(job: Job) -> None:
    """Not allowed: isolation runs def handlers."""


def nap(job: Job) -> int:
    """Sleep as many seconds as the payload says, then return the child's pid."""
    assert job.payload is not None
    time.sleep(float(job.payload.decode()))
    return os.getpid()
