"""Worker benchmark: pgqueue_sync (threads, psycopg) beside PgQueuer 1.6.0 (asyncio, asyncpg).

    python benchmarks/worker.py [--jobs 20000] [--repeat 3] [--quick] [--depth] [--json out.json]

Against one PostgreSQL server, in one run, each library on the same workloads:

a. drain of ``--jobs`` queued no-op jobs (jobs/s; median of ``--repeat`` runs),
   at each library's defaults and with ``batch_size=100``;
b. idle latency, enqueue to handler start, over ``--latency-jobs`` single jobs;
c. enqueue rate (batches of 1,000 and single rows; ``benchmarks/enqueue.py``);
d. worker CPU per job and peak RSS of the worker process (defaults and batch 100);
e. with ``--depth``: drain rate at ``--jobs`` versus ``--depth-factor`` times as
   many queued jobs (is the per-job cost flat with depth?).

Every worker runs in a fresh child interpreter (``benchmarks/_children.py``) on
a fresh scratch database whose backlog is enqueued before the child starts; a
drain counts only if the queue is empty afterwards and the log holds exactly
one ``successful`` row per job. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import queue
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psycopg  # noqa: E402
from _children import ENTRYPOINT, OURS_POOL_SIZE  # noqa: E402
from cluster import benchmark_server  # noqa: E402
from common import scratch_database, server_dsn  # noqa: E402
from server_cpu import server_cpu_seconds  # noqa: E402

from pgqueue_sync import DBSettings, Queries, SyncPsycopgDriver  # noqa: E402
from pgqueue_sync import __version__ as ours_version  # noqa: E402

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_children.py")
#: Rows per INSERT when filling a backlog (not measured).
FILL_BATCH = 1_000
PAYLOAD = b"x" * 32
#: Idle gap before each latency job, drawn uniformly (seconds): long enough for the
#: previous job to finish, random so it cannot phase-lock with either worker's timers.
LATENCY_GAP = (0.05, 0.15)
LATENCY_WARMUP = 5
CHILD_TIMEOUT = 900.0

#: Targets from issue 13 (ratios against PgQueuer in the same run).
TARGET_DEFAULTS_DEF = 2.0
TARGET_DEFAULTS_ASYNC = 1.5
TARGET_BATCH100 = 1.8
#: Worker CPU per job at defaults, ours / theirs, at most this.
TARGET_CPU_SHARE = 0.7
#: The worker's share of idle latency (after enqueue() returned), p50, at most (ms).
TARGET_WORKER_SHARE_MS = 1.0
TARGET_ENQUEUE_BATCH = 1.5
TARGET_ENQUEUE_SINGLE = 1.0
#: "Flat with depth": the deep drain keeps at least this share of the shallow rate.
TARGET_DEPTH = 0.9


class BenchmarkError(RuntimeError):
    """A run that did not do what it claims: its figure must not be reported."""


@dataclasses.dataclass(frozen=True)
class Drain:
    """One drain configuration; ``None`` leaves a setting at the library's default."""

    key: str
    lib: str  # "ours" | "theirs"
    handler: str  # "sync" | "async"
    batch_size: int | None = None
    concurrency: int | None = None
    one_connection: bool = False  # ours on one SyncPsycopgDriver connection, no pool

    def describe(self) -> str:
        handler = "def" if self.handler == "sync" else "async def"
        batch = self.batch_size or "default"
        extra = "" if self.lib == "theirs" else f", concurrency {self.concurrency or 'default'}"
        if self.one_connection:
            extra += ", one connection"
        return f"{self.lib} {handler}, batch {batch}{extra}"


DRAINS = [
    Drain("ours_def", "ours", "sync"),
    Drain("theirs", "theirs", "async"),
    Drain("ours_async", "ours", "async"),
    Drain("ours_def_b100", "ours", "sync", batch_size=100, concurrency=100),
    Drain("theirs_b100", "theirs", "async", batch_size=100),
    Drain("ours_async_b100", "ours", "async", batch_size=100, concurrency=100),
    Drain("ours_def_b100_c10", "ours", "sync", batch_size=100),
    Drain("ours_def_one", "ours", "sync", one_connection=True),
]


