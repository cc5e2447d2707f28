"""Child-process entry points for ``benchmarks/worker.py`` (one fresh interpreter per run).

    python benchmarks/_children.py MODE '<json spec>'

Modes:

* ``drain``: run one library's worker in drain mode over a backlog the parent
  already enqueued; print one JSON line with the wall time of ``run()``, the
  number of handler calls and the process's RSS (before ``run()`` and peak).
* ``latency``: run one library's worker in continuous mode; every handler call
  prints ``started <ms>`` (enqueue-to-start latency, from the ``time.time()``
  the producer stamped in the payload) and the worker stops itself after
  ``jobs`` calls; then print the JSON summary line.
* ``enqueue``: call one function of ``benchmarks/enqueue.py`` ``repeat`` times
  and print the rates.

Only each library's public API is used. The last stdout line starting with
``RESULT `` is the result; anything else is progress.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ENTRYPOINT = "bench"
#: Connections in the pgqueue_sync worker's psycopg pool (docs/workers.md: 4-6).
OURS_POOL_SIZE = 4


# -- process measurements --------------------------------------------------------------------


def status_kb(field: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (Linux), e.g. ``VmHWM`` or ``VmRSS``."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float:
    """Current resident set size in MiB."""
    kb = status_kb("VmRSS")
    return (kb or 0) / 1024


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (VmHWM, else ``ru_maxrss``)."""
    kb = status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def asyncpg_kwargs(dsn: str) -> dict[str, Any]:
    """``asyncpg.connect`` keyword arguments for a libpq key=value DSN."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    kwargs: dict[str, Any] = {"database": params["dbname"]}
    for key in ("host", "user", "password"):
        if params.get(key):
            kwargs[key] = params[key]
    if params.get("port"):
        kwargs["port"] = int(str(params["port"]))
    return kwargs


def run_coroutine(coro: Coroutine[Any, Any, Any], loop: str) -> Any:
    """Run PgQueuer on the loop its CLI uses: uvloop when installed (its default), or asyncio."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def _run_options(spec: dict[str, Any]) -> dict[str, Any]:
    """Only the options the spec sets; everything else stays at the library's default."""
    options: dict[str, Any] = {}
    if spec.get("batch_size") is not None:
        options["batch_size"] = spec["batch_size"]
    if spec.get("concurrency") is not None:
        options["concurrency"] = spec["concurrency"]
    return options


# -- pgqueue_sync ----------------------------------------------------------------------------


def _ours_app(dsn: str, handler: Callable[[Any], Any] | None, kind: str,
              one_connection: bool = False) -> tuple[Any, Any]:
    import psycopg
    from psycopg_pool import ConnectionPool

    from pgqueue_sync import PgQueuer, SyncPsycopgDriver

    pool: Any
    if one_connection:  # the README's one-connection form: PgQueuer(SyncPsycopgDriver(conn))
        pool = psycopg.connect(dsn, autocommit=True)
        pgq = PgQueuer(SyncPsycopgDriver(pool))
    else:
        pool = ConnectionPool(
            dsn, min_size=OURS_POOL_SIZE, max_size=OURS_POOL_SIZE,
            kwargs={"autocommit": True}, open=True,
        )
        pool.wait()
        pgq = PgQueuer.from_psycopg_pool(pool)
    if handler is not None:
        if kind == "sync":
            pgq.entrypoint(ENTRYPOINT)(handler)
        else:

            async def async_handler(job: Any) -> None:
                handler(job)

            pgq.entrypoint(ENTRYPOINT)(async_handler)
    return pgq, pool


