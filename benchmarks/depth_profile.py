"""Where the server's time goes while one worker drains a deep backlog.

    python benchmarks/depth_profile.py [JOBS ...]

For each JOBS (default 20,000 and 1,000,000), on a new private cluster with
stock settings plus ``pg_stat_statements`` (autovacuum on), fills JOBS queued
no-op jobs and drains them as ``benchmarks/depth_probe.py`` does (one worker,
pool of 4, defaults). Prints the drain rate, then the time the server spent in
each kind of work, per job: the worker's claims and outcome writes, the
statistics fold, the worker's own VACUUM and ANALYZE of the queue table, other
statements, and autovacuum (CPU of its worker processes, sampled from
``/proc``), and the fold still owed when the drain ends (run and timed
then: a short drain ends before the first periodic fold, so it owes the whole
fold for its log). Statement figures are ``pg_stat_statements`` execution plus
planning time, so they include waits as well as CPU. On a machine where the
worker and the server share the cores, the work that grows with the length of
a drain (the fold, VACUUM, autovacuum) is what a deep drain pays and a short
one does not. See the depth section of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psycopg  # noqa: E402
from cluster import benchmark_server, settings_summary  # noqa: E402
from common import scratch_database  # noqa: E402
from depth_probe import drain, fill  # noqa: E402

from pgqueue_sync import DBSettings, Queries, SyncPsycopgDriver  # noqa: E402

#: Server settings on top of the stock configuration: statement statistics only.
PROFILE_SETTINGS = {
    "shared_preload_libraries": "'pg_stat_statements'",
    "pg_stat_statements.track_utility": "on",
}
SAMPLE_INTERVAL = 0.2
_TICK = os.sysconf("SC_CLK_TCK")

#: Statement kinds, by a fragment of their text (first match wins).
KINDS = (
    ("claim (with piggybacked outcomes)", "claimed AS"),
    ("outcome writes", "removed AS"),
    ("statistics fold", "flipped AS"),
    ("heartbeats", "heartbeat"),
    ("VACUUM (worker's upkeep)", "VACUUM"),
    ("ANALYZE (worker's upkeep)", "ANALYZE"),
)


def autovacuum_sampler(stop: threading.Event) -> tuple[threading.Thread, dict[int, float]]:
    """Sample the CPU seconds of every autovacuum worker process until ``stop``."""
    seen: dict[int, float] = {}

    def sample() -> None:
        while not stop.wait(SAMPLE_INTERVAL):
            for pid, seconds in _autovacuum_workers():
                seen[pid] = max(seen.get(pid, 0.0), seconds)

    thread = threading.Thread(target=sample, name="autovacuum-sampler", daemon=True)
    thread.start()
    return thread, seen


def _autovacuum_workers() -> Iterator[tuple[int, float]]:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"autovacuum worker" not in handle.read():
                    continue
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        yield int(pid), (int(fields[11]) + int(fields[12])) / _TICK


def statement_seconds(dsn: str) -> dict[str, tuple[int, float]]:
    """Calls and seconds (execution + planning) per statement kind since the reset."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query, calls, total_exec_time + total_plan_time FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for query, calls, millis in rows:
        kind = next((name for name, text in KINDS if text in query), "other statements")
        totals[kind][0] += calls
        totals[kind][1] += millis / 1000
    return {kind: (int(calls), seconds) for kind, (calls, seconds) in totals.items()}


def profile(jobs: int) -> None:
    with benchmark_server(True, PROFILE_SETTINGS) as server, scratch_database() as dsn:
        print(settings_summary(server), file=sys.stderr, flush=True)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        fill(dsn, jobs)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")
        stop = threading.Event()
        sampler, autovacuum = autovacuum_sampler(stop)
        try:
            marks = drain(dsn, jobs, upkeep=True)
        finally:
            stop.set()
            sampler.join(5)
        seconds = marks[-1][1] - marks[0][1]
        kinds = statement_seconds(dsn)
        owed = owed_fold(dsn)
    print(f"\n{jobs:,} jobs: {jobs / seconds:,.0f} jobs/s in {seconds:.1f} s")
    print(f"{'work':<36} {'calls':>9} {'seconds':>9} {'µs/job':>8}")
    for kind, (calls, spent) in sorted(kinds.items(), key=lambda item: -item[1][1]):
        print(f"{kind:<36} {calls:>9,} {spent:>9.1f} {spent / jobs * 1e6:>8.1f}")
    spent = sum(autovacuum.values())
    print(f"{'autovacuum workers (CPU)':<36} {len(autovacuum):>9,} {spent:>9.1f} "
          f"{spent / jobs * 1e6:>8.1f}")
    rows, spent = owed
    print(f"{'fold owed after the drain':<36} {rows:>9,} {spent:>9.1f} "
          f"{spent / jobs * 1e6:>8.1f}  (calls: log rows folded)")


def owed_fold(dsn: str) -> tuple[int, float]:
    """Fold what the drain left unaggregated; return the rows and the seconds it took."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
        [(rows,)] = conn.execute(
            "SELECT count(*) FROM pgqueuer_log WHERE NOT aggregated").fetchall()
        start = time.perf_counter()
        queries.aggregate_logs()
        return rows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="*", type=int, default=[20_000, 1_000_000])
    for jobs in parser.parse_args().jobs:
        profile(jobs)


if __name__ == "__main__":
    main()
