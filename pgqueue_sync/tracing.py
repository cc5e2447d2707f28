"""Hooks for distributed tracing around enqueue and processing.

A tracer implements :class:`TracingProtocol` (the sync form of PgQueuer's):

* ``trace_publish(entrypoints)`` runs when jobs are enqueued and returns one
  header dict per job; it is merged into that job's ``headers`` (a key the
  caller set wins), so the trace context travels with the job;
* ``trace_process(job)`` is a context manager entered around the handler, on
  the thread (or event loop task) that runs it.

The default tracer does nothing and costs one attribute look-up. Install one
for the whole process with :func:`set_tracing_class`, or pass ``tracer=`` to
:class:`~pgqueue_sync.queries.Queries` and the worker. Hooks must not raise:
a failing hook is logged and ignored, never the cause of a lost job.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .models import Job

logger = logging.getLogger(__name__)


@runtime_checkable
class TracingProtocol(Protocol):
    """What the queue calls around enqueue and processing."""

    def trace_publish(self, entrypoints: Sequence[str]) -> list[dict[str, Any]]:
        """One header dict per job about to be enqueued (may be empty dicts)."""
        ...

    def trace_process(self, job: Job) -> contextlib.AbstractContextManager[object]:
        """A context manager wrapping the handler of ``job``."""
        ...


class NoTracing:
    """The default: adds no headers and opens no spans."""

    def trace_publish(self, entrypoints: Sequence[str]) -> list[dict[str, Any]]:
        return [{} for _ in entrypoints]

    def trace_process(self, job: Job) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()


_NO_TRACING = NoTracing()
_tracer: TracingProtocol = _NO_TRACING


def set_tracing_class(tracer: TracingProtocol | None) -> None:
    """Install ``tracer`` for the whole process (``None`` restores the default)."""
    global _tracer
    if tracer is not None and not isinstance(tracer, TracingProtocol):
        from .errors import ConfigurationError

        raise ConfigurationError(
            f"{type(tracer).__name__} is not a tracer: implement trace_publish(entrypoints) "
            "and trace_process(job)"
        )
    _tracer = tracer if tracer is not None else _NO_TRACING


def get_tracer(override: TracingProtocol | None = None) -> TracingProtocol:
    """``override`` if given, else the process-wide tracer."""
    return override if override is not None else _tracer


def is_active(tracer: TracingProtocol) -> bool:
    """False for the default no-op tracer, so callers can skip work entirely."""
    return tracer is not _NO_TRACING and not isinstance(tracer, NoTracing)


def merge_publish_headers(
    tracer: TracingProtocol,
    entrypoints: Sequence[str],
    headers: Sequence[Mapping[str, Any] | None],
) -> list[dict[str, Any] | None]:
    """Each job's headers with the tracer's merged in; the caller's keys win."""
    try:
        traced = tracer.trace_publish(entrypoints)
    except Exception:
        logger.warning("tracer %s failed in trace_publish; enqueueing without trace headers",
                       type(tracer).__name__, exc_info=True)
        return [None if h is None else dict(h) for h in headers]
    if len(traced) != len(entrypoints):
        logger.warning("tracer %s returned %d header dicts for %d jobs; ignoring them",
                       type(tracer).__name__, len(traced), len(entrypoints))
        return [None if h is None else dict(h) for h in headers]
    merged: list[dict[str, Any] | None] = []
    for extra, own in zip(traced, headers, strict=True):
        combined = {**(extra or {}), **(own or {})}
        merged.append(combined or (None if own is None else {}))
    return merged


@contextlib.contextmanager
def process_span(tracer: TracingProtocol, job: Job) -> Iterator[None]:
    """``tracer.trace_process(job)``, shielding the job from a broken tracer."""
    try:
        manager = tracer.trace_process(job)
        manager.__enter__()
    except Exception:
        logger.warning("tracer %s failed to open a span for job %d", type(tracer).__name__,
                       job.id, exc_info=True)
        yield
        return
    try:
        yield
    except BaseException as exc:
        _exit(tracer, manager, job, exc)
        raise
    _exit(tracer, manager, job, None)


def _exit(
    tracer: TracingProtocol,
    manager: contextlib.AbstractContextManager[object],
    job: Job,
    error: BaseException | None,
) -> None:
    try:
        if error is None:
            manager.__exit__(None, None, None)
        else:
            manager.__exit__(type(error), error, error.__traceback__)
    except Exception:
        logger.warning("tracer %s failed to close the span of job %d", type(tracer).__name__,
                       job.id, exc_info=True)