class Progress:
    """Counts handler calls and notes the time of every tenth of the backlog.

    The same few instructions run in both libraries' handlers. ``next()`` on
    ``itertools.count`` is atomic under the GIL, so threads may share it.
    """

    def __init__(self, jobs: int) -> None:
        self._counter = itertools.count(1)
        self._step = max(1, jobs // 10)
        self.marks: list[float] = []

    def __call__(self, job: Any) -> None:
        if next(self._counter) % self._step == 0:
            self.marks.append(time.perf_counter())

    def handled(self) -> int:
        return next(self._counter) - 1

    def result(self, start: float, seconds: float, before: float, cpu: float) -> dict[str, Any]:
        return {"seconds": seconds, "handled": self.handled(), "rss_before_mb": before,
                "cpu_s": cpu_seconds() - cpu,
                "peak_rss_mb": peak_rss_mb(),
                "tenths_s": [round(m - start, 4) for m in sorted(self.marks)]}


def ours_drain(spec: dict[str, Any]) -> dict[str, Any]:
    progress = Progress(spec["jobs"])
    pgq, pool = _ours_app(spec["dsn"], progress, spec["handler"],
                          spec.get("one_connection", False))
    try:
        before, cpu = rss_mb(), cpu_seconds()
        start = time.perf_counter()
        pgq.run(mode="drain", **_run_options(spec))
        seconds = time.perf_counter() - start
    finally:
        pool.close()
    return progress.result(start, seconds, before, cpu)


def ours_latency(spec: dict[str, Any]) -> dict[str, Any]:
    total = spec["jobs"]
    latencies: list[float] = []
    holder: list[Any] = []

    def bench(job: Any) -> None:
        started = time.time()
        latency_ms = (started - float(job.payload)) * 1000
        latencies.append(latency_ms)
        print(f"started {latency_ms:.3f}", flush=True)
        if len(latencies) >= total:
            holder[0].shutdown.set()

    pgq, pool = _ours_app(spec["dsn"], bench, spec["handler"])
    holder.append(pgq)
    try:
        print("ready", flush=True)
        pgq.run(**_run_options(spec))
    finally:
        pool.close()
    return {"latencies_ms": latencies, "peak_rss_mb": peak_rss_mb()}


# -- PgQueuer 1.6 ----------------------------------------------------------------------------


async def _theirs_app(dsn: str, handler: Callable[[Any], None]) -> tuple[Any, Any]:
    import asyncpg
    from pgqueuer import AsyncpgDriver, PgQueuer

    connection = await asyncpg.connect(**asyncpg_kwargs(dsn))
    pgq = PgQueuer(AsyncpgDriver(connection))

    @pgq.entrypoint(ENTRYPOINT)
    async def bench(job: Any) -> None:
        handler(job)

    return pgq, connection


def theirs_drain(spec: dict[str, Any]) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        from pgqueuer.types import QueueExecutionMode

        progress = Progress(spec["jobs"])
        pgq, connection = await _theirs_app(spec["dsn"], progress)
        try:
            before, cpu = rss_mb(), cpu_seconds()
            start = time.perf_counter()
            await pgq.run(mode=QueueExecutionMode.drain, **_run_options(spec))
            seconds = time.perf_counter() - start
        finally:
            await connection.close()
        return progress.result(start, seconds, before, cpu)

    result: dict[str, Any] = run_coroutine(main(), spec["loop"])
    return result


def theirs_latency(spec: dict[str, Any]) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        total = spec["jobs"]
        latencies: list[float] = []
        holder: list[Any] = []

        def on_job(job: Any) -> None:
            started = time.time()
            latency_ms = (started - float(job.payload)) * 1000
            latencies.append(latency_ms)
            print(f"started {latency_ms:.3f}", flush=True)
            if len(latencies) >= total:
                holder[0].shutdown.set()

        pgq, connection = await _theirs_app(spec["dsn"], on_job)
        holder.append(pgq)
        try:
            print("ready", flush=True)
            await pgq.run(**_run_options(spec))
        finally:
            await connection.close()
        return {"latencies_ms": latencies, "peak_rss_mb": peak_rss_mb()}

    result: dict[str, Any] = run_coroutine(main(), spec["loop"])
    return result


# -- enqueue ---------------------------------------------------------------------------------


def enqueue_rates(spec: dict[str, Any]) -> dict[str, Any]:
    """``repeat`` rates from one ``benchmarks/enqueue.py`` function (each on a fresh database)."""
    import enqueue

    fn = getattr(enqueue, spec["function"])
    args = spec["args"]
    return {"rates": [fn(*args) for _ in range(spec["repeat"])]}


MODES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "drain:ours": ours_drain,
    "drain:theirs": theirs_drain,
    "latency:ours": ours_latency,
    "latency:theirs": theirs_latency,
}


def main() -> None:
    mode, raw = sys.argv[1], sys.argv[2]
    spec = json.loads(raw)
    if mode == "enqueue":
        emit(enqueue_rates(spec))
        return
    emit(MODES[f"{mode}:{spec['lib']}"](spec))


if __name__ == "__main__":
    main()
