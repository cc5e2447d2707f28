"""OpenTelemetry tracing (the ``otel`` extra: ``opentelemetry-api``).

Enqueue opens a short ``create`` span per job and stores its W3C context
(``traceparent``/``tracestate``) under the job's ``headers["otel"]`` key, as
PgQueuer's adapter does, so traces cross between PgQueuer and pgqueue_sync
processes in both directions. Processing continues that trace in a
``process`` span around the handler; a raised exception is recorded on it.

    from pgqueue_sync.contrib.otel import OpenTelemetryTracing
    from pgqueue_sync.tracing import set_tracing_class

    set_tracing_class(OpenTelemetryTracing())

Configure the SDK (exporters, sampling) as for any OpenTelemetry application;
without an SDK the API is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import propagate, trace

from ..models import Job

#: The headers key PgQueuer's OpenTelemetry adapter uses too.
HEADER_KEY = "otel"
SYSTEM = "pgqueue_sync"


class OpenTelemetryTracing:
    """A :class:`~pgqueue_sync.tracing.TracingProtocol` over the OpenTelemetry API."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("pgqueue_sync", tracer_provider=tracer_provider)

    def trace_publish(self, entrypoints: Sequence[str]) -> list[dict[str, Any]]:
        headers: list[dict[str, Any]] = []
        for entrypoint in entrypoints:
            with self._tracer.start_as_current_span(
                f"create {entrypoint}",
                kind=trace.SpanKind.PRODUCER,
                attributes=_attributes(entrypoint, "create"),
            ):
                carrier: dict[str, str] = {}
                propagate.inject(carrier)
            headers.append({HEADER_KEY: carrier})
        return headers

    @contextlib.contextmanager
    def trace_process(self, job: Job) -> Iterator[object]:
        carrier = (job.headers or {}).get(HEADER_KEY)
        parent = propagate.extract(carrier) if isinstance(carrier, dict) else None
        attributes = {**_attributes(job.entrypoint, "process"), "messaging.message.id": str(job.id)}
        with self._tracer.start_as_current_span(
            f"process {job.entrypoint}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            yield span


def _attributes(entrypoint: str, operation: str) -> dict[str, str]:
    return {
        "messaging.system": SYSTEM,
        "messaging.destination.name": entrypoint,
        "messaging.operation.type": operation,
    }
