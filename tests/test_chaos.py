"""Chaos: at-least-once delivery while workers die and the server restarts under them.

One test. Three worker processes (``tests.apps.chaos_worker``, run through
:func:`pgqueue_sync.launcher.run` with ``restart_on_failure=True``, as
``pgq-sync run`` does) work through a few thousand jobs of a mixed workload
(plain, retrying, held, async, fleet-limited; some deferred, some prioritised)
on a private cluster, while the test, at random intervals:

* SIGKILLs a worker and starts a replacement;
* SIGTERMs a worker (it hands back what it cannot finish in its
  ``shutdown_timeout``) and starts a replacement;
* terminates every backend of the database (listeners included);
* restarts the server, ``fast`` or ``immediate``.

New jobs keep arriving meanwhile (batches and single jobs, enqueued by the test
with retries, each enqueue recorded in the same transaction so that a commit
whose reply was lost is neither lost nor enqueued twice). Half the workers check
pooled connections on checkout (``ConnectionPool.check_connection``), half do not.
Then the faults stop, the fleet drains, is stopped, and the ledger is checked:

* every job has exactly one terminal log row, the expected one (held jobs
  ``failed`` and still in the queue table, all others ``successful`` and gone),
  and nothing is left ``picked``;
* every handler run repeated for the same ``attempts`` value is explained: its
  first run was on a worker SIGKILLed after it started, or SIGTERMed and the
  job handed back (a first run that *started after* its worker had been told
  to stop does not count: that repeat is the worker's doing), or a connection
  fault happened between the two starts (give or take MARGIN);
* retrying jobs ran attempts 0..n, each at least once, and nothing beyond;
* every job a SIGKILLed worker left running started again somewhere;
* statistics (after a final ``log_statistics()``) equal the log;
* no worker exited by itself, and a SIGTERMed one exits 0 within STOP_GRACE
  (else its thread stacks are shown).

The summary (printed, and part of any failure message) gives the jobs, the
faults by kind, the second runs by cause and the worst rescue time: from a
SIGKILL to the next start of a job the killed worker had left running.

Knobs: ``PGQS_CHAOS_SECONDS`` (default 60) is the length of the fault phase;
``PGQS_CHAOS_SEED`` (default: random, printed) fixes the job mix and the fault
sequence (not their exact timing), for a replay::

    PGQS_CHAOS_SEED=1234 pytest tests/test_chaos.py -s -p no:cacheprovider

The test database runs with ``synchronous_commit = on`` (whatever the cluster's
default): with it off, an ``immediate`` shutdown loses commits that were already
acknowledged (PostgreSQL's documented trade-off, not the queue's), which would
make the test's own ledger lie.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pgqueue_sync import DBSettings, Queries, SyncPsycopgDriver
from pgqueue_sync.errors import PgqException

from .faults import PrivateCluster, terminate_backends

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = DBSettings()

CHAOS_SECONDS = float(os.environ.get("PGQS_CHAOS_SECONDS") or 60)
#: Worker processes kept alive during the run.
WORKERS = 3
HEARTBEAT_TIMEOUT = 2.0
#: Slack around a connection fault when explaining a repeated run (seconds).
MARGIN = 2.0
#: Jobs enqueued before the workers start (in batches of BATCH).
INITIAL_JOBS = 500
BATCH = 100
#: Jobs per second the test enqueues during the fault phase (single jobs and batches).
TRICKLE_RATE = 20.0
#: Chance that a fault comes right after a burst of BURST_SIZE jobs has started running.
BURST_CHANCE = 0.5
BURST_SIZE = (40, 120)
BURST_WAIT = 3.0
#: Longest pause between two faults (the shortest is PAUSE_MIN).
PAUSE_MIN, PAUSE_MAX = 0.8, 3.5
#: Bound on the drain once faults stop (seconds).
DRAIN_TIMEOUT = 45.0
#: How long a SIGTERMed worker may take to exit.
STOP_GRACE = 15.0
#: How long the test keeps retrying one enqueue while the server is away.
ENQUEUE_PATIENCE = 60.0

TERMINAL = ("successful", "exception", "failed", "canceled")
CONNECTION_FAULTS = frozenset({"terminate_backends", "restart_fast", "restart_immediate"})
FAULT_WEIGHTS = {
    "sigkill": 30,
    "sigterm": 25,
    "terminate_backends": 25,
    "restart_fast": 12,
    "restart_immediate": 8,
}
KIND_WEIGHTS = {"plain": 45, "retrying": 15, "held": 7, "async_job": 23, "limited": 10}
#: The line tests.apps.chaos_worker logs once its signal handlers are installed.
BOOTED = "building a worker cycle"


# -- the job mix -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spec:
    """One job to enqueue: its entrypoint, JSON payload, priority and delay (seconds)."""

    kind: str
    payload: dict[str, Any]
    priority: int = 0
    delay: float = 0.0


def make_spec(rng: random.Random) -> Spec:
    """A random job of the mix; one in ten deferred 1-5 s, three in ten prioritised."""
    kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
    payload: dict[str, Any]
    if kind == "retrying":
        payload = {"n": rng.randint(1, 3), "delay": rng.choice([0.0, 0.2])}
    elif kind == "held":
        payload = {}
    elif kind == "limited":
        payload = {"sleep": round(rng.uniform(0.05, 0.2), 3)}
    else:
        payload = {"sleep": round(rng.uniform(0.0, 0.02), 4)}
    priority = rng.randint(-5, 10) if rng.random() < 0.3 else 0
    delay = round(rng.uniform(1.0, 5.0), 2) if rng.random() < 0.1 else 0.0
    return Spec(kind, payload, priority, delay)


class Ledger:
    """Enqueues jobs and remembers every id exactly, whatever the connection does.

    Each batch is enqueued on a connection that is *not* in autocommit mode
    (the driver then joins our transaction and never reconnects behind our
    back) together with a row ``(key, ids)`` in ``chaos_enqueued``. When
    anything fails, the next attempt first looks the key up: found, the
    commit happened and only its reply was lost; absent, nothing happened.
    """

    TABLE = "CREATE TABLE chaos_enqueued (key text PRIMARY KEY, ids bigint[] NOT NULL)"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.specs: dict[int, Spec] = {}
        self.retries = 0
        self._lock = threading.Lock()
        self._keys = itertools.count(1)
        self._conn: psycopg.Connection[Any] | None = None

    def enqueue(self, specs: list[Spec], patience: float = ENQUEUE_PATIENCE) -> list[int]:
        with self._lock:
            key = f"batch-{next(self._keys)}"
            deadline = time.monotonic() + patience
            backoff = 0.05
            check_first = False
            while True:
                try:
                    if check_first:
                        found = self._lookup(key)
                        check_first = False
                        if found is not None:
                            return self._remember(found, specs)
                    return self._remember(self._insert(key, specs), specs)
                except (psycopg.Error, PgqException) as exc:
                    self._drop()
                    check_first = True
                    self.retries += 1
                    if time.monotonic() > deadline:
                        raise AssertionError(
                            f"could not enqueue {key} within {patience}s: {exc!r}"
                        ) from exc
                    time.sleep(backoff)  # retry backoff, not synchronisation
                    backoff = min(backoff * 2, 1.0)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _insert(self, key: str, specs: list[Spec]) -> list[int]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=False, connect_timeout=5)
        conn = self._conn
        queries = Queries(SyncPsycopgDriver(conn), settings=SETTINGS)
        ids = queries.enqueue(
            [s.kind for s in specs],
            [json.dumps(s.payload).encode() for s in specs],
            [s.priority for s in specs],
            [timedelta(seconds=s.delay) for s in specs],
        )
        conn.execute("INSERT INTO chaos_enqueued (key, ids) VALUES (%s, %s)",
                      [key, [int(i) for i in ids]])
        conn.commit()
        return [int(i) for i in ids]

    def _lookup(self, key: str) -> list[int] | None:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT ids FROM chaos_enqueued WHERE key = %s", [key]).fetchone()
        return None if row is None else [int(i) for i in row[0]]

    def _remember(self, ids: list[int], specs: list[Spec]) -> list[int]:
        assert len(ids) == len(specs), (ids, specs)
        for job_id, spec in zip(ids, specs, strict=True):
            assert job_id not in self.specs, f"job id {job_id} handed out twice"
            self.specs[job_id] = spec
        return ids

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None


class Trickle(threading.Thread):
    """Enqueues single jobs and small batches at about ``rate`` jobs/s until stopped."""

    def __init__(self, ledger: Ledger, rng: random.Random, rate: float) -> None:
        super().__init__(name="chaos-trickle", daemon=True)
        self.ledger = ledger
        self.rng = rng
        self.rate = rate
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self.batches = 0

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                size = 1 if self.rng.random() < 0.5 else self.rng.randint(2, 40)
                self.ledger.enqueue([make_spec(self.rng) for _ in range(size)])
                self.batches += 1
                self.stopped.wait(size / self.rate)
        except BaseException as exc:  # reported by the test
            self.error = exc


# -- worker processes --------------------------------------------------------------------------


class Worker:
    """One ``tests.apps.chaos_worker`` child; stdout and stderr go to a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
            )
        self.started = time.time()
        #: running | terminating | killed | exited | stopping | stopped
        self.state = "running"
        self.signalled: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stacks(self, timeout: float = 3.0) -> str:
        """Ask a live worker for every thread's stack (SIGUSR1, see the app) and return
        what it printed; empty if it is not running or says nothing in ``timeout`` s."""
        if self.proc.poll() is not None:
            return ""
        before = len(self.log())
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "most recent call first" in self.log()[before:]:
                # faulthandler writes all threads at once from its C signal handler;
                # a moment more and the dump is complete.
                time.sleep(0.3)
                break
            time.sleep(0.05)
        return self.log()[before:]

    def booted(self) -> bool:
        """True once the supervisor's signal handlers are installed (a SIGTERM before
        that would kill the interpreter outright, which tests nothing)."""
        return BOOTED in self.log()

    def __repr__(self) -> str:
        grace = self.argv[self.argv.index("--shutdown-timeout") + 1]
        check = ", pool check" if "--pool-check" in self.argv else ""
        return (f"{self.name}(pid {self.pid}, {self.state}, exit {self.proc.returncode}, "
                f"shutdown_timeout {grace}{check})")


