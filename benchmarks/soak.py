"""Soak benchmark: one pgqueue_sync worker under a steady mixed load for many minutes.

    python benchmarks/soak.py [--minutes 15] [--rate N | --load 0.5] [--json PATH] [--shared]
    python benchmarks/worker.py --soak MINUTES [--json PATH]

By default it runs on a private PostgreSQL cluster with Debian's stock
settings, autovacuum on (``benchmarks/cluster.py``); ``--shared`` uses the
usual benchmark server instead (``common.server_dsn()``). Then:

1. calibration (unless ``--rate``): a worker drains 10,000 queued no-op jobs
   on a scratch database; its rate is the worker's capacity, and the producer
   runs at ``--load`` (0.5) of it;
2. on a fresh scratch database, one worker process (``PgQueuer.from_psycopg_pool``
   on a pool of 4, ``run()`` at its defaults) and one producer thread in this
   process, which enqueues every 100 ms the jobs owed at the rate, in one
   batch: 90 % ``soak_ok`` (no-op), 4 % ``soak_fail`` (raises: the job ends
   ``exception`` and is deleted, the default ``on_failure``), 4 % ``soak_retry``
   (raises ``RetryRequested(delay=1 s)`` on its first attempt, succeeds on the
   second), 2 % ``soak_deferred`` (enqueued with ``execute_after`` 5 s);
3. at the end of every minute a sample: jobs finished in the minute (the
   handlers' own counters), the lag from enqueue to handler start (after the
   job was due), the worker's RSS, the queue table's size (heap, indexes,
   total), its dead rows and (auto)vacuum counts, the log table's size;
4. after ``--minutes`` the producer stops, the queue is drained (deferred jobs
   and retries included), the worker gets SIGTERM (a graceful stop), and every
   enqueued job is checked twice: the handlers' records (each run's job id and
   attempt, written to a file by the worker) must hold exactly one run per job
   (two for ``soak_retry``: attempts 0 and 1), and the log table exactly its
   expected rows per job (queued/picked/successful or exception, twice
   queued and picked for a retry), nothing else; the queue must be empty and no
   deferred job may have started before it was due.

Verdicts (exit code 1 if one fails): jobs finished in the last minute >= 90 %
of the first; worker RSS growth from the end of minute 1 to the end of the
last < 5 MB; queue table + indexes bounded (largest size over the second half
of the minutes <= 1.5 x the largest over the first half); no job lost, run
twice or logged wrongly. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import logging
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from datetime import timedelta
from typing import IO, Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psycopg  # noqa: E402
from _children import status_kb  # noqa: E402
from cluster import benchmark_server, settings_summary  # noqa: E402
from common import scratch_database  # noqa: E402

from pgqueue_sync import DBSettings, Job, Queries, SyncPsycopgDriver  # noqa: E402
from pgqueue_sync.errors import RetryRequested  # noqa: E402

OK, FAIL, RETRY, DEFERRED = range(4)
KINDS = (OK, FAIL, RETRY, DEFERRED)
ENTRYPOINTS = {OK: "soak_ok", FAIL: "soak_fail", RETRY: "soak_retry", DEFERRED: "soak_deferred"}
#: Share of each kind among enqueued jobs.
MIX = {OK: 0.90, FAIL: 0.04, RETRY: 0.04, DEFERRED: 0.02}
DEFER_S = 5.0
RETRY_DELAY_S = 1.0
#: Handler attempts each kind runs with (``Job.attempts``).
EXPECTED_RUNS = {OK: (0,), FAIL: (0,), RETRY: (0, 1), DEFERRED: (0,)}
#: Log rows each kind ends with: queued, picked, successful, exception (and nothing else).
EXPECTED_LOG = {OK: (1, 1, 1, 0), FAIL: (1, 1, 0, 1), RETRY: (2, 2, 1, 0), DEFERRED: (1, 1, 1, 0)}
#: A handler's record is ``job_id << ATTEMPT_BITS | attempts`` (int64).
ATTEMPT_BITS = 4

POOL_SIZE = 4
CALIBRATION_JOBS = 10_000
FILL_BATCH = 1_000
#: The producer's pace: one batch per tick.
TICK_S = 0.1
#: The worker flushes its records and reports its counters this often.
REPORT_S = 0.5
MINUTE_S = 60.0
READY_TIMEOUT = 60.0
CALIBRATION_TIMEOUT = 300.0
DRAIN_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0

TARGET_THROUGHPUT = 0.90
TARGET_RSS_GROWTH_MB = 5.0
BOUNDED_FACTOR = 1.5
#: "Keeps up": at most this many seconds of the producer's jobs due and not started.
KEEP_UP_S = 5.0


class SoakError(RuntimeError):
    """The soak could not go on (the worker or the producer died, a wait timed out)."""


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# == the worker process ======================================================================


class PlannedFailure(Exception):
    """The intended failure of a ``soak_fail`` job."""


class Recorder:
    """The handlers' record of every run, flushed to a file by a reporter thread.

    Only counters stay in memory, so the worker's RSS is the library's own.
    """

    def __init__(self, path: str) -> None:
        self.lock = threading.Lock()
        self.buffer = array("q")
        self.out = open(path, "ab")  # noqa: SIM115 - closed in close()
        self.runs = 0
        self.finished = 0  # runs that end their job (all but a retry's first attempt)
        self.early = 0  # deferred jobs started before they were due
        self.lag_sum = 0.0
        self.lag_count = 0
        self.lag_max = 0.0  # since the last report
        self.first_start: float | None = None
        self.last_end: float | None = None

    def run(self, job: Job, *, due: float | None, finished: bool) -> None:
        """Note one handler run; ``due`` is when the job became due (``time.time()``)."""
        now = time.time()
        mono = time.perf_counter()
        with self.lock:
            self.buffer.append(job.id << ATTEMPT_BITS | min(job.attempts, 2 ** ATTEMPT_BITS - 1))
            self.runs += 1
            self.finished += finished
            if self.first_start is None:
                self.first_start = mono
            self.last_end = mono
            if due is not None:
                lag = now - due
                self.lag_sum += lag
                self.lag_count += 1
                self.lag_max = max(self.lag_max, lag)

    def flush(self) -> dict[str, Any]:
        """Write the buffered records; return the counters (``lag_max`` since the last call)."""
        with self.lock:
            buffer, self.buffer = self.buffer, array("q")
            report = {"runs": self.runs, "finished": self.finished, "early": self.early,
                      "lag_sum": self.lag_sum, "lag_count": self.lag_count,
                      "lag_max": self.lag_max}
            self.lag_max = 0.0
            if self.first_start is not None and self.last_end is not None:
                report["busy_s"] = self.last_end - self.first_start
        buffer.tofile(self.out)
        self.out.flush()
        return report

    def close(self) -> None:
        self.out.close()


def _stamp(job: Job) -> float:
    value: float = struct.unpack("!d", job.payload or b"\0" * 8)[0]
    return value


class _DropPlannedFailures(logging.Filter):
    """The worker logs every failed job with its traceback; the planned ones are noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, PlannedFailure)


