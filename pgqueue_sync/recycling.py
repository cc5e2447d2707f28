"""The recycling budget of a worker process (``--max-jobs-per-child``,
``--max-memory-per-child``): when a child has done enough to be replaced."""

from __future__ import annotations

import os
import sys
import threading


class Budget:
    """What a child may do before it is recycled; called by the worker after each job.

    Returns the reason to stop once ``max_jobs`` jobs have finished or resident
    memory passes ``max_memory_mb``; thread-safe (handlers finish concurrently).
    """

    def __init__(self, *, max_jobs: int | None, max_memory_mb: int | None) -> None:
        self.max_jobs = max_jobs
        self.max_memory_mb = max_memory_mb
        self.finished = 0
        self.reason: str | None = None
        self._lock = threading.Lock()

    @property
    def limited(self) -> bool:
        return self.max_jobs is not None or self.max_memory_mb is not None

    def __call__(self) -> str | None:
        with self._lock:
            self.finished += 1
            if self.reason is None:
                self.reason = self._spent()
            return self.reason

    def _spent(self) -> str | None:
        if self.max_jobs is not None and self.finished >= self.max_jobs:
            return f"ran {self.finished} jobs (max_jobs_per_child {self.max_jobs})"
        if self.max_memory_mb is not None:
            resident = resident_mb()
            if resident is not None and resident > self.max_memory_mb:
                return (f"uses {resident:.0f} MB of memory "
                        f"(max_memory_per_child {self.max_memory_mb})")
        return None


def resident_mb() -> float | None:
    """This process's resident memory in MB (Linux ``/proc``; else the peak; None if unknown)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