class Fleet:
    """The worker processes of the run: starts, signals, replaces and reaps them."""

    def __init__(self, dsn: str, events: Path, tmp_path: Path, rng: random.Random) -> None:
        self.dsn = dsn
        self.events = events
        self.tmp_path = tmp_path
        self.rng = rng
        self.workers: list[Worker] = []
        self.anomalies: list[str] = []
        #: worker name -> seconds from the final SIGTERM to its exit
        self.stop_seconds: dict[str, float] = {}
        self._numbers = itertools.count(1)
        paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}

    def start(self) -> Worker:
        name = f"w{next(self._numbers)}"
        argv = [
            sys.executable, "-u", "-m", "tests.apps.chaos_worker",
            "--dsn", self.dsn, "--events", str(self.events), "--name", name,
            "--concurrency", "4",
            "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT),
            "--dequeue-timeout", f"{self.rng.uniform(2.0, 5.0):.2f}",
            "--shutdown-timeout", str(self.rng.choice([0.05, 0.2, 1.0])),
            "--wait-for-database", "60",
            "--log-aggregation-interval", "2",
            "--restart-delay", "1",
        ]
        if self.rng.random() < 0.5:  # half the fleet checks pooled connections on checkout
            argv.append("--pool-check")
        worker = Worker(name, argv, self.tmp_path / f"{name}.log", self.env)
        self.workers.append(worker)
        return worker

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.state == "running"]

    def top_up(self, count: int = WORKERS) -> None:
        while len(self.live()) < count:
            self.start()

    def sigkill(self, worker: Worker) -> Fault:
        t0 = time.time()
        worker.proc.kill()
        worker.proc.wait(10)
        worker.state, worker.signalled = "killed", t0
        return Fault("sigkill", t0, time.time(), worker.pid, worker.name)

    def sigterm(self, worker: Worker) -> Fault:
        t0 = time.time()
        worker.proc.terminate()
        worker.state, worker.signalled = "terminating", t0
        grace = worker.argv[worker.argv.index("--shutdown-timeout") + 1]
        return Fault("sigterm", t0, time.time(), worker.pid,
                     f"{worker.name} (shutdown_timeout {grace})")

    def check(self) -> None:
        """Reap SIGTERMed workers (exit 0 within STOP_GRACE expected) and replace any
        worker that exited by itself (a supervised worker never should)."""
        now = time.time()
        for worker in self.workers:
            code = worker.proc.poll()
            if worker.state == "terminating":
                if code is not None:
                    worker.state = "exited"
                    if code != 0:
                        self.anomalies.append(
                            f"{worker!r} exited with {code} after SIGTERM:\n{worker.tail()}"
                        )
                elif now - (worker.signalled or now) > STOP_GRACE:
                    self.anomalies.append(
                        f"{worker!r} still running {STOP_GRACE}s after SIGTERM:\n{worker.tail()}"
                        f"\nits threads:\n{worker.stacks()}"
                    )
                    worker.proc.kill()
                    worker.proc.wait(10)
                    worker.state = "killed"
            elif worker.state == "running" and code is not None:
                worker.state = "exited"
                self.anomalies.append(f"{worker!r} exited by itself:\n{worker.tail()}")
        self.top_up()

    def stop_all(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every live worker and wait (bounded) for each to exit 0, noting how
        long each took."""
        stopping = [w for w in self.workers if w.proc.poll() is None]
        for worker in stopping:
            worker.proc.terminate()
            worker.state = "stopping"
        started = time.monotonic()
        waiting = list(stopping)
        while waiting and time.monotonic() - started < grace:
            for worker in [w for w in waiting if w.proc.poll() is not None]:
                waiting.remove(worker)
                worker.state = "stopped"
                self.stop_seconds[worker.name] = time.monotonic() - started
                if worker.proc.returncode != 0:
                    self.anomalies.append(
                        f"{worker!r} exited with {worker.proc.returncode} at the final SIGTERM:"
                        f"\n{worker.tail()}"
                    )
            time.sleep(0.05)  # polling the exits, bounded by ``grace``
        for worker in waiting:
            self.anomalies.append(
                f"{worker!r} did not exit within {grace}s of the final SIGTERM:\n"
                f"{worker.tail()}\nits threads:\n{worker.stacks()}"
            )

    def reap_all(self) -> None:
        """Kill whatever still runs and reap every child (the ``finally`` of the test)."""
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.kill()
            try:
                worker.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def stacks(self) -> str:
        """Every live worker's thread stacks."""
        return "\n".join(
            f"----- threads of {w!r} -----\n{w.stacks()}" for w in self.workers
            if w.proc.poll() is None
        )

    def logs(self, lines: int = 40) -> str:
        return "\n".join(
            f"----- {w!r} (started {w.started:.3f}) -----\n{w.tail(lines)}" for w in self.workers
        )


# -- faults ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fault:
    """One injected fault: its kind, when it started and ended (wall clock), its target."""

    kind: str
    t0: float
    t1: float
    pid: int | None = None
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Event:
    """One line of the events file: a handler's ``start`` or ``end``."""

    event: str
    job: int
    entrypoint: str
    attempts: int
    pid: int
    t: float
    outcome: str | None = None


class EventLog:
    """Reads the events file incrementally (complete lines only), tracks which
    handler runs have started and not ended per worker pid, and when each worker
    learnt it was to stop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[Event] = []
        self.started: set[int] = set()
        #: pid -> when its worker's ``shutdown`` event was set (once per worker cycle)
        self.shutdowns: dict[int, list[float]] = defaultdict(list)
        self._offset = 0
        self._open: Counter[tuple[int, int, int]] = Counter()

    def refresh(self) -> list[Event]:
        if not self.path.exists():
            return self.events
        with open(self.path, "rb") as file:
            file.seek(self._offset)
            data = file.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode().splitlines():
            if line.strip():
                raw = json.loads(line)
                if raw["event"] == "shutdown":
                    self.shutdowns[raw["pid"]].append(raw["t"])
                    continue
                event = Event(raw["event"], raw["job"], raw["entrypoint"], raw["attempts"],
                              raw["pid"], raw["t"], raw.get("outcome"))
                self.events.append(event)
                key = (event.job, event.attempts, event.pid)
                if event.event == "start":
                    self.started.add(event.job)
                    self._open[key] += 1
                elif self._open[key] > 0:
                    self._open[key] -= 1
        return self.events

    def running_by_pid(self) -> Counter[int]:
        """pid -> handler runs started and not ended (as of the last refresh)."""
        counts: Counter[int] = Counter()
        for (_, _, pid), n in self._open.items():
            counts[pid] += n
        return counts


class Chaos:
    """Injects a random fault every PAUSE_MIN..PAUSE_MAX seconds until ``until``.

    Before about half of the faults it enqueues a burst of jobs and waits (briefly)
    until the fleet is running some of them, and a worker to be signalled is
    preferably one with handlers running: jobs are short, and a fault that hits an
    idle fleet proves little.
    """

    def __init__(
        self,
        fleet: Fleet,
        cluster: PrivateCluster,
        dbname: str,
        rng: random.Random,
        ledger: Ledger,
        events: EventLog,
    ) -> None:
        self.fleet = fleet
        self.cluster = cluster
        self.dbname = dbname
        self.rng = rng
        self.ledger = ledger
        self.events = events
        self.faults: list[Fault] = []
        self.bursts = 0

    def run(self, until: float) -> None:
        while True:
            pause = self.rng.uniform(PAUSE_MIN, PAUSE_MAX)
            if time.time() + pause >= until:
                break
            time.sleep(pause)  # a random pause between actions, not a synchronisation
            self.fleet.check()
            if self.rng.random() < BURST_CHANCE:
                self.burst(self.rng.randint(*BURST_SIZE))
            kind = self.rng.choices(list(FAULT_WEIGHTS), weights=list(FAULT_WEIGHTS.values()))[0]
            pick = self.rng.random()
            self.faults.append(self.inject(kind, pick))

    def burst(self, size: int) -> None:
        """Enqueue ``size`` jobs; wait up to BURST_WAIT s until one of them has started."""
        ids = set(self.ledger.enqueue([make_spec(self.rng) for _ in range(size)]))
        self.bursts += 1
        deadline = time.monotonic() + BURST_WAIT
        while time.monotonic() < deadline:
            self.events.refresh()
            if ids & self.events.started:
                return
            time.sleep(0.02)

    def inject(self, kind: str, pick: float) -> Fault:
        booted = [w for w in self.fleet.live() if w.booted()]
        if kind in ("sigkill", "sigterm") and booted:
            self.events.refresh()
            running = self.events.running_by_pid()
            busy = [w for w in booted if running[w.pid]]
            candidates = busy or booted
            worker = candidates[int(pick * len(candidates))]
            fault = self.fleet.sigkill(worker) if kind == "sigkill" else self.fleet.sigterm(worker)
            self.fleet.start()
            return dataclasses.replace(
                fault, detail=f"{fault.detail}, {running[worker.pid]} handlers running"
            )
        if kind.startswith("restart_"):
            mode = kind.removeprefix("restart_")
            t0 = time.time()
            self.cluster.restart(mode=mode)
            return Fault(kind, t0, time.time())
        t0 = time.time()  # also when no worker was up long enough to be signalled
        count = terminate_backends(self.cluster.dsn, self.dbname)
        return Fault("terminate_backends", t0, time.time(), detail=f"{count} backends")


# -- reading what happened ---------------------------------------------------------------------


@dataclasses.dataclass
class LogRow:
    status: str
    created: float
    reason: str | None
    exception: str | None


@dataclasses.dataclass
class Snapshot:
    """The queue and log tables after the run."""

    history: dict[int, list[LogRow]]
    queue: dict[int, tuple[str, int]]  # id -> (status, attempts)

    def terminal(self, job_id: int) -> list[str]:
        return [r.status for r in self.history.get(job_id, []) if r.status in TERMINAL]

    def handed_back(self, job_id: int, start: float, end: float) -> bool:
        return any(
            r.status == "queued" and r.reason == "shutdown" and start - MARGIN <= r.created
            <= end + MARGIN
            for r in self.history.get(job_id, [])
        )


def names() -> dict[str, sql.Composable]:
    return {
        "queue": SETTINGS.ident("queue_table"),
        "log": SETTINGS.ident("queue_table_log"),
        "stats": SETTINGS.ident("statistics_table"),
    }


def snapshot(conn: psycopg.Connection[Any]) -> Snapshot:
    history: dict[int, list[LogRow]] = defaultdict(list)
    query = sql.SQL(
        "SELECT job_id, status::text, extract(epoch FROM created)::float8, "
        "traceback->'additional_context'->>'reason', traceback->>'exception_type' "
        "FROM {log} ORDER BY id"
    ).format(**names())
    for job_id, status, created, reason, exception in conn.execute(query):
        history[job_id].append(LogRow(status, created, reason, exception))
    rows = conn.execute(
        sql.SQL("SELECT id, status::text, attempts FROM {queue}").format(**names())
    ).fetchall()
    return Snapshot(dict(history), {r[0]: (r[1], r[2]) for r in rows})


def unfinished(conn: psycopg.Connection[Any], ids: list[int]) -> list[int]:
    """Enqueued ids without a terminal log row, or still queued/picked in the queue."""
    query = sql.SQL(
        "SELECT i FROM unnest(%s::bigint[]) AS i WHERE NOT EXISTS "
        "(SELECT 1 FROM {log} l WHERE l.job_id = i AND l.status = ANY(%s::text[]::{status}[])) "
        "UNION SELECT id FROM {queue} WHERE status IN ('queued', 'picked') ORDER BY 1"
    ).format(status=SETTINGS.ident("queue_status_type"), **names())
    return [r[0] for r in conn.execute(query, [ids, list(TERMINAL)]).fetchall()]


def stuck_report(conn: psycopg.Connection[Any], ids: list[int], t0: float) -> str:
    query = sql.SQL(
        "SELECT id, entrypoint, status::text, attempts, queue_manager_id, "
        "round(extract(epoch FROM NOW() - heartbeat)::numeric, 1), "
        "round(extract(epoch FROM execute_after - NOW())::numeric, 1) "
        "FROM {queue} WHERE id = ANY(%s) ORDER BY id LIMIT 40"
    ).format(**names())
    lines = ["queue rows (id, entrypoint, status, attempts, owner, heartbeat age, eta):"]
    lines += [f"  {row}" for row in conn.execute(query, [ids])]
    log = sql.SQL(
        "SELECT job_id, status::text, round((extract(epoch FROM created) - %s)::numeric, 2), "
        "traceback->'additional_context'->>'reason' FROM {log} WHERE job_id = ANY(%s) "
        "ORDER BY job_id, id"
    ).format(**names())
    lines.append("log rows (job, status, t, reason):")
    lines += [f"  {row}" for row in conn.execute(log, [t0, ids[:40]])]
    return "\n".join(lines)


# -- checks ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Repeat:
    """A handler started again for the same ``attempts`` value, and why."""

    job: int
    attempts: int
    first: Event
    again: Event
    why: str | None


#: Cause of a repeat that is the worker's fault, not the fault injected.
STARTED_AFTER_SHUTDOWN = "started-after-shutdown"


def explain(
    first: Event, again: Event, faults: list[Fault], snap: Snapshot,
    shutdowns: dict[int, list[float]],
) -> str | None:
    """Which fault accounts for ``again`` re-running what ``first`` started, if any.

    A SIGKILL of ``first``'s worker after (or as) ``first`` started; a SIGTERM of it
    with a hand-back row for the job (unless ``first`` started after that
    worker already knew it was stopping: then the repeat is the worker's doing,
    :data:`STARTED_AFTER_SHUTDOWN`); or a connection fault (terminated backends,
    server restart) between the two starts, give or take MARGIN seconds.
    """
    for fault in faults:
        if fault.pid != first.pid or fault.t0 > again.t:
            continue
        # A killed process records nothing after it dies, but it may record a start
        # in the instant between the kill being sent (t0) and taking effect.
        if fault.kind == "sigkill" and first.t <= fault.t1 + MARGIN:
            return "sigkill"
        if fault.kind == "sigterm" and snap.handed_back(first.job, first.t, again.t):
            stopping = [t for t in shutdowns.get(first.pid, []) if fault.t0 <= t <= first.t]
            return STARTED_AFTER_SHUTDOWN if stopping else "sigterm+handback"
    for fault in faults:
        if (
            fault.kind in CONNECTION_FAULTS
            and fault.t0 - MARGIN <= again.t
            and fault.t1 + MARGIN >= first.t
        ):
            return fault.kind
    return None


def repeats(
    events: list[Event], faults: list[Fault], snap: Snapshot, shutdowns: dict[int, list[float]]
) -> list[Repeat]:
    starts: dict[tuple[int, int], list[Event]] = defaultdict(list)
    for e in events:
        if e.event == "start":
            starts[(e.job, e.attempts)].append(e)
    found = []
    for (job, attempts), runs in sorted(starts.items()):
        runs.sort(key=lambda e: e.t)
        for first, again in itertools.pairwise(runs):
            why = explain(first, again, faults, snap, shutdowns)
            found.append(Repeat(job, attempts, first, again, why))
    return found


def rescue_times(
    events: list[Event], faults: list[Fault]
) -> tuple[list[tuple[float, int, int]], dict[int, str]]:
    """(seconds, job, killed pid) from each SIGKILL to the next start of every job the
    killed worker had started and not ended; plus jobs that never started again."""
    by_job: dict[int, list[Event]] = defaultdict(list)
    for e in events:
        by_job[e.job].append(e)
    times: list[tuple[float, int, int]] = []
    never: dict[int, str] = {}
    for fault in faults:
        if fault.kind != "sigkill" or fault.pid is None:
            continue
        for job, seen in by_job.items():
            for start in (e for e in seen if e.event == "start" and e.pid == fault.pid):
                ended = any(
                    e.event == "end" and e.pid == start.pid and e.attempts == start.attempts
                    and e.t >= start.t for e in seen
                )
                if ended or start.t > fault.t0:
                    continue
                later = [e.t for e in seen if e.event == "start" and e.t > start.t]
                if not later:
                    never[job] = f"started by pid {fault.pid} at {start.t:.3f}, killed at " \
                                 f"{fault.t0:.3f}"
                    continue
                times.append((max(min(later) - fault.t0, 0.0), job, fault.pid))
    return times, never


class Findings:
    """Problems found, each with the job ids it is about (dumped in detail on failure)."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.ids: set[int] = set()

    def add(self, what: str, items: dict[int, str] | list[int]) -> None:
        """Report ``what`` for ``items`` (job ids, or job id -> detail) unless empty."""
        if not items:
            return
        if isinstance(items, dict):
            listed = [f"{i}: {detail}" for i, detail in sorted(items.items())]
        else:
            listed = [str(i) for i in sorted(items)]
        self.ids.update(items)
        more = f" (+{len(listed) - 50} more)" if len(listed) > 50 else ""
        self.problems.append(f"{len(listed)} {what}: " + "; ".join(listed[:50]) + more)

    def note(self, problem: str) -> None:
        self.problems.append(problem)


def check_ledger(ledger: Ledger, snap: Snapshot, findings: Findings) -> None:
    """Exactly one terminal row per job, the right one, and the queue table left clean."""
    lost: list[int] = []
    doubled: dict[int, str] = {}
    wrong: dict[int, str] = {}
    left: dict[int, str] = {}
    for job_id, spec in sorted(ledger.specs.items()):
        terminal = snap.terminal(job_id)
        expected = "failed" if spec.kind == "held" else "successful"
        if not terminal:
            lost.append(job_id)
        elif len(terminal) > 1:
            doubled[job_id] = f"{spec.kind} {terminal}"
        elif terminal[0] != expected:
            wrong[job_id] = f"{spec.kind} ended {terminal[0]}"
        row = snap.queue.get(job_id)
        if spec.kind == "held" and (row is None or row[0] != "failed"):
            left[job_id] = f"held job's queue row is {row}, not failed"
        if spec.kind != "held" and row is not None:
            left[job_id] = f"{spec.kind} job still in the queue table as {row}"
    findings.add("jobs lost (no terminal log row)", lost)
    findings.add("jobs with several terminal log rows", doubled)
    findings.add("jobs ended with the wrong status", wrong)
    findings.add("jobs in the wrong state in the queue table", left)
    findings.add("jobs left picked",
                 [i for i, (status, _) in snap.queue.items() if status == "picked"])
    findings.add("jobs the test never enqueued",
                 sorted((set(snap.queue) | set(snap.history)) - set(ledger.specs)))


def check_retries(ledger: Ledger, events: list[Event], findings: Findings) -> None:
    """Retrying jobs ran attempts 0..n, each at least once, and nothing beyond n."""
    seen: dict[int, set[int]] = defaultdict(set)
    for e in events:
        if e.event == "start" and e.entrypoint == "retrying":
            seen[e.job].add(e.attempts)
    bad = {}
    for job_id, spec in sorted(ledger.specs.items()):
        if spec.kind == "retrying" and seen[job_id] != set(range(int(spec.payload["n"]) + 1)):
            bad[job_id] = f"n={spec.payload['n']}, attempts started {sorted(seen[job_id])}"
    findings.add("retrying jobs lost a retry or burnt an attempt", bad)


def statistics_problems(conn: psycopg.Connection[Any]) -> list[str]:
    """After a final aggregation, statistics per (entrypoint, status) equal the log."""
    Queries(SyncPsycopgDriver(conn), settings=SETTINGS).log_statistics(limit=1)
    left = conn.execute(
        sql.SQL("SELECT count(*) FROM {log} WHERE NOT aggregated").format(**names())
    ).fetchone()
    stats = dict(((e, s), int(c)) for e, s, c in conn.execute(sql.SQL(
        "SELECT entrypoint, status::text, sum(count) FROM {stats} GROUP BY 1, 2"
    ).format(**names())))
    log = dict(((e, s), int(c)) for e, s, c in conn.execute(sql.SQL(
        "SELECT entrypoint, status::text, count(*) FROM {log} GROUP BY 1, 2"
    ).format(**names())))
    problems = []
    if left and left[0]:
        problems.append(f"{left[0]} log rows still unaggregated after log_statistics()")
    diff = {k: (stats.get(k, 0), log.get(k, 0)) for k in sorted(set(stats) | set(log))
            if stats.get(k, 0) != log.get(k, 0)}
    if diff:
        problems.append(f"statistics differ from the log, (entrypoint, status): "
                        f"(statistics, log): {diff}")
    return problems


def describe(
    job_id: int, ledger: Ledger, snap: Snapshot, events: list[Event], t0: float,
    shutdowns: dict[int, list[float]],
) -> str:
    """One job's spec, log rows, handler events and the shutdown times of the workers
    that ran it, times relative to the start of the run."""
    rows = ", ".join(
        f"{r.status}@{r.created - t0:.2f}" + (f"[{r.reason}]" if r.reason else "")
        for r in snap.history.get(job_id, [])
    )
    runs = ", ".join(
        f"{e.event}(a={e.attempts},pid={e.pid},{e.outcome or ''})@{e.t - t0:.2f}"
        for e in events if e.job == job_id
    )
    pids = sorted({e.pid for e in events if e.job == job_id})
    stops = ", ".join(
        f"{pid}@" + "/".join(f"{t - t0:.2f}" for t in shutdowns.get(pid, [])) for pid in pids
    )
    return (f"job {job_id} {ledger.specs.get(job_id)}: log [{rows}] events [{runs}] "
            f"worker shutdowns [{stops}]")


def summarise(
    seed: int,
    ledger: Ledger,
    faults: list[Fault],
    found: list[Repeat],
    rescues: list[tuple[float, int, int]],
    timings: dict[str, float],
    fleet: Fleet,
    bursts: int,
) -> str:
    kinds = Counter(s.kind for s in ledger.specs.values())
    by_fault = Counter(f.kind for f in faults)
    why = Counter(r.why or "UNEXPLAINED" for r in found)
    worst = max(rescues, default=None)
    lines = [
        f"chaos seed {seed} (replay: PGQS_CHAOS_SEED={seed} PGQS_CHAOS_SECONDS={CHAOS_SECONDS:g})",
        f"jobs: {len(ledger.specs)} {dict(sorted(kinds.items()))}, "
        f"deferred {sum(1 for s in ledger.specs.values() if s.delay)}, "
        f"prioritised {sum(1 for s in ledger.specs.values() if s.priority)}, "
        f"bursts before faults {bursts}, enqueue retries {ledger.retries}",
        f"faults: {len(faults)} {dict(sorted(by_fault.items()))}",
        f"worker processes started: {len(fleet.workers)}, worker cycles rebuilt by the "
        f"supervisor: {sum(max(w.log().count(BOOTED) - 1, 0) for w in fleet.workers)}",
        f"second runs: {len(found)} on {len({r.job for r in found})} jobs, "
        f"by cause {dict(sorted(why.items()))}",
        "worst rescue after SIGKILL: "
        + (f"{worst[0]:.2f}s (job {worst[1]}, killed pid {worst[2]}), over {len(rescues)} "
           "rescued jobs" if worst else "n/a (no killed worker held a running job)"),
        "timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        + "; slowest final stop: " + ", ".join(
            f"{name} {seconds:.1f}s" for name, seconds in sorted(
                fleet.stop_seconds.items(), key=lambda item: -item[1])[:2]
        ),
        "fleet: " + ", ".join(repr(w) for w in fleet.workers),
    ]
    return "\n".join(lines)