def worker_main(dsn: str, records: str, *, calibrate: bool, keep_log: float | None = None) -> int:
    """The worker process: register the four entrypoints, run, report on stdout.
    ``keep_log`` (minutes): the worker's log retention window (default: the library's)."""
    from psycopg_pool import ConnectionPool

    from pgqueue_sync.app import PgQueuer

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_DropPlannedFailures())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])

    recorder = Recorder(records)
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(REPORT_S):
            print("PROGRESS " + json.dumps(recorder.flush()), flush=True)

    with ConnectionPool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE,
                        kwargs={"autocommit": True}) as pool:
        pgq = PgQueuer.from_psycopg_pool(pool, settings=DBSettings())

        @pgq.entrypoint(ENTRYPOINTS[OK])
        def ok(job: Job) -> None:
            recorder.run(job, due=_stamp(job), finished=True)

        @pgq.entrypoint(ENTRYPOINTS[FAIL])
        def fail(job: Job) -> None:
            recorder.run(job, due=_stamp(job), finished=True)
            raise PlannedFailure(f"planned failure of job {job.id}")

        @pgq.entrypoint(ENTRYPOINTS[RETRY])
        def retry(job: Job) -> None:
            if job.attempts == 0:
                recorder.run(job, due=_stamp(job), finished=False)
                raise RetryRequested(delay=RETRY_DELAY_S, reason="planned retry")
            recorder.run(job, due=None, finished=True)

        @pgq.entrypoint(ENTRYPOINTS[DEFERRED])
        def deferred(job: Job) -> None:
            due = _stamp(job) + DEFER_S
            if time.time() < due:
                # execute_after is NOW() of the enqueue, later than the stamp: never early.
                with recorder.lock:
                    recorder.early += 1
            recorder.run(job, due=due, finished=True)

        reporter = threading.Thread(target=report, name="soak-reporter", daemon=True)
        reporter.start()
        print("READY", flush=True)
        try:
            if calibrate:
                pgq.run(mode="drain", dequeue_timeout=1.0)
            else:
                retention = {} if keep_log is None else {"keep_log": timedelta(minutes=keep_log)}
                pgq.run(**retention)  # continuous, at the defaults; SIGTERM stops it gracefully
        finally:
            stop.set()
            reporter.join(10)
            final = recorder.flush()
            recorder.close()
    print("RESULT " + json.dumps(final), flush=True)
    return 0


