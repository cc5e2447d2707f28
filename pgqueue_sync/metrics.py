"""Prometheus metrics of the queue (the ``metrics`` extra: ``prometheus_client``).

Every scrape reads the database afresh (a few small aggregate queries), so
any process can serve them: a worker (``pgq-sync run --metrics-port N``), the
``pgq-sync metrics`` command, or your own web app through
:func:`collect_metrics`. The two PgQueuer metric names are kept, so
dashboards built for PgQueuer's exporter keep working:

* ``pgqueuer_queue_count{aggregation="sum",entrypoint,status}``: rows in the queue table;
* ``pgqueuer_logs_count{aggregation="sum",entrypoint,status}``: log transitions
  over the last ``window`` (5 minutes);

plus ``pgqueue_sync_oldest_ready_job_age_seconds{entrypoint}``,
``pgqueue_sync_active_workers`` and ``pgqueue_sync_stale_jobs``; a worker
serving metrics adds ``pgqueue_sync_pruned_rows_total{table}``, the rows its
retention pruner removed (a counter of the process, read from memory).
A worker serving metrics also exposes ``/healthz`` (see :class:`MetricsServer`).
"""

from __future__ import annotations

import collections
import http.server
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any

from .errors import ConfigurationError, PgqException
from .ops import OpsQueries
from .queries import Queries

logger = logging.getLogger(__name__)

#: The log window of ``pgqueuer_logs_count`` (PgQueuer's default).
LOG_WINDOW = timedelta(minutes=5)
#: A picked job with an older heartbeat counts as stale in ``pgqueue_sync_stale_jobs``.
STALE_AFTER = timedelta(seconds=30)
#: Seconds the health endpoint waits for the listener's self-probe.
HEALTH_TIMEOUT = 5.0


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError(
            "metrics need the 'metrics' extra: pip install 'pgqueue_sync[metrics]'"
        ) from None
    return prometheus_client


class QueueCollector:
    """A ``prometheus_client`` collector that reads the queue on each scrape."""

    def __init__(
        self,
        queries: Queries,
        *,
        window: timedelta = LOG_WINDOW,
        pruned: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.queries = queries
        self.ops = OpsQueries(queries.driver, queries.settings)
        self.window = window
        self.pruned = pruned

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        queue = GaugeMetricFamily("pgqueuer_queue_count", "Jobs in the queue table.",
                                  labels=["aggregation", "entrypoint", "status"])
        for (entrypoint, status), count in self._queue_counts().items():
            queue.add_metric(["sum", entrypoint, status], count)
        yield queue
        logs = GaugeMetricFamily(
            "pgqueuer_logs_count",
            f"Log transitions over the last {int(self.window.total_seconds())} s.",
            labels=["aggregation", "entrypoint", "status"],
        )
        for (entrypoint, status), count in self._log_counts().items():
            logs.add_metric(["sum", entrypoint, status], count)
        yield logs
        yield from self._ops_metrics(GaugeMetricFamily)
        if self.pruned is not None:
            from prometheus_client.core import CounterMetricFamily

            pruned = CounterMetricFamily("pgqueue_sync_pruned_rows",
                                         "Rows this worker's retention pruner removed.",
                                         labels=["table"])
            for table, count in sorted(self.pruned().items()):
                pruned.add_metric([table], count)
            yield pruned

    def _queue_counts(self) -> dict[tuple[str, str], int]:
        totals: collections.Counter[tuple[str, str]] = collections.Counter()
        for row in self.queries.queue_size():
            totals[(row.entrypoint, row.status)] += row.count
        return dict(sorted(totals.items()))

    def _log_counts(self) -> dict[tuple[str, str], int]:
        totals: collections.Counter[tuple[str, str]] = collections.Counter()
        for row in self.queries.log_statistics(tail=None, last=self.window):
            totals[(row.entrypoint, row.status)] += row.count
        return dict(sorted(totals.items()))

    def _ops_metrics(self, family: Callable[..., Any]) -> Iterator[Any]:
        oldest = family("pgqueue_sync_oldest_ready_job_age_seconds",
                        "Age of the oldest job ready to run.", labels=["entrypoint"])
        for backlog in self.ops.backlog():
            if backlog.oldest_age_seconds is not None:
                oldest.add_metric([backlog.entrypoint], backlog.oldest_age_seconds)
        yield oldest
        yield family("pgqueue_sync_active_workers", "Workers holding picked jobs.",
                     value=len(self.ops.active_workers()))
        yield family("pgqueue_sync_stale_jobs", "Picked jobs with a stale heartbeat.",
                     value=len(self.ops.stale_jobs(STALE_AFTER, limit=None)))


def collect_metrics(
    queries: Queries,
    *,
    window: timedelta = LOG_WINDOW,
    pruned: Callable[[], Mapping[str, int]] | None = None,
) -> str:
    """The Prometheus text exposition of the queue, read now (``pruned``: a
    worker's :attr:`~pgqueue_sync.worker.retention.Pruner.totals`)."""
    prometheus = _prometheus()
    registry = prometheus.CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(queries, window=window, pruned=pruned))
    return str(prometheus.generate_latest(registry).decode())


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz`` on a daemon thread.

    ``/healthz`` answers 200 when ``health()`` returns True (for a worker: its
    listener echoes a self-probe within :data:`HEALTH_TIMEOUT`), else 503 — a
    container liveness probe. Database errors while scraping answer 503 with
    one line, never a traceback.
    """

    def __init__(
        self,
        queries: Queries,
        *,
        port: int,
        host: str = "0.0.0.0",
        health: Callable[[], bool] | None = None,
        pruned: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        _prometheus()
        self.queries = queries
        self.health = health or (lambda: True)
        self.pruned = pruned
        handler = _handler_for(self)
        try:
            self._server = http.server.ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.5},
                                        name="pgqueue_sync-metrics", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        logger.info("serving metrics on port %d (/metrics, /healthz)", self.port)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout)

    def render(self, path: str) -> tuple[int, str]:
        """Status code and body for ``path``."""
        if path == "/healthz":
            healthy = self.health()
            return (200, "ok\n") if healthy else (503, "listener not responding\n")
        if path == "/metrics":
            try:
                return 200, collect_metrics(self.queries, pruned=self.pruned)
            except PgqException as exc:
                return 503, f"metrics unavailable: {exc}\n"
        return 404, "not found; try /metrics or /healthz\n"


def _handler_for(server: MetricsServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            status, body = server.render(self.path.split("?", 1)[0])
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            logger.debug("metrics: " + format, *args)

    return Handler