# -- children --------------------------------------------------------------------------------


def child_command(mode: str, spec: dict[str, Any]) -> list[str]:
    return [sys.executable, CHILD, mode, json.dumps(spec)]


def parse_result(stdout: str, stderr: str, what: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT "):])
            return result
    raise BenchmarkError(f"{what}: the child printed no result\n{stderr[-3000:]}")


def run_child(mode: str, spec: dict[str, Any], what: str) -> dict[str, Any]:
    done = subprocess.run(child_command(mode, spec), capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT, check=False)
    if done.returncode != 0:
        raise BenchmarkError(f"{what}: child exited {done.returncode}\n{done.stderr[-3000:]}")
    return parse_result(done.stdout, done.stderr, what)


# -- database helpers ------------------------------------------------------------------------


def fill(dsn: str, jobs: int) -> None:
    """Enqueue ``jobs`` no-op jobs (both libraries read the same rows), then ANALYZE and
    CHECKPOINT so neither drain pays for the fill's statistics or dirty buffers."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
        left = jobs
        while left > 0:
            n = min(FILL_BATCH, left)
            queries.enqueue([ENTRYPOINT] * n, [PAYLOAD] * n)
            left -= n
        conn.execute("ANALYZE")
        conn.execute("CHECKPOINT")


def verify(dsn: str, jobs: int, handled: int, what: str) -> None:
    """Every job ran once and was logged ``successful``, and nothing is left queued."""
    settings = DBSettings()
    with psycopg.connect(dsn, autocommit=True) as conn:
        left = conn.execute(f"SELECT count(*) FROM {settings.queue_table}").fetchone()
        ok = conn.execute(
            f"SELECT count(*) FROM {settings.queue_table_log} WHERE status = 'successful'"
        ).fetchone()
    left_n = left[0] if left else -1
    ok_n = ok[0] if ok else -1
    if left_n != 0 or ok_n != jobs or handled != jobs:
        raise BenchmarkError(
            f"{what}: expected {jobs} jobs run and logged successful with an empty queue; "
            f"got {handled} handler calls, {ok_n} successful log rows, {left_n} rows left"
        )


# -- a/d/e: drains ---------------------------------------------------------------------------


def drain_once(drain: Drain, jobs: int, loop: str) -> dict[str, Any]:
    what = f"drain {jobs} ({drain.describe()})"
    with scratch_database() as dsn:
        fill(dsn, jobs)
        spec = {"lib": drain.lib, "dsn": dsn, "handler": drain.handler, "loop": loop,
                "batch_size": drain.batch_size, "concurrency": drain.concurrency,
                "one_connection": drain.one_connection, "jobs": jobs}
        server_before = server_cpu_seconds()
        result = run_child("drain", spec, what)
        server_after = server_cpu_seconds()
        verify(dsn, jobs, result["handled"], what)
    if server_before is not None and server_after is not None:
        result["server_cpu_s"] = server_after - server_before
    result["rate"] = jobs / result["seconds"]
    progress(f"  {what}: {result['rate']:,.0f} jobs/s, peak RSS {result['peak_rss_mb']:.1f} MB")
    return result


def run_drains(drains: list[Drain], jobs: int, repeat: int, loop: str) -> dict[str, list[Any]]:
    """Each configuration ``repeat`` times, interleaved (ours and theirs alternate), so a
    burst of load from elsewhere on the machine hits both libraries alike."""
    runs: dict[str, list[Any]] = {d.key: [] for d in drains}
    for _ in range(repeat):
        for drain in drains:
            runs[drain.key].append(drain_once(drain, jobs, loop))
    return runs


def median_rate(runs: list[dict[str, Any]]) -> float:
    return statistics.median(r["rate"] for r in runs)


# -- b: idle latency -------------------------------------------------------------------------


def _lines(stream: Any) -> Iterator[str]:
    yield from iter(stream.readline, "")


def latency_run(lib: str, handler: str, jobs: int, loop: str, seed: int) -> dict[str, Any]:
    """One worker (child) sits idle; the parent enqueues one job at a time, stamping
    ``time.time()`` into the payload just before ``enqueue()``; the handler reports
    ``time.time()`` at its start minus that stamp. The next job is enqueued only after
    the previous one started plus a random idle gap."""
    what = f"latency ({lib}, {handler})"
    total = LATENCY_WARMUP + jobs
    rng = random.Random(seed)
    with scratch_database() as dsn:
        spec = {"lib": lib, "dsn": dsn, "handler": handler, "loop": loop, "jobs": total}
        proc = subprocess.Popen(child_command("latency", spec), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        out: list[str] = []
        producer_ms: list[float] = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in _lines(proc.stdout):
                out.append(line)
                lines.put(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            _expect(lines, "ready", 60.0, what)
            time.sleep(0.5)
            with psycopg.connect(dsn, autocommit=True) as conn:
                queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
                for _ in range(total):
                    time.sleep(rng.uniform(*LATENCY_GAP))
                    stamp = time.time()
                    queries.enqueue(ENTRYPOINT, repr(stamp).encode())
                    producer_ms.append((time.time() - stamp) * 1000)
                    _expect(lines, "started", 30.0, what)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader.join(5)
        stderr = proc.stderr.read() if proc.stderr else ""
        if proc.returncode != 0:
            raise BenchmarkError(f"{what}: child exited {proc.returncode}\n{stderr[-3000:]}")
        result = parse_result("".join(out), stderr, what)
        verify(dsn, total, len(result["latencies_ms"]), what)
    samples = sorted(result["latencies_ms"][LATENCY_WARMUP:])
    summary = {
        "samples": len(samples),
        "p50": statistics.median(samples),
        "p95": statistics.quantiles(samples, n=100, method="inclusive")[94],
        "max": samples[-1],
        "mean": statistics.fmean(samples),
        # The producer's own enqueue() call (INSERT + commit + NOTIFY), inside every sample.
        "producer_p50": statistics.median(producer_ms[LATENCY_WARMUP:]),
        # What is left once the producer's call returned: the worker's own share.
        "after_commit_p50": statistics.median(
            lat - prod for lat, prod in zip(result["latencies_ms"][LATENCY_WARMUP:],
                                            producer_ms[LATENCY_WARMUP:], strict=True)
        ),
    }
    progress(f"  {what}: p50 {summary['p50']:.2f} ms, p95 {summary['p95']:.2f} ms, "
             f"max {summary['max']:.2f} ms")
    return summary


def _expect(lines: queue.Queue[str], prefix: str, timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchmarkError(f"{what}: no {prefix!r} from the worker within {timeout:.0f}s")
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            continue
        if line.startswith(prefix):
            return line


# -- c: enqueue ------------------------------------------------------------------------------


def enqueue_rate(function: str, args: list[int], repeat: int) -> float:
    spec = {"function": function, "args": args, "repeat": repeat}
    rates = run_child("enqueue", spec, f"enqueue {function}")["rates"]
    rate = statistics.median(rates)
    progress(f"  enqueue {function}{tuple(args)}: {rate:,.0f} jobs/s")
    return rate


# -- the table -------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    name: str
    ours: float
    theirs: float | None
    unit: str
    higher_is_better: bool = True
    target: str = ""
    passed: bool | None = None
    compare: bool = True

    @property
    def advantage(self) -> float | None:
        """> 1.0 means pgqueue_sync is better, whichever way the unit points."""
        if not self.compare or self.theirs is None or self.ours == 0 or self.theirs == 0:
            return None
        return self.ours / self.theirs if self.higher_is_better else self.theirs / self.ours


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("jobs/s", "us/job"):
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.2f}"
    return f"{value:.1f}"


def render(rows: list[Row]) -> str:
    header = (f"{'benchmark':<50} {'pgqueue_sync':>12} {'pgqueuer':>10} {'unit':<6} "
              f"{'ratio':>6}  {'target':<22}")
    lines = [header, "-" * len(header)]
    for r in rows:
        adv = r.advantage
        ratio = "-" if adv is None else f"{adv:.2f}x"
        verdict = "" if r.passed is None else ("  PASS" if r.passed else "  MISS")
        lines.append(
            f"{r.name:<50} {fmt(r.ours, r.unit):>12} {fmt(r.theirs, r.unit):>10} {r.unit:<6} "
            f"{ratio:>6}  {r.target}{verdict}".rstrip()
        )
    lines.append("ratio > 1.00x means pgqueue_sync is better: ours/theirs for jobs/s, "
                 "theirs/ours for ms, MB and us/job.")
    return "\n".join(lines)


def drain_rows(runs: dict[str, list[Any]], jobs: int) -> list[Row]:
    rate = {key: median_rate(r) for key, r in runs.items()}
    t_def, t_b100 = rate["theirs"], rate["theirs_b100"]

    def row(name: str, ours: float, theirs: float, target: float | None) -> Row:
        if target is None:
            return Row(name, ours, theirs, "jobs/s", target="(informational)")
        return Row(name, ours, theirs, "jobs/s", target=f">= {target:.1f}x",
                   passed=ours / theirs >= target)

    n = f"{jobs:,}"
    return [
        row(f"a. drain {n}, defaults, def vs async", rate["ours_def"], t_def,
            TARGET_DEFAULTS_DEF),
        row(f"a. drain {n}, defaults, async vs async", rate["ours_async"], t_def,
            TARGET_DEFAULTS_ASYNC),
        row(f"a. drain {n}, batch 100 (ours conc 100), def", rate["ours_def_b100"], t_b100,
            TARGET_BATCH100),
        row(f"a. drain {n}, batch 100 (ours conc 100), async", rate["ours_async_b100"],
            t_b100, None),
        row(f"a. drain {n}, batch 100 (ours conc 10), def", rate["ours_def_b100_c10"],
            t_b100, None),
        row(f"a. drain {n}, defaults, def on one connection", rate["ours_def_one"], t_def,
            None),
    ]


def latency_rows(ours: dict[str, Any], theirs: dict[str, Any], ours_async: dict[str, Any] | None,
                 ) -> list[Row]:
    rows = []
    for stat in ("p50", "p95", "max"):
        target, passed = "", None
        if stat == "p50":
            target = "ours <= theirs"
            passed = ours[stat] <= theirs[stat]
        rows.append(Row(f"b. idle latency {stat}, def vs async", ours[stat], theirs[stat], "ms",
                        higher_is_better=False, target=target, passed=passed))
    rows.append(Row("b.   p50 of the producer's enqueue() call", ours["producer_p50"],
                    theirs["producer_p50"], "ms", higher_is_better=False,
                    target="(same producer for both)"))
    share = ours["after_commit_p50"]
    rows.append(Row("b.   p50 from enqueue() returned to start", share,
                    theirs["after_commit_p50"], "ms", higher_is_better=False,
                    target=f"ours <= {TARGET_WORKER_SHARE_MS:.1f} ms",
                    passed=share <= TARGET_WORKER_SHARE_MS))
    if ours_async is not None:
        rows.append(Row("b. idle latency p50, async vs async", ours_async["p50"],
                        theirs["p50"], "ms", higher_is_better=False,
                        target="(informational)"))
    return rows


def rss_rows(runs: dict[str, list[Any]]) -> list[Row]:
    def peak(key: str) -> float:
        return max(r["peak_rss_mb"] for r in runs[key])

    def base(key: str) -> float:
        return statistics.median(r["rss_before_mb"] for r in runs[key])

    def cpu(key: str) -> float:
        return statistics.median(r["cpu_s"] / r["handled"] * 1e6 for r in runs[key])

    def server(key: str) -> float | None:
        per_job = [r["server_cpu_s"] / r["handled"] * 1e6 for r in runs[key]
                   if "server_cpu_s" in r]
        return statistics.median(per_job) if per_job else None

    def both(key: str) -> float | None:
        spent = server(key)
        return None if spent is None else spent + cpu(key)

    rows = [
        Row("d. worker CPU per job, defaults (def vs async)", cpu("ours_def"), cpu("theirs"),
            "us/job", higher_is_better=False, target=f"ours <= {TARGET_CPU_SHARE:.1f}x theirs",
            passed=cpu("ours_def") <= TARGET_CPU_SHARE * cpu("theirs")),
        Row("d. worker CPU per job, batch 100 (def vs async)", cpu("ours_def_b100"),
            cpu("theirs_b100"), "us/job", higher_is_better=False, target="(informational)"),
        Row("d. peak RSS, defaults drain (def vs async)", peak("ours_def"), peak("theirs"), "MB",
            higher_is_better=False),
        Row("d. peak RSS, batch 100 drain (def vs async)", peak("ours_def_b100"),
            peak("theirs_b100"), "MB", higher_is_better=False),
        Row("d.   RSS before run() (imports, app, conns)", base("ours_def"), base("theirs"), "MB",
            higher_is_better=False, target="(informational)"),
    ]
    ours_server, theirs_server = server("ours_def"), server("theirs")
    ours_both, theirs_both = both("ours_def"), both("theirs")
    if ours_server is not None and theirs_server is not None:  # a local server
        rows.insert(2, Row("d. server CPU per job, defaults (local server)", ours_server,
                           theirs_server, "us/job", higher_is_better=False,
                           target="(informational)"))
    if ours_both is not None and theirs_both is not None:
        rows.insert(3, Row("d. worker + server CPU per job, defaults", ours_both, theirs_both,
                           "us/job", higher_is_better=False, target="(informational)"))
    return rows


def depth_rows(shallow: dict[str, float], deep: dict[str, float], first: dict[str, float],
               jobs: int, deep_jobs: int) -> list[Row]:
    rows = [
        Row(f"e. drain {deep_jobs:,} queued, defaults, def vs async", deep["ours"],
            deep.get("theirs"), "jobs/s", target="(informational)"),
    ]
    ours = deep["ours"] / shallow["ours"]
    theirs = deep["theirs"] / shallow["theirs"] if "theirs" in deep else None
    rows.append(Row(
        f"e. rate at {deep_jobs:,} / rate at {jobs:,} queued", ours * 100,
        None if theirs is None else theirs * 100, "%", compare=False,
        target=f"ours >= {TARGET_DEPTH * 100:.0f}% (flat)", passed=ours >= TARGET_DEPTH,
    ))
    # The first tenth of the deep drain runs as many jobs as the shallow drain, warm-up
    # included, but with the whole deep backlog still queued behind them, and before dead
    # rows, log rows and log aggregation pile up: depth alone.
    rows.append(Row(
        f"e.   first {deep_jobs // 10:,} of {deep_jobs:,} / drain of {jobs:,}",
        first["ours"] / shallow["ours"] * 100,
        first["theirs"] / shallow["theirs"] * 100 if "theirs" in first else None,
        "%", compare=False, target="(informational)",
    ))
    return rows


def first_tenth_rate(runs: list[dict[str, Any]], jobs: int) -> float:
    """Jobs/s over the first tenth of a drain (from the handler-call marks)."""
    return statistics.median((jobs // 10) / r["tenths_s"][0] for r in runs)


# -- main ------------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def server_version() -> str:
    with psycopg.connect(server_dsn(), autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        autovacuum = conn.execute("SHOW autovacuum").fetchone()
    return f"{row[0] if row else '?'} (autovacuum {autovacuum[0] if autovacuum else '?'})"


def code_under_test() -> str:
    """The repository's commit, with ``+dirty`` when pgqueue_sync/ has uncommitted edits."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pgqueue_sync"],
                               cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+dirty" if dirty.strip() else "")


def versions() -> dict[str, str]:
    from importlib.metadata import version

    found = {"pgqueue_sync": ours_version, "python": platform.python_version()}
    for dist in ("pgqueuer", "asyncpg", "psycopg", "psycopg-pool", "uvloop"):
        try:
            found[dist] = version(dist)
        except Exception:  # noqa: BLE001 - informational only
            found[dist] = "?"
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=None,
                        help="jobs per drain (default 20000; 2000 with --quick)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per drain configuration, median reported (default 3; "
                             "1 with --quick)")
    parser.add_argument("--latency-jobs", type=int, default=None,
                        help="single jobs for the idle-latency measurement (default 200; "
                             "50 with --quick)")
    parser.add_argument("--enqueue-single", type=int, default=None,
                        help="rows for the single-row enqueue rate (default 2000; 300 with "
                             "--quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small N, 1 repeat")
    parser.add_argument("--depth", action="store_true",
                        help="also drain --depth-factor x --jobs queued jobs "
                             "(adds ~3.5 min at the default --jobs)")
    parser.add_argument("--depth-factor", type=int, default=10)
    parser.add_argument("--theirs-loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="PgQueuer's event loop; its CLI uses uvloop, a dependency of "
                             "pgqueuer 1.6 on Linux (default uvloop)")
    parser.add_argument("--seed", type=int, default=20261123, help="seed of the latency gaps")
    parser.add_argument("--json", metavar="PATH", help="also write every raw figure here")
    parser.add_argument("--private-cluster", action="store_true",
                        help="run everything on a new private cluster with stock settings "
                             "(autovacuum on; benchmarks/cluster.py), dropped afterwards")
    parser.add_argument("--soak", type=int, metavar="MINUTES",
                        help="run only the soak benchmark (benchmarks/soak.py) for MINUTES, "
                             "on a private cluster; --json and --seed are passed on")
    args = parser.parse_args(argv)
    quick = args.quick
    args.jobs = args.jobs or (2_000 if quick else 20_000)
    args.repeat = args.repeat or (1 if quick else 3)
    args.latency_jobs = args.latency_jobs or (50 if quick else 200)
    args.enqueue_single = args.enqueue_single or (300 if quick else 2_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.soak is not None:
        import soak

        return soak.main(["--minutes", str(args.soak), "--seed", str(args.seed),
                          *(["--json", args.json] if args.json else [])])
    with benchmark_server(args.private_cluster):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    meta = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "server": server_version(),
        "versions": versions(),
        "commit": code_under_test(),
        "psycopg_impl": psycopg.pq.__impl__,
        "ours_pool_size": OURS_POOL_SIZE,
        "theirs_loop": args.theirs_loop,
        "jobs": args.jobs,
        "repeat": args.repeat,
    }
    progress(f"worker benchmark: {args.jobs:,} jobs x {args.repeat} repeats; PostgreSQL "
             f"{meta['server']}; {meta['cpus']} CPUs; psycopg {meta['psycopg_impl']}")
    raw: dict[str, Any] = {"meta": meta}
    try:
        rows = _measure(args, raw)
    except BenchmarkError as exc:
        progress(f"ABORTED: {exc}")
        return 1
    meta["seconds"] = round(time.monotonic() - started, 1)
    print()
    print(f"pgqueue_sync {meta['versions']['pgqueue_sync']} vs pgqueuer "
          f"{meta['versions']['pgqueuer']} (asyncpg {meta['versions']['asyncpg']}, "
          f"{args.theirs_loop}) on psycopg {meta['versions']['psycopg']} "
          f"({meta['psycopg_impl']} libpq wrapper); PostgreSQL {meta['server']}; "
          f"{meta['cpus']} CPUs; {args.jobs:,} jobs, median of {args.repeat}; "
          f"{meta['seconds']:.0f} s")
    print(render(rows))
    if meta["psycopg_impl"] == "python":
        print("note: psycopg runs on its pure-Python libpq wrapper here; the docs recommend "
              "pgqueue_sync[binary] (psycopg's C implementation), see benchmarks/README.md.")
    if args.json:
        raw["rows"] = [dataclasses.asdict(r) | {"ratio": r.advantage} for r in rows]
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(raw, out, indent=2)
    return 0