# == this process: the worker's handle, the producer, the samples ===========================


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process so far (``/proc/PID/stat``), all its threads."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class WorkerProcess:
    """A worker child (``soak.py --worker``): its counters, RSS and stop."""

    def __init__(self, dsn: str, records: str, stderr: IO[str], *, calibrate: bool,
                 keep_log: float | None = None) -> None:
        command = [sys.executable, os.path.abspath(__file__), "--worker", dsn,
                   "--records", records]
        if calibrate:
            command.append("--calibrate")
        if keep_log is not None:
            command += ["--keep-log", str(keep_log)]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.latest: dict[str, Any] = {"runs": 0, "finished": 0, "early": 0, "lag_sum": 0.0,
                                       "lag_count": 0, "lag_max": 0.0}
        self.lag_max = 0.0  # since take_lag_max()
        self.result: dict[str, Any] | None = None
        self.reader = threading.Thread(target=self._read, name="soak-worker-stdout", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, ""):
            if line.startswith("READY"):
                self.ready.set()
            elif line.startswith(("PROGRESS ", "RESULT ")):
                kind, _, text = line.partition(" ")
                report = json.loads(text)
                with self.lock:
                    self.latest = report
                    self.lag_max = max(self.lag_max, report["lag_max"])
                    if kind == "RESULT":
                        self.result = report

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def counters(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.latest)

    def take_lag_max(self) -> float:
        with self.lock:
            value, self.lag_max = self.lag_max, 0.0
        return value

    def rss_mb(self) -> float | None:
        kb = status_kb("VmRSS", self.pid)
        return None if kb is None else kb / 1024

    def cpu_s(self) -> float | None:
        return _cpu_seconds(self.pid)

    def hwm_mb(self) -> float | None:
        kb = status_kb("VmHWM", self.pid)
        return None if kb is None else kb / 1024

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if not self.alive():
                raise SoakError(f"the worker exited ({self.proc.returncode}) before it was ready")
            if time.monotonic() > deadline:
                raise SoakError(f"the worker was not ready within {timeout:.0f}s")

    def wait(self, timeout: float) -> int:
        """Wait for the exit (the final report read); raise on timeout."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise SoakError(f"the worker did not exit within {timeout:.0f}s") from exc
        self.reader.join(10)
        return code

    def stop(self, timeout: float) -> int:
        """SIGTERM (a graceful stop: running jobs finish, outcomes are written)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """The last resort in ``finally``: whatever state it is in, end it."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.reader.join(5)


class Producer(threading.Thread):
    """Enqueues the mix at ``rate`` jobs/s: every tick, the jobs owed since the start."""

    def __init__(self, dsn: str, rate: float, seed: int) -> None:
        super().__init__(name="soak-producer", daemon=True)
        self.dsn = dsn
        self.rate = rate
        self.rng = random.Random(seed)
        self.ids = {kind: array("q") for kind in KINDS}
        self.sent = 0
        self.error: BaseException | None = None
        self.halt = threading.Event()
        self._thresholds = []
        total = 0.0
        for kind in KINDS:
            total += MIX[kind]
            self._thresholds.append((total, kind))

    def _kind(self) -> int:
        draw = self.rng.random()
        for threshold, kind in self._thresholds:
            if draw < threshold:
                return kind
        return OK

    def run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc

    def _produce(self) -> None:
        defer = timedelta(seconds=DEFER_S)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
            start = time.monotonic()
            tick = 0
            while True:
                tick += 1
                if self.halt.wait(max(0.0, start + tick * TICK_S - time.monotonic())):
                    return
                owed = int(self.rate * (time.monotonic() - start)) - self.sent
                count = min(owed, max(int(self.rate), 1))  # at most a second's worth at once
                if count <= 0:
                    continue
                kinds = [self._kind() for _ in range(count)]
                payload = struct.pack("!d", time.time())
                ids = queries.enqueue(
                    [ENTRYPOINTS[k] for k in kinds], [payload] * count, 0,
                    [defer if k == DEFERRED else None for k in kinds],
                )
                for job_id, kind in zip(ids, kinds, strict=True):
                    self.ids[kind].append(job_id)
                self.sent += count

    def stop(self, timeout: float = 30.0) -> None:
        self.halt.set()
        if self.is_alive():
            self.join(timeout)


def sample_database(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Sizes and vacuum state of the queue and log tables, and what the queue holds."""
    settings = DBSettings()
    found: dict[str, Any] = {}
    for key, table in (("queue", settings.queue_table), ("log", settings.queue_table_log)):
        row = conn.execute(
            """
            SELECT pg_total_relation_size(c.oid), pg_relation_size(c.oid), pg_indexes_size(c.oid),
                   s.n_live_tup, s.n_dead_tup, s.autovacuum_count, s.last_autovacuum,
                   s.vacuum_count, s.last_vacuum, s.autoanalyze_count, s.analyze_count
            FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
            WHERE c.oid = %s::regclass
            """,
            (table,),
        ).fetchone()
        assert row is not None
        found[key] = {
            "total_bytes": row[0], "heap_bytes": row[1], "index_bytes": row[2],
            "live_tup": row[3], "dead_tup": row[4], "autovacuum_count": row[5],
            "last_autovacuum": row[6].isoformat() if row[6] else None,
            "vacuum_count": row[7], "last_vacuum": row[8].isoformat() if row[8] else None,
            "autoanalyze_count": row[9], "analyze_count": row[10],
        }
    row = conn.execute(
        f"""
        SELECT count(*) FILTER (WHERE status = 'queued' AND execute_after <= NOW()),
               count(*) FILTER (WHERE status = 'queued' AND execute_after > NOW()),
               count(*) FILTER (WHERE status = 'picked'),
               count(*) FILTER (WHERE status NOT IN ('queued', 'picked'))
        FROM {settings.queue_table}
        """  # noqa: S608 - the table name comes from DBSettings
    ).fetchone()
    assert row is not None
    found["rows"] = {"due": row[0], "deferred": row[1], "picked": row[2], "other": row[3]}
    return found


