"""The factory ``tests/test_processes.py`` runs with ``pgq-sync run --processes N``.

It is :func:`tests.apps.process_worker.factory` (entrypoints ``hold``, ``filler``
and ``limited``, reporting ``start``/``end`` lines to ``--events``) plus ``hog``,
whose handler keeps ``{"mb": N}`` megabytes alive in the process, for the memory
recycling test. Everything is built inside the factory, in the child.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence

from pgqueue_sync import Job
from pgqueue_sync.app import PgQueuer

from . import process_worker

#: Memory the ``hog`` handlers keep (never freed: the process is recycled instead).
_KEPT: list[bytes] = []


@contextlib.contextmanager
def factory(args: Sequence[str]) -> Iterator[PgQueuer]:
    ns, _ = process_worker.build_parser().parse_known_args(list(args))
    events: str = ns.events
    with process_worker.factory(args) as pgq:

        @pgq.entrypoint("hog")
        def hog(job: Job) -> None:
            process_worker.record(events, "start", job)
            megabytes = int(json.loads(job.payload or b"{}").get("mb", 1))
            _KEPT.append(b"\x01" * (megabytes << 20))  # written, so resident
            process_worker.record(events, "end", job)

        yield pgq
