"""CPU-bound handlers: one worker process against ``--processes N``.

    python benchmarks/processes.py [--jobs 2000] [--work-ms 5] [--processes 1 2 4]

For each N, fills ``--jobs`` jobs whose handler spins ``--work-ms`` ms of CPU
in pure Python (``benchmarks/cpu_app.py``), then runs ``pgq-sync run
cpu_app:factory --mode drain`` (one process, the threaded default), and
``--processes N`` for each N, timing each from start to exit (interpreter
start-up included). Checks that every job was logged ``successful`` exactly
once and nothing is left. A threaded worker is bound by the GIL to about one
core whatever its concurrency; processes use as many cores as there are.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psycopg  # noqa: E402
from common import scratch_database  # noqa: E402

from pgqueue_sync import DBSettings, Queries, SyncPsycopgDriver  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def fill(dsn: str, jobs: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
        for start in range(0, jobs, 1_000):
            count = min(1_000, jobs - start)
            queries.enqueue(["cpu"] * count, [None] * count)


def check(dsn: str, jobs: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        [(done, distinct)] = conn.execute(
            "SELECT count(*), count(DISTINCT job_id) FROM pgqueuer_log "
            "WHERE status = 'successful'").fetchall()
        [(left,)] = conn.execute("SELECT count(*) FROM pgqueuer").fetchall()
    if done != jobs or distinct != jobs or left:
        raise SystemExit(f"{done} successful rows for {distinct} of {jobs} jobs; {left} left")


def drain(dsn: str, jobs: int, work_ms: float, processes: int | None) -> float:
    command = [sys.executable, "-m", "pgqueue_sync", "--dsn", dsn, "run", "cpu_app:factory",
               "--mode", "drain", "--dequeue-timeout", "1"]
    if processes is not None:
        command += ["--processes", str(processes)]
    command += ["--", "--work-ms", str(work_ms)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=600)
    seconds = time.perf_counter() - started
    check(dsn, jobs)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2_000)
    parser.add_argument("--work-ms", type=float, default=5.0)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    print(f"{args.jobs:,} jobs of {args.work_ms:g} ms CPU each; {os.cpu_count()} CPUs")
    baseline = None
    for processes in (None, *args.processes):
        with scratch_database() as dsn:
            fill(dsn, args.jobs)
            seconds = drain(dsn, args.jobs, args.work_ms, processes)
        rate = args.jobs / seconds
        baseline = baseline or rate
        label = "one process (threads)" if processes is None else f"--processes {processes}"
        print(f"{label:<24} {seconds:6.2f} s  {rate:8,.0f} jobs/s  {rate / baseline:5.2f}x")


if __name__ == "__main__":
    main()
