"""Tracing hooks around enqueue and processing, and the OpenTelemetry adapter."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from pgqueue_sync import ConfigurationError, Job, Queries
from pgqueue_sync.tracing import set_tracing_class

from .worker_helpers import make_pgq, pool_for

FAST = {"dequeue_timeout": 0.5, "log_aggregation_interval": 0}


class RecordingTracer:
    """Adds a header per job and records the spans it opens."""

    def __init__(self) -> None:
        self.published: list[list[str]] = []
        self.spans: list[tuple[int, str, str | None]] = []  # job id, thread, error type

    def trace_publish(self, entrypoints: Sequence[str]) -> list[dict[str, Any]]:
        self.published.append(list(entrypoints))
        return [{"trace": f"t-{e}", "who": "tracer"} for e in entrypoints]

    @contextlib.contextmanager
    def trace_process(self, job: Job) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            self.spans.append((job.id, threading.current_thread().name, type(exc).__name__))
            raise
        self.spans.append((job.id, threading.current_thread().name, None))


class BrokenTracer:
    def trace_publish(self, entrypoints: Sequence[str]) -> list[dict[str, Any]]:
        raise RuntimeError("tracer down")

    def trace_process(self, job: Job) -> contextlib.AbstractContextManager[object]:
        raise RuntimeError("tracer down")


@pytest.fixture
def no_global_tracer() -> Iterator[None]:
    yield
    set_tracing_class(None)


def headers_of(conn: Any, job_id: int) -> Any:
    return conn.execute("SELECT headers FROM pgqueuer WHERE id = %s", [job_id]).fetchone()[0]


def test_publish_headers_are_merged_and_the_callers_keys_win(queries: Queries, conn: Any) -> None:
    tracer = RecordingTracer()
    traced = Queries(queries.driver, settings=queries.settings, tracer=tracer)
    [plain, own] = traced.enqueue(["a", "b"], [None, None], headers=[None, {"who": "caller"}])
    assert tracer.published == [["a", "b"]]
    assert headers_of(conn, plain) == {"trace": "t-a", "who": "tracer"}
    assert headers_of(conn, own) == {"trace": "t-b", "who": "caller"}


def test_without_a_tracer_headers_stay_as_given(queries: Queries, conn: Any) -> None:
    [job_id] = queries.enqueue("a", None)
    assert headers_of(conn, job_id) is None  # JSON null, as PgQueuer stores it


def test_a_broken_tracer_never_stops_an_enqueue(
    queries: Queries, conn: Any, no_global_tracer: None, caplog: pytest.LogCaptureFixture
) -> None:
    set_tracing_class(BrokenTracer())
    [job_id] = queries.enqueue("a", None, headers={"k": 1})
    assert headers_of(conn, job_id) == {"k": 1}
    assert "failed in trace_publish" in caplog.text


def test_set_tracing_class_rejects_a_non_tracer(no_global_tracer: None) -> None:
    with pytest.raises(ConfigurationError, match="is not a tracer"):
        set_tracing_class(object())  # type: ignore[arg-type]


def test_process_spans_wrap_handlers_on_their_thread(dsn: str, queries: Queries) -> None:
    tracer = RecordingTracer()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool, tracer=tracer)

        @pgq.entrypoint("ok")
        def ok(job: Job) -> None:
            pass

        @pgq.entrypoint("boom")
        def boom(job: Job) -> None:
            raise ValueError("no")

        [good, bad] = queries.enqueue(["ok", "boom"], [None, None])
        pgq.run(mode="drain", **FAST)
    spans = {job_id: (thread, error) for job_id, thread, error in tracer.spans}
    assert spans[good][1] is None and spans[bad][1] == "ValueError"
    assert all(thread.startswith("pgqueue_sync-runner") for thread, _ in spans.values())


def test_a_broken_tracer_never_fails_a_job(dsn: str, queries: Queries) -> None:
    ran: list[int] = []
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool, tracer=BrokenTracer())
        pgq.entrypoint("ok")(lambda job: ran.append(job.id))
        [job_id] = queries.enqueue("ok", None)
        pgq.run(mode="drain", **FAST)
    assert ran == [job_id]
    assert dict(queries.job_status([job_id])) == {job_id: "successful"}


def test_opentelemetry_trace_continues_from_enqueue_to_processing(
    dsn: str, queries: Queries, conn: Any
) -> None:
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    export = pytest.importorskip("opentelemetry.sdk.trace.export")
    in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    from pgqueue_sync.contrib.otel import OpenTelemetryTracing

    exporter = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    tracer = OpenTelemetryTracing(tracer_provider=provider)

    producer = Queries(queries.driver, settings=queries.settings, tracer=tracer)
    [job_id] = producer.enqueue("mail", b"x")
    carrier = headers_of(conn, job_id)["otel"]
    assert carrier["traceparent"].startswith("00-")
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool, tracer=tracer)
        pgq.entrypoint("mail")(lambda job: None)
        pgq.run(mode="drain", **FAST)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    create, process = spans["create mail"], spans["process mail"]
    assert process.context.trace_id == create.context.trace_id
    assert process.parent is not None and process.parent.span_id == create.context.span_id
    assert process.attributes["messaging.message.id"] == str(job_id)
