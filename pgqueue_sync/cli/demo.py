"""The ``pgq-sync demo`` application: install if needed, enqueue, process, report."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Callable

from psycopg_pool import ConnectionPool

from ..app import PgQueuer
from ..drivers.psycopg import with_connect_timeout
from ..errors import RetryRequested
from ..models import Job
from ..schema import Schema
from ..settings import DBSettings
from ..worker.cancellation import Context

DEMO_JOBS = 20


@dataclasses.dataclass
class DemoReport:
    """What the demo did."""

    installed_schema: bool
    enqueued: int
    outcomes: dict[str, int]
    seconds: float
    #: Jobs of the demo's entrypoints left by an earlier run, drained as well.
    leftovers: int = 0


def run_demo(
    conninfo: str,
    *,
    jobs: int = DEMO_JOBS,
    settings: DBSettings | None = None,
    echo: Callable[[str], object] = print,
) -> DemoReport:
    """Install the schema if missing, enqueue ``jobs`` demo jobs and drain them.

    Uses a small pool for the worker; blocks until the queue is empty.
    """
    settings = settings or DBSettings()
    conninfo = with_connect_timeout(conninfo)
    with ConnectionPool(conninfo, min_size=1, max_size=3, kwargs={"autocommit": True}) as pool:
        ran: list[int] = []  # list.append is atomic: handlers on several threads add to it
        pgq = PgQueuer.from_psycopg_pool(pool, settings=settings, resources={"ran": ran})
        installed = _ensure_schema(pgq, settings)
        if installed:
            echo("installed the queue schema")
        _register(pgq, echo)
        names = [("greet", "greet_async", "flaky")[i % 3] for i in range(jobs)]
        ids = pgq.queries.enqueue(names, [f"job {i}".encode() for i in range(jobs)])
        echo(f"enqueued {len(ids)} jobs; running the worker until the queue is empty")
        started = time.perf_counter()
        pgq.run(mode="drain", dequeue_timeout=1.0, log_aggregation_interval=0)
        elapsed = time.perf_counter() - started
        outcomes: Counter[str] = Counter(status for _, status in pgq.queries.job_status(ids))
    leftovers = len(set(ran) - set(ids))
    return DemoReport(installed, len(ids), dict(outcomes), elapsed, leftovers)


def _ensure_schema(pgq: PgQueuer, settings: DBSettings) -> bool:
    schema = Schema(pgq.queries.driver, settings)
    if schema.is_installed():
        schema.upgrade()
        return False
    schema.install()
    return True


def _register(pgq: PgQueuer, echo: Callable[[str], object]) -> None:
    @pgq.entrypoint("greet")
    def greet(job: Job, ctx: Context) -> None:
        ctx.resources["ran"].append(job.id)
        echo(f"  def handler ran {job.payload!r} (job {job.id})")

    @pgq.entrypoint("greet_async")
    async def greet_async(job: Job, ctx: Context) -> None:
        await asyncio.sleep(0.01)
        ctx.resources["ran"].append(job.id)
        echo(f"  async handler ran {job.payload!r} (job {job.id})")

    @pgq.entrypoint("flaky")
    def flaky(job: Job, ctx: Context) -> None:
        if job.attempts == 0:
            raise RetryRequested(delay=0.1, reason="demo: first attempt always retries")
        ctx.resources["ran"].append(job.id)
        echo(f"  retried handler ran {job.payload!r} on attempt {job.attempts + 1}")