def queue_rows(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(f"SELECT count(*) FROM {DBSettings().queue_table}").fetchone()
    return int(row[0]) if row else -1


# == calibration =============================================================================


def fill(dsn: str, jobs: int) -> None:
    """Queue ``jobs`` no-op jobs, then ANALYZE (the calibration measures claims, not stats)."""
    payload = struct.pack("!d", time.time())
    with psycopg.connect(dsn, autocommit=True) as conn:
        queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
        for start in range(0, jobs, FILL_BATCH):
            count = min(FILL_BATCH, jobs - start)
            queries.enqueue([ENTRYPOINTS[OK]] * count, [payload] * count)
        conn.execute("ANALYZE")


def calibrate(tmp: str) -> float:
    """The worker's capacity: jobs/s of a drain of CALIBRATION_JOBS no-op jobs, from the
    first handler start to the last handler end (start-up excluded)."""
    progress(f"calibration: draining {CALIBRATION_JOBS:,} no-op jobs with one worker")
    with scratch_database() as dsn, open(os.path.join(tmp, "calibration.err"), "w+",
                                         encoding="utf-8") as err:
        fill(dsn, CALIBRATION_JOBS)
        worker = WorkerProcess(dsn, os.path.join(tmp, "calibration.runs"), err, calibrate=True)
        try:
            code = worker.wait(CALIBRATION_TIMEOUT)
        finally:
            worker.kill()
        result = worker.result
        if code != 0 or result is None or result["finished"] != CALIBRATION_JOBS:
            err.seek(0)
            raise SoakError(f"calibration failed: exit {code}, result {result}\n"
                            f"{err.read()[-3000:]}")
    rate: float = CALIBRATION_JOBS / result["busy_s"]
    progress(f"calibration: {rate:,.0f} jobs/s")
    return rate


# == checks at the end =======================================================================


def verify_log(conn: psycopg.Connection[Any], ids: dict[int, array[int]], *,
               pruned: bool = False) -> dict[str, Any]:
    """Compare each enqueued job's log rows with those its kind must end with.

    With ``pruned`` (``--keep-log``), retention may have removed a finished job's
    rows: a job may then have none or fewer of each status, never more or
    others (that the job ran exactly once is the handlers' records' check)."""
    log = DBSettings().queue_table_log
    conn.execute("SET work_mem = '256MB'")
    conn.execute("CREATE TEMP TABLE soak_expected (job_id bigint NOT NULL, kind int NOT NULL)")
    with conn.cursor() as cur, cur.copy("COPY soak_expected (job_id, kind) FROM STDIN") as copy:
        for kind, kind_ids in ids.items():
            for start in range(0, len(kind_ids), 100_000):
                copy.write("".join(f"{i}\t{kind}\n" for i in kind_ids[start:start + 100_000]))
    conn.execute("ANALYZE soak_expected")
    want = ", ".join(f"({kind}, {q}::bigint, {p}::bigint, {s}::bigint, {e}::bigint)"
                     for kind, (q, p, s, e) in EXPECTED_LOG.items())
    rows = conn.execute(f"""
        WITH per_job AS (
            SELECT job_id,
                   count(*) FILTER (WHERE status = 'queued') AS queued,
                   count(*) FILTER (WHERE status = 'picked') AS picked,
                   count(*) FILTER (WHERE status = 'successful') AS successful,
                   count(*) FILTER (WHERE status = 'exception') AS exception,
                   count(*) FILTER (WHERE status NOT IN ('queued', 'picked', 'successful',
                                                         'exception')) AS other
            FROM {log} GROUP BY job_id
        ),
        want (kind, queued, picked, successful, exception) AS (VALUES {want})
        SELECT e.kind, count(*),
               count(*) FILTER (WHERE p.job_id IS NULL AND NOT %(pruned)s),
               count(*) FILTER (WHERE p.job_id IS NOT NULL AND CASE WHEN %(pruned)s
                   THEN p.queued > w.queued OR p.picked > w.picked
                        OR p.successful > w.successful OR p.exception > w.exception
                        OR p.other > 0
                   ELSE (p.queued, p.picked, p.successful, p.exception, p.other)
                   IS DISTINCT FROM (w.queued, w.picked, w.successful, w.exception, 0::bigint)
                   END),
               count(*) FILTER (WHERE p.job_id IS NULL)
        FROM soak_expected e JOIN want w USING (kind) LEFT JOIN per_job p USING (job_id)
        GROUP BY e.kind ORDER BY e.kind
    """, {"pruned": pruned}).fetchall()  # noqa: S608 - names from DBSettings, numbers from constants
    strays = conn.execute(f"""
        SELECT count(DISTINCT job_id) FROM {log} l
        WHERE NOT EXISTS (SELECT 1 FROM soak_expected e WHERE e.job_id = l.job_id)
    """).fetchone()  # noqa: S608
    examples = conn.execute(f"""
        SELECT e.job_id, e.kind, array_agg(l.status::text ORDER BY l.id)
        FROM soak_expected e JOIN {log} l USING (job_id)
        GROUP BY e.job_id, e.kind
        HAVING count(*) <> CASE e.kind WHEN {RETRY} THEN 5 ELSE 3 END AND NOT %(pruned)s
        LIMIT 5
    """, {"pruned": pruned}).fetchall()  # noqa: S608
    per_kind = {ENTRYPOINTS[kind]: {"jobs": jobs, "unlogged": unlogged, "wrong": wrong,
                                    "no_rows_left": gone}
                for kind, jobs, unlogged, wrong, gone in rows}
    bad = sum(v["unlogged"] + v["wrong"] for v in per_kind.values())
    return {"per_kind": per_kind, "stray_job_ids": strays[0] if strays else -1,
            "bad_jobs": bad, "examples": [list(map(str, r)) for r in examples]}


def verify_runs(path: str, ids: dict[int, array[int]]) -> dict[str, Any]:
    """Compare the handlers' records with the runs each enqueued job must have had."""
    got = array("q")
    with open(path, "rb") as records:
        got.frombytes(records.read())
    expected = array("q")
    for kind, kind_ids in ids.items():
        for attempt in EXPECTED_RUNS[kind]:
            expected.extend(i << ATTEMPT_BITS | attempt for i in kind_ids)
    got_sorted = sorted(got)
    expected_sorted = sorted(expected)
    result: dict[str, Any] = {"runs": len(got), "expected_runs": len(expected)}
    if got_sorted == expected_sorted:
        result.update(missing=0, extra=0, examples=[])
        return result
    difference = collections.Counter(expected_sorted)
    difference.subtract(got_sorted)
    missing = [k for k, n in difference.items() if n > 0]
    extra = [k for k, n in difference.items() if n < 0]
    result.update(
        missing=sum(difference[k] for k in missing), extra=-sum(difference[k] for k in extra),
        examples=[f"{'missing' if difference[k] > 0 else 'extra'} run of job "
                  f"{k >> ATTEMPT_BITS} attempt {k & (2 ** ATTEMPT_BITS - 1)}"
                  for k in (missing[:5] + extra[:5])],
    )
    return result


# == the soak ================================================================================


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 2 ** 20:.1f}"


