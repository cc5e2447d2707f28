"""``pgq-sync metrics`` and ``pgq-sync health``: Prometheus exposition and a liveness probe."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import click

from ..metrics import MetricsServer, collect_metrics
from .group import UserError, cli, current_state

#: Seconds ``health`` waits for the worker's answer.
HEALTH_REQUEST_TIMEOUT = 10.0


@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics on this port until interrupted (default: print once).")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to serve on.")
def metrics(port: int | None, host: str) -> None:
    """Queue metrics in the Prometheus text format (needs the 'metrics' extra)."""
    queries = current_state().queries
    if port is None:
        click.echo(collect_metrics(queries), nl=False)
        return
    server = MetricsServer(queries, port=port, host=host).start()
    click.echo(f"serving http://{host}:{server.port}/metrics (Ctrl-C to stop)", err=True)
    try:
        threading.Event().wait()
    finally:
        server.stop()


@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), required=True,
              help="The worker's --metrics-port.")
@click.option("--host", default="127.0.0.1", show_default=True)
def health(port: int, host: str) -> None:
    """Exit 0 if the worker serving on PORT is alive (its listener answers), else 1.

    For container liveness probes: `pgq-sync health --port 9100`.
    """
    url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_REQUEST_TIMEOUT) as response:
            body = response.read().decode().strip()
    except urllib.error.HTTPError as exc:
        raise UserError(f"worker unhealthy: {exc.read().decode().strip() or exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"no worker answering on {url}: {reason}") from None
    click.echo(body)