def _measure(args: argparse.Namespace, raw: dict[str, Any]) -> list[Row]:
    progress("a/d. drains (each in a fresh child on a fresh database):")
    runs = run_drains(DRAINS, args.jobs, args.repeat, args.theirs_loop)
    raw["drains"] = runs
    rows = drain_rows(runs, args.jobs)

    progress("b. idle latency:")
    lat: dict[str, Any] = {
        "ours": latency_run("ours", "sync", args.latency_jobs, args.theirs_loop, args.seed),
        "theirs": latency_run("theirs", "async", args.latency_jobs, args.theirs_loop, args.seed),
        "ours_async": latency_run("ours", "async", args.latency_jobs, args.theirs_loop,
                                  args.seed),
    }
    raw["latency"] = lat
    rows += latency_rows(lat["ours"], lat["theirs"], lat["ours_async"])

    progress("c. enqueue:")
    enq: dict[str, float] = {}
    batch_args = [args.jobs, 1_000]
    single_args = [args.enqueue_single]
    measure: list[tuple[str, str, list[int]]] = [
        ("batch_ours", "ours_batch", batch_args), ("batch_theirs", "theirs_batch", batch_args),
        ("single_ours", "ours_single", single_args),
        ("single_theirs", "theirs_single", single_args),
    ]
    for key, function, fargs in measure:
        enq[key] = enqueue_rate(function, fargs, args.repeat)
    raw["enqueue"] = enq
    rows += [
        Row(f"c. enqueue {args.jobs:,} in batches of 1,000", enq["batch_ours"],
            enq["batch_theirs"], "jobs/s", target=f">= {TARGET_ENQUEUE_BATCH:.1f}x",
            passed=enq["batch_ours"] >= TARGET_ENQUEUE_BATCH * enq["batch_theirs"]),
        Row(f"c. enqueue {args.enqueue_single:,} single rows", enq["single_ours"],
            enq["single_theirs"], "jobs/s", target=f">= {TARGET_ENQUEUE_SINGLE:.1f}x",
            passed=enq["single_ours"] >= TARGET_ENQUEUE_SINGLE * enq["single_theirs"]),
    ]

    rows += rss_rows(runs)

    if args.depth:
        deep_jobs = args.jobs * args.depth_factor
        progress(f"e. depth: drain {deep_jobs:,} queued jobs (1 run each):")
        deep_drains = [d for d in DRAINS if d.key in ("ours_def", "theirs")]
        deep_runs = run_drains(deep_drains, deep_jobs, 1, args.theirs_loop)
        raw["depth"] = deep_runs
        shallow = {"ours": median_rate(runs["ours_def"]), "theirs": median_rate(runs["theirs"])}
        deep = {"ours": median_rate(deep_runs["ours_def"]),
                "theirs": median_rate(deep_runs["theirs"])}
        first = {"ours": first_tenth_rate(deep_runs["ours_def"], deep_jobs),
                 "theirs": first_tenth_rate(deep_runs["theirs"], deep_jobs)}
        rows += depth_rows(shallow, deep, first, args.jobs, deep_jobs)
    return rows


if __name__ == "__main__":
    sys.exit(main())