HEADER = (f"{'min':>3} {'enqueued':>9} {'finished':>9} {'due':>6} {'lag avg':>8} "
          f"{'lag max':>8} {'RSS MB':>7} {'cpu %':>5} {'queue MB':>8} {'heap':>6} "
          f"{'index':>6} {'dead':>8} {'autovac':>7} {'vac':>4} {'log MB':>7} {'load':>5}")


def render(sample: dict[str, Any]) -> str:
    queue, log = sample["db"]["queue"], sample["db"]["log"]
    lag_avg = sample["lag_mean_ms"]
    return (f"{sample['minute']:>3} {sample['enqueued']:>9,} {sample['finished']:>9,} "
            f"{sample['db']['rows']['due']:>6,} "
            f"{'-' if lag_avg is None else f'{lag_avg:.1f}':>8} {sample['lag_max_ms']:>8.1f} "
            f"{sample['rss_mb'] or 0:>7.1f} {sample['worker_cpu_pct'] or 0:>5.0f} "
            f"{_mb(queue['total_bytes']):>8} "
            f"{_mb(queue['heap_bytes']):>6} {_mb(queue['index_bytes']):>6} "
            f"{queue['dead_tup']:>8,} {queue['autovacuum_count']:>7} {queue['vacuum_count']:>4} "
            f"{_mb(log['total_bytes']):>7} {sample['loadavg_1min']:>5.1f}")