def fault_log(faults: list[Fault], t0: float) -> str:
    return "\n".join(
        f"  {f.t0 - t0:7.2f}..{f.t1 - t0:7.2f} {f.kind}"
        + (f" pid {f.pid}" if f.pid else "") + (f" {f.detail}" if f.detail else "")
        for f in faults
    )


def dump_state(dsn: str, directory: Path, faults: list[Fault]) -> str:
    """Save the queue, log and statistics tables and the faults under ``directory``
    for a post-mortem; returns where they went."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, table in names().items():
            query = sql.SQL("COPY (SELECT * FROM {} ORDER BY id) TO STDOUT WITH CSV HEADER")
            with open(directory / f"{name}.csv", "wb") as out, \
                    conn.cursor().copy(query.format(table)) as copy:
                for data in copy:
                    out.write(data)
    (directory / "faults.json").write_text(
        json.dumps([dataclasses.asdict(f) for f in faults], indent=1)
    )
    return f"state saved in {directory} (queue.csv, log.csv, stats.csv, faults.json, events.jsonl)"


def wait_until(what: str, predicate: Callable[[], bool], timeout: float,
               report: Callable[[], str], interval: float = 0.25) -> None:
    """Poll ``predicate`` until true; fail with ``report()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}\n{report()}", pytrace=False)
        time.sleep(interval)