def take_sample(minute: int, started: float, conn: psycopg.Connection[Any],
                worker: WorkerProcess, producer: Producer,
                previous: dict[str, Any] | None) -> dict[str, Any]:
    counters = worker.counters()
    sent = producer.sent
    sample: dict[str, Any] = {
        "minute": minute,
        "t_s": round(time.monotonic() - started, 2),
        "enqueued_total": sent,
        "finished_total": counters["finished"],
        "runs_total": counters["runs"],
        "rss_mb": worker.rss_mb(),
        "hwm_mb": worker.hwm_mb(),
        "lag_max_ms": worker.take_lag_max() * 1000,
        "worker_cpu_total_s": worker.cpu_s(),
        "parent_cpu_total_s": sum(os.times()[:2]),
        "loadavg_1min": os.getloadavg()[0],
        "db": sample_database(conn),
        "_lag": (counters["lag_sum"], counters["lag_count"]),
    }
    prev = previous or {"enqueued_total": 0, "finished_total": 0, "runs_total": 0,
                        "_lag": (0.0, 0), "t_s": 0.0, "worker_cpu_total_s": 0.0,
                        "parent_cpu_total_s": 0.0}
    elapsed = sample["t_s"] - prev["t_s"]
    for key in ("worker_cpu", "parent_cpu"):
        now, before = sample[f"{key}_total_s"], prev[f"{key}_total_s"]
        # percent of one core over the interval (minute 1 includes the worker's start-up)
        sample[f"{key}_pct"] = (None if now is None or before is None or elapsed <= 0
                                else (now - before) / elapsed * 100)
    sample["enqueued"] = sent - prev["enqueued_total"]
    sample["finished"] = counters["finished"] - prev["finished_total"]
    sample["runs"] = counters["runs"] - prev["runs_total"]
    lag_n = counters["lag_count"] - prev["_lag"][1]
    sample["lag_mean_ms"] = ((counters["lag_sum"] - prev["_lag"][0]) / lag_n * 1000
                             if lag_n else None)
    return sample