# -- the test ----------------------------------------------------------------------------------


@pytest.mark.timeout(int(CHAOS_SECONDS) + 180)
def test_at_least_once_under_chaos(
    private_cluster: PrivateCluster, private_dsn: str, tmp_path: Path
) -> None:
    """No job is lost and every repeated run is explained, through SIGKILLs, SIGTERMs,
    terminated backends and fast/immediate server restarts."""
    seed = int(os.environ.get("PGQS_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    print(f"\nchaos seed {seed}, {CHAOS_SECONDS:g}s of faults")
    t_begin = time.time()
    chaos_rng, jobs_rng, trickle_rng = (random.Random(f"{seed}-{n}") for n in range(3))
    dbname = conninfo_to_dict(private_dsn)["dbname"]
    with psycopg.connect(private_cluster.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = on")
                      .format(sql.Identifier(str(dbname))))
    with psycopg.connect(private_dsn, autocommit=True) as conn:
        conn.execute(Ledger.TABLE)

    events_path = tmp_path / "events.jsonl"
    ledger = Ledger(private_dsn)
    fleet = Fleet(private_dsn, events_path, tmp_path, chaos_rng)
    event_log = EventLog(events_path)
    chaos = Chaos(fleet, private_cluster, str(dbname), chaos_rng, ledger, event_log)
    trickle = Trickle(ledger, trickle_rng, TRICKLE_RATE)
    timings: dict[str, float] = {}
    try:
        for _ in range(INITIAL_JOBS // BATCH):
            ledger.enqueue([make_spec(jobs_rng) for _ in range(BATCH)])
        fleet.top_up()
        trickle.start()
        t_chaos = time.time()
        chaos.run(until=t_chaos + CHAOS_SECONDS)
        trickle.stopped.set()
        trickle.join(ENQUEUE_PATIENCE + 10)
        assert not trickle.is_alive(), "the enqueuing thread did not stop"
        if trickle.error is not None:
            raise trickle.error
        timings["chaos"] = time.time() - t_chaos

        # Drain: the server up, a full fleet, every job terminal.
        t_drain = time.time()
        private_cluster.ensure_started()
        fleet.check()
        ids = sorted(ledger.specs)
        with psycopg.connect(private_dsn, autocommit=True) as conn:
            def drained() -> bool:
                fleet.check()
                return not unfinished(conn, ids)

            def report() -> str:
                stuck = unfinished(conn, ids)
                return (f"{len(stuck)} jobs unfinished: {stuck[:60]}\n"
                        f"{stuck_report(conn, stuck, t_begin)}\nfaults:\n"
                        f"{fault_log(chaos.faults, t_begin)}\n{fleet.logs()}\n{fleet.stacks()}\n"
                        f"{dump_state(private_dsn, tmp_path, chaos.faults)}")

            wait_until("every job reached a terminal state", drained, DRAIN_TIMEOUT, report)
        timings["drain"] = time.time() - t_drain
        t_stop = time.time()
        fleet.stop_all()
        timings["stop"] = time.time() - t_stop
    finally:
        trickle.stopped.set()
        fleet.reap_all()
        ledger.close()

    events = event_log.refresh()
    findings = Findings()
    with psycopg.connect(private_dsn, autocommit=True) as conn:
        snap = snapshot(conn)
        check_ledger(ledger, snap, findings)
        check_retries(ledger, events, findings)
        for problem in statistics_problems(conn):
            findings.note(problem)
    found = repeats(events, chaos.faults, snap, event_log.shutdowns)

    def runs(why: str | None) -> dict[int, str]:
        return {
            r.job: f"attempts {r.attempts}: pid {r.first.pid} at {r.first.t - t_begin:.2f}s, "
                   f"again pid {r.again.pid} at {r.again.t - t_begin:.2f}s"
            for r in found if r.why == why
        }

    findings.add("unexplained second runs (same attempts value started again)", runs(None))
    findings.add(
        "second runs of jobs whose first run STARTED after its worker had received SIGTERM "
        "(shutdown event set), was handed back while running, and ran again elsewhere",
        runs(STARTED_AFTER_SHUTDOWN),
    )
    rescues, never = rescue_times(events, chaos.faults)
    findings.add("jobs of a SIGKILLed worker never started again", never)
    for anomaly in fleet.anomalies:
        findings.note(anomaly)
    timings["total"] = time.time() - t_begin
    summary = summarise(seed, ledger, chaos.faults, found, rescues, timings, fleet,
                        chaos.bursts)
    print(summary)
    print("faults (seconds since start):\n" + fault_log(chaos.faults, t_begin))
    if findings.problems:
        details = "\n".join(
            describe(i, ledger, snap, events, t_begin, event_log.shutdowns)
            for i in sorted(findings.ids)[:25]
        )
        pytest.fail(
            "\n".join([summary, "PROBLEMS:", *findings.problems, "", "offending jobs:", details,
                       "faults (seconds since start):", fault_log(chaos.faults, t_begin),
                       fleet.logs(25), dump_state(private_dsn, tmp_path, chaos.faults)]),
            pytrace=False,
        )