def run_soak(args: argparse.Namespace, rate: float, tmp: str,
             report: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The soak itself; returns the verdicts (name, passed, detail)."""
    records = os.path.join(tmp, "soak.runs")
    samples: list[dict[str, Any]] = []
    report["samples"] = samples
    with scratch_database() as dsn, open(os.path.join(tmp, "soak.err"), "w+",
                                         encoding="utf-8") as err:
        worker = WorkerProcess(dsn, records, err, calibrate=False, keep_log=args.keep_log)
        producer = Producer(dsn, rate, args.seed)
        lost_detail: list[str] = []
        try:
            worker.wait_ready(READY_TIMEOUT)
            with psycopg.connect(dsn, autocommit=True) as conn:
                started = time.monotonic()
                producer.start()
                progress(f"soak: {args.minutes} min at {rate:,.0f} jobs/s; one sample a minute")
                print(HEADER, flush=True)
                previous: dict[str, Any] | None = None
                for minute in range(1, args.minutes + 1):
                    _wait_until(started + minute * MINUTE_S, worker, producer)
                    previous = take_sample(minute, started, conn, worker, producer, previous)
                    samples.append(previous)
                    print(render(previous), flush=True)
                producer.stop()
                if producer.is_alive() or producer.error is not None:
                    raise SoakError(f"the producer did not stop cleanly: {producer.error!r}")
                progress(f"soak: producer stopped after {producer.sent:,} jobs; draining")
                drained_in = _drain(conn, worker, producer.sent)
                end = take_sample(args.minutes + 1, started, conn, worker, producer, previous)
                end["drain_s"] = drained_in
                report["end"] = end
            code = worker.stop(STOP_TIMEOUT)
            report["worker_exit"] = code
            if code != 0:
                lost_detail.append(f"worker exited {code}")
        finally:
            producer.stop()
            worker.kill()
        err.seek(0)
        noise = err.read()
        if noise.strip():
            report["worker_stderr_tail"] = noise[-5000:]
            progress(f"worker stderr ({len(noise.splitlines())} lines), tail:\n{noise[-2000:]}")
        result = worker.result or worker.counters()
        progress("checking every job: the handlers' records and the log table")
        with psycopg.connect(dsn, autocommit=True) as conn:
            left = queue_rows(conn)
            log_check = verify_log(conn, producer.ids, pruned=args.keep_log is not None)
        runs_check = verify_runs(records, producer.ids)
    report["checks"] = {"log": log_check, "runs": runs_check, "queue_rows_left": left,
                        "early_deferred": result["early"]}
    return verdicts(args, samples, log_check, runs_check, left, result["early"],
                    producer.sent, lost_detail)


def _wait_until(deadline: float, worker: WorkerProcess, producer: Producer) -> None:
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
        if not worker.alive():
            raise SoakError(f"the worker exited ({worker.proc.returncode}) during the soak")
        if producer.error is not None:
            raise SoakError(f"the producer failed: {producer.error!r}")
        if not producer.is_alive():
            raise SoakError("the producer stopped during the soak")


def _drain(conn: psycopg.Connection[Any], worker: WorkerProcess, sent: int) -> float:
    """Wait until the queue is empty and the handlers finished every job enqueued."""
    start = time.monotonic()
    deadline = start + DRAIN_TIMEOUT
    while True:
        left = queue_rows(conn)
        finished = worker.counters()["finished"]
        if left == 0 and finished >= sent:
            return round(time.monotonic() - start, 2)
        if time.monotonic() > deadline:
            progress(f"soak: not drained after {DRAIN_TIMEOUT:.0f}s: {left} rows in the queue, "
                     f"{finished:,} of {sent:,} jobs finished")
            return round(time.monotonic() - start, 2)
        if not worker.alive():
            raise SoakError(f"the worker exited ({worker.proc.returncode}) while draining")
        time.sleep(REPORT_S)


def verdicts(args: argparse.Namespace, samples: list[dict[str, Any]], log_check: dict[str, Any],
             runs_check: dict[str, Any], left: int, early: int, sent: int,
             lost_detail: list[str]) -> list[tuple[str, bool, str]]:
    first, last = samples[0], samples[-1]
    found: list[tuple[str, bool, str]] = []

    ratio = last["finished"] / first["finished"] if first["finished"] else 0.0
    found.append((
        "throughput, last minute / first minute", ratio >= TARGET_THROUGHPUT,
        f"{last['finished']:,} / {first['finished']:,} jobs = {ratio * 100:.1f} %  "
        f"(target >= {TARGET_THROUGHPUT * 100:.0f} %)",
    ))

    # The throughput check compares the worker with itself; this one says whether it
    # kept up with the producer: at most KEEP_UP_S seconds' worth of jobs due and waiting.
    due = last["db"]["rows"]["due"]
    allowed = last["enqueued"] / 60 * KEEP_UP_S
    found.append((
        "keeps up: jobs due and waiting at the end of the last minute", due <= allowed,
        f"{due:,} due (target <= {allowed:,.0f}, {KEEP_UP_S:.0f} s of the producer's rate)",
    ))

    growth = (last["rss_mb"] or 0.0) - (first["rss_mb"] or 0.0)
    found.append((
        f"worker RSS growth, end of minute 1 -> end of minute {last['minute']}",
        growth < TARGET_RSS_GROWTH_MB,
        f"{first['rss_mb']:.1f} -> {last['rss_mb']:.1f} MB = {growth:+.1f} MB  "
        f"(target < {TARGET_RSS_GROWTH_MB:.0f} MB)",
    ))

    half = len(samples) // 2
    early_max = max(s["db"]["queue"]["total_bytes"] for s in samples[:half])
    late_max = max(s["db"]["queue"]["total_bytes"] for s in samples[half:])
    factor = late_max / early_max if early_max else float("inf")
    found.append((
        f"queue table + indexes, max of minutes {half + 1}-{len(samples)} / max of 1-{half}",
        factor <= BOUNDED_FACTOR,
        f"{_mb(late_max)} / {_mb(early_max)} MB = {factor:.2f}x  "
        f"(bounded: <= {BOUNDED_FACTOR:.1f}x)",
    ))

    if args.keep_log is not None:
        found.append(log_levels_off(samples, args.keep_log))

    bad = log_check["bad_jobs"] + log_check["stray_job_ids"]
    wrong_runs = runs_check["missing"] + runs_check["extra"]
    lost_ok = bad == 0 and wrong_runs == 0 and left == 0 and early == 0 and not lost_detail
    details = [f"{sent:,} jobs enqueued", f"log: {log_check['bad_jobs']} jobs wrong",
               f"{log_check['stray_job_ids']} stray ids",
               f"handler runs: {runs_check['runs']:,} of {runs_check['expected_runs']:,}, "
               f"{runs_check['missing']} missing, {runs_check['extra']} extra",
               f"{left} rows left in the queue", f"{early} deferred jobs run early",
               *lost_detail]
    found.append(("jobs lost, run twice or logged wrongly", lost_ok, "; ".join(details)))
    for example in log_check["examples"] + runs_check["examples"]:
        progress(f"  {example}")
    return found


def log_levels_off(samples: list[dict[str, Any]], keep_log: float) -> tuple[str, bool, str]:
    """With retention: the log table's size over the second half of the minutes is
    at most :data:`BOUNDED_FACTOR` x its size over the first (it levels off)."""
    half = len(samples) // 2
    early_max = max(s["db"]["log"]["total_bytes"] for s in samples[:half])
    late_max = max(s["db"]["log"]["total_bytes"] for s in samples[half:])
    factor = late_max / early_max if early_max else float("inf")
    return (
        f"log table with keep_log={keep_log:g} min, max of minutes {half + 1}-{len(samples)} "
        f"/ max of 1-{half}", factor <= BOUNDED_FACTOR,
        f"{_mb(late_max)} / {_mb(early_max)} MB = {factor:.2f}x  "
        f"(levels off: <= {BOUNDED_FACTOR:.1f}x)",
    )


# == main ====================================================================================


def meta(args: argparse.Namespace, server: str) -> dict[str, Any]:
    from importlib.metadata import version

    from worker import code_under_test

    return {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "server": settings_summary(server),
        "private_cluster": not args.shared,
        "commit": code_under_test(),
        "psycopg": f"{version('psycopg')} ({psycopg.pq.__impl__})",
        "minutes": args.minutes,
        "mix": {ENTRYPOINTS[k]: v for k, v in MIX.items()},
        "defer_s": DEFER_S,
        "retry_delay_s": RETRY_DELAY_S,
        "seed": args.seed,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=15, help="length of the soak (default 15)")
    parser.add_argument("--rate", type=float, default=None,
                        help="producer rate in jobs/s (default: --load x the calibrated capacity)")
    parser.add_argument("--load", type=float, default=0.5,
                        help="share of the calibrated capacity the producer runs at (default 0.5)")
    parser.add_argument("--json", metavar="PATH", help="write the samples and checks here")
    parser.add_argument("--shared", action="store_true",
                        help="use the benchmark server (common.server_dsn()) instead of a "
                             "private cluster with stock settings")
    parser.add_argument("--seed", type=int, default=20261123, help="seed of the job mix")
    parser.add_argument("--keep-log", type=float, default=None, metavar="MINUTES",
                        help="the worker's log retention window (run(keep_log=...)); the log "
                             "check then accepts pruned rows and a 'log levels off' verdict "
                             "is added")
    parser.add_argument("--worker", metavar="DSN", help=argparse.SUPPRESS)
    parser.add_argument("--records", help=argparse.SUPPRESS)
    parser.add_argument("--calibrate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None and args.minutes < 2:
        parser.error("--minutes must be at least 2 (the checks compare minutes)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker, args.records, calibrate=args.calibrate,
                           keep_log=args.keep_log)
    started = time.monotonic()
    report: dict[str, Any] = {}
    try:
        with benchmark_server(not args.shared) as server, \
                tempfile.TemporaryDirectory(prefix="pgqs_soak_") as tmp:
            report["meta"] = meta(args, server)
            progress(f"soak benchmark: {report['meta']['server']}; {os.cpu_count()} CPUs; "
                     f"psycopg {report['meta']['psycopg']}")
            capacity = None if args.rate is not None else calibrate(tmp)
            rate = args.rate if capacity is None else capacity * args.load
            report["meta"].update(capacity=capacity, load=None if args.rate else args.load,
                                  rate=rate)
            found = run_soak(args, rate, tmp, report)
    except SoakError as exc:
        progress(f"ABORTED: {exc}")
        _write_json(args.json, report)
        return 1
    except KeyboardInterrupt:
        progress("interrupted; the worker, the producer and the cluster were stopped")
        return 130
    report["meta"]["seconds"] = round(time.monotonic() - started, 1)
    report["verdicts"] = [{"check": n, "passed": p, "detail": d} for n, p, d in found]
    end = report["end"]
    last = report["samples"][-1]
    drain_rate = end["finished"] / end["drain_s"] if end["drain_s"] else 0.0
    print(f"end of the last minute: {last['db']['rows']['due']:,} jobs due and waiting, lag "
          f"avg {last['lag_mean_ms'] or 0:,.0f} ms, max {last['lag_max_ms']:,.0f} ms "
          f"(a worker that keeps up has about none waiting and a lag of milliseconds)")
    backlog_rate = (f" = {drain_rate:,.0f} jobs/s over the backlog"
                    if last["db"]["rows"]["due"] >= 1_000 else "")
    print(f"end: {end['finished']:,} jobs finished in {end['drain_s']:.1f} s after the producer "
          f"stopped{backlog_rate}; "
          f"{end['db']['queue']['autovacuum_count']} autovacuums and "
          f"{end['db']['queue']['vacuum_count']} vacuums of the queue table, "
          f"{end['db']['log']['autovacuum_count']} of the log table")
    header = report["meta"]
    print(f"soak: {args.minutes} min, producer {header['rate']:,.0f} jobs/s"
          + (f" ({args.load:.2f} x calibrated {header['capacity']:,.0f} jobs/s)"
             if header["capacity"] else " (--rate)")
          + f"; {header['server']}; {header['seconds']:.0f} s")
    for name, passed, detail in found:
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {detail}")
    _write_json(args.json, report)
    return 0 if all(passed for _, passed, _ in found) else 1


def _write_json(path: str | None, report: dict[str, Any]) -> None:
    if not path:
        return
    for sample in [*report.get("samples", []), report.get("end") or {}]:
        sample.pop("_lag", None)
    with open(path, "w", encoding="utf-8") as out:
        json.dump(report, out, indent=2, default=str)


if __name__ == "__main__":
    sys.exit(main())
