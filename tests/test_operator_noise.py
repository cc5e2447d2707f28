"""Operator faults under a running worker give one log line per backoff step (issue 11).

The queue schema dropped, or the worker role's grants revoked, under a running
worker (slow jobs running, outcomes waiting, heartbeats due, the statistics
aggregator and a cron schedule running): every thread that keeps failing
logs one line per backoff step (:mod:`pgqueue_sync.backoff`), without a
traceback, saying what failed and what to do; nothing claims to work again
while the database is still broken; once
the operator repairs it, the worker and the scheduler say so and work resumes,
losing nothing that was not in the dropped tables. (An unreachable server is
covered by ``test_reliability.py``.)

Every wait is on a condition with a deadline; the worker thread is stopped
with a bounded join (``worker_helpers.running``) and the role dropped in a
``finally``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgqueue_sync import (
    DatabaseError,
    DBSettings,
    Job,
    PgqException,
    Queries,
    Schedule,
    SchedulerManager,
    SyncPsycopgDriver,
    backoff,
)
from pgqueue_sync.app import PgQueuer
from pgqueue_sync.schema import Schema
from pgqueue_sync.worker.threads import IDLE, Ticker

from .worker_helpers import login_role, make_pgq, pool_for, running, wait_for

EVERY_SECOND = "* * * * * *"
#: Heartbeats due every second (tick 0.25 s), statistics every ~0.3 s, an idle
#: poll every second.
RUN: dict[str, Any] = {
    "dequeue_timeout": 1.0,
    "heartbeat_timeout": 2.0,
    "log_aggregation_interval": 0.3,
    "concurrency": 8,
    "shutdown_timeout": 5.0,
}
SLOW_JOBS = 3
FAST_JOBS = 3
NEW_JOBS = 3
#: Threads that keep failing while the database is broken, and the failure lines
#: each must have logged before the log is judged: the claim loop, outcome
#: writes, job heartbeats, the heartbeat of a running schedule (the fourth line
#: comes ~3.2-3.9 s after the first) and the scheduler's poll (which first fails
#: up to ~2 s late: its next poll).
STEPS = {
    "pgqueue_sync-dispatcher": 4,
    "pgqueue_sync-flusher": 4,
    "pgqueue_sync-heartbeat": 4,
    "pgqueue_sync-schedule-heartbeat": 4,
    "pgqueue_sync-scheduler": 3,
}
AGGREGATOR = "pgqueue_sync-aggregator"
#: What a line says when its thread works again.
RECOVERED = ("works again", "reachable again")
SCHEMA_HINT = "is the queue schema installed? run 'pgq-sync install'"
GRANT_HINT = "pgq-sync grants"
#: Longest wait for any one condition.
DEADLINE = 20.0
#: After a repair, attempts already in flight may still fail for this long.
IN_FLIGHT = 1.0


# -- what one backoff step allows ----------------------------------------------------------


def shortest_delay(step: int) -> float:
    """The shortest wait after the ``step``-th consecutive failure (1-based)."""
    initial = min(backoff.INITIAL_DELAY, backoff.DATABASE_RETRY_INITIAL)
    longest = min(backoff.MAX_DELAY, backoff.DATABASE_RETRY_MAX)
    return min(initial * backoff.FACTOR ** (step - 1), longest) * (1 - backoff.JITTER)


def max_steps(window: float) -> int:
    """The most failure lines one backoff loop can log within ``window`` seconds:
    one at the first failure, then one after each (shortest) delay that fits."""
    steps, elapsed = 1, shortest_delay(1)
    while elapsed <= window:
        steps += 1
        elapsed += shortest_delay(steps)
    return steps


def test_the_bound_follows_the_backoff_parameters() -> None:
    assert [max_steps(w) for w in (0.0, 0.5, 1.4, 3.2, 6.0, 7.0)] == [1, 2, 3, 4, 4, 5]


# -- log capture -----------------------------------------------------------------------------


class Records(logging.Handler):
    """Every record of the ``pgqueue_sync`` loggers, in order (thread-safe)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._records: list[logging.LogRecord] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._guard:
            self._records.append(record)

    def warnings(self, start: float, end: float | None = None) -> list[logging.LogRecord]:
        """WARNING and above created in ``[start, end)`` (``time.time()`` values)."""
        with self._guard:
            records = list(self._records)
        return [
            r for r in records
            if r.levelno >= logging.WARNING and r.created >= start
            and (end is None or r.created < end)
        ]

    def failures(self, start: float, thread: str | None = None) -> list[logging.LogRecord]:
        """Warnings since ``start`` that are not recovery lines (of ``thread``)."""
        return [
            r for r in self.warnings(start)
            if not recovered(r) and (thread is None or r.threadName == thread)
        ]


def recovered(record: logging.LogRecord) -> bool:
    return any(text in record.getMessage() for text in RECOVERED)


def show(records: list[logging.LogRecord]) -> str:
    return "\n".join(
        f"  {r.created % 100:6.2f} {r.threadName} {r.levelname} {r.getMessage()}"
        + (" [+traceback]" if r.exc_info else "")
        for r in records
    )


@contextlib.contextmanager
def captured() -> Iterator[Records]:
    records = Records()
    package = logging.getLogger("pgqueue_sync")
    level = package.level
    package.addHandler(records)
    package.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        package.removeHandler(records)
        package.setLevel(level)


def judge_outage(records: Records, start: float, end: float, hint: str) -> dict[str, int]:
    """Check the lines logged from ``start`` to ``end`` (the database broken all along);
    returns the failure lines per thread."""
    lines = records.warnings(start, end)
    log = show(lines)
    assert not [r for r in lines if r.exc_info], f"a traceback for a database error:\n{log}"
    false = [r for r in lines if recovered(r)]
    assert not false, f"recovery claimed while the database is broken:\n{show(false)}"
    failed = [r for r in lines if not recovered(r)]
    vague = [r for r in failed if hint not in r.getMessage()]
    assert not vague, f"lines that do not say what failed and what to do:\n{show(vague)}"
    by_thread: dict[str, list[float]] = {}
    for record in failed:
        by_thread.setdefault(record.threadName, []).append(record.created)
    bound = max_steps(end - start)
    for thread, times in by_thread.items():
        assert len(times) <= bound, (
            f"{thread}: {len(times)} lines in {end - start:.1f}s, one per backoff step "
            f"allows {bound}:\n{log}"
        )
        # Each line waits out a longer delay than the one before.
        for step, (before, after) in enumerate(zip(times[:-1], times[1:], strict=True), start=1):
            assert after - before >= shortest_delay(step) - 0.05, (
                f"{thread}: line {step + 1} came {after - before:.2f}s after line {step}, "
                f"before its backoff delay ({shortest_delay(step):.2f}s):\n{log}"
            )
    return {thread: len(times) for thread, times in by_thread.items()}


def wait_steps(records: Records, start: float) -> None:
    def counts() -> Counter[str]:
        return Counter(r.threadName for r in records.failures(start))

    wait_for(lambda: all(counts()[t] >= n for t, n in STEPS.items()) and counts()[AGGREGATOR],
             timeout=DEADLINE, interval=0.05,
             what=lambda: f"backoff steps {dict(STEPS)}; got {dict(counts())}")


def judge_recovery(records: Records, repaired: float) -> None:
    """After a repair: the worker and the scheduler say they resumed, at most one
    recovery line per thread, and no failure once attempts in flight are done."""
    wait_for(lambda: {r.threadName for r in records.warnings(repaired) if recovered(r)}
             >= {"pgqueue_sync-dispatcher", "pgqueue_sync-scheduler"},
             timeout=DEADLINE, what="recovery lines of the dispatcher and the scheduler")
    lines = records.warnings(repaired)
    again = Counter(r.threadName for r in lines if recovered(r))
    assert max(again.values()) == 1, show(lines)
    late = [r for r in lines if not recovered(r) and r.created > repaired + IN_FLIGHT]
    assert not late, f"failures after the repair:\n{show(lines)}"


# -- the workload ----------------------------------------------------------------------------


class Workload:
    """Handlers of a worker with slow and fast jobs and a cron schedule that runs
    until released."""

    def __init__(self, pgq: PgQueuer) -> None:
        self.pgq = pgq
        self.started: set[int] = set()
        self.done: list[int] = []
        self.schedule_runs = 0
        self._release: dict[int, threading.Event] = {}
        self._release_schedule = threading.Event()
        self._guard = threading.Lock()
        pgq.entrypoint("slow")(self._slow)
        pgq.entrypoint("fast")(self._fast)
        pgq.schedule("tick", EVERY_SECOND)(self._tick)

    def _event(self, job_id: int) -> threading.Event:
        with self._guard:
            return self._release.setdefault(job_id, threading.Event())

    def _slow(self, job: Job) -> None:
        release = self._event(job.id)
        with self._guard:
            self.started.add(job.id)
        release.wait(DEADLINE * 2)
        self._fast(job)

    def _fast(self, job: Job) -> None:
        with self._guard:
            self.done.append(job.id)

    def _tick(self, schedule: Schedule) -> None:
        with self._guard:
            self.schedule_runs += 1
        self._release_schedule.wait(DEADLINE * 2)

    def release(self, job_ids: list[int]) -> None:
        for job_id in job_ids:
            self._event(job_id).set()

    def release_schedule(self) -> None:
        self._release_schedule.set()

    def release_all(self) -> None:
        self._release_schedule.set()
        with self._guard:
            events = list(self._release.values())
        for event in events:
            event.set()

    def finished(self, job_ids: list[int]) -> bool:
        with self._guard:
            return set(job_ids) <= set(self.done)


@contextlib.contextmanager
def worker(dsn: str, **run: Any) -> Iterator[Workload]:
    """A running worker (jobs and schedules) over a pool on ``dsn``; stopped afterwards."""
    with pool_for(dsn, size=12) as pool:
        load = Workload(make_pgq(pool))
        with running(load.pgq, **{**RUN, **run}):
            try:
                yield load
            finally:
                load.release_all()  # before the stop and bounded join of the worker


def enqueue(dsn: str, entrypoint: str, count: int) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
        return list(queries.enqueue([entrypoint] * count, [None] * count))


def final_statuses(dsn: str, job_ids: list[int]) -> dict[int, list[str]]:
    """Each job's final log statuses, oldest first."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT job_id, status::text FROM pgqueuer_log WHERE job_id = ANY(%s) "
            "AND status NOT IN ('queued', 'picked') ORDER BY id",
            [job_ids],
        ).fetchall()
    found: dict[int, list[str]] = {}
    for job_id, status in rows:
        found.setdefault(job_id, []).append(status)
    return found


def busy(load: Workload, dsn: str) -> list[int]:
    """Slow jobs running, fast ones done and logged, the schedule running; the slow ids."""
    slow = enqueue(dsn, "slow", SLOW_JOBS)
    fast = enqueue(dsn, "fast", FAST_JOBS)
    wait_for(lambda: load.started >= set(slow) and load.finished(fast)
             and load.schedule_runs > 0, timeout=DEADLINE, what="jobs and the schedule running")
    wait_for(lambda: final_statuses(dsn, fast) == {i: ["successful"] for i in fast},
             timeout=DEADLINE, what="fast jobs logged")
    return slow


def aggregate_soon(pgq: PgQueuer) -> None:
    """As if a job had been dispatched since the last aggregation: the aggregator
    writes at its next tick (it writes only after dispatches, and none can happen
    while the database is broken)."""
    assert hasattr(pgq.qm._progress, "dispatched_since_aggregation")
    pgq.qm._progress.dispatched_since_aggregation = True


def count_beats(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Ticks of the schedule-heartbeat thread so far (each reads ``active_heartbeat_ids``)."""
    ticks = [0]
    original = SchedulerManager.active_heartbeat_ids

    def counted(self: SchedulerManager) -> set[Any]:
        if threading.current_thread().name == "pgqueue_sync-schedule-heartbeat":
            ticks[0] += 1
        assert original.fget is not None
        return set(original.fget(self))

    monkeypatch.setattr(SchedulerManager, "active_heartbeat_ids", property(counted))
    return lambda: ticks[0]


def break_and_judge(
    load: Workload,
    records: Records,
    slow: list[int],
    hint: str,
    breaks: Callable[[], None],
    beats: Callable[[], int],
) -> float:
    """Break the database, judge the log once every thread has logged its steps,
    then let the last slow job and the schedule finish, still broken, and wait
    for the schedule heartbeat's next tick: with nothing left to refresh it must
    not claim to work again. Returns when the outage began."""
    start = time.time()
    breaks()
    aggregate_soon(load.pgq)
    load.release(slow[:-1])  # outcomes that cannot be written: kept and retried
    wait_steps(records, start)
    counts = judge_outage(records, start, time.time(), hint)
    print(f"failure lines per thread in {time.time() - start:.1f}s: {counts}")
    load.release(slow[-1:])
    load.release_schedule()
    wait_for(lambda: load.finished(slow) and not load.pgq.sm.active_heartbeat_ids,
             timeout=DEADLINE, what="the last slow job and the schedule finished")
    seen = beats()
    wait_for(lambda: beats() > seen, timeout=DEADLINE, what="a schedule-heartbeat tick")
    return start


# -- 1. the schema dropped under the worker --------------------------------------------------


def test_a_dropped_schema_gives_one_line_per_backoff_step_then_recovers(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    beats = count_beats(monkeypatch)
    with captured() as records, worker(dsn) as load, \
            psycopg.connect(dsn, autocommit=True) as admin:
        schema = Schema(SyncPsycopgDriver(admin), DBSettings())
        slow = busy(load, dsn)
        start = break_and_judge(load, records, slow, SCHEMA_HINT, schema.uninstall, beats)
        runs = load.schedule_runs
        repaired = time.time()
        judge_outage(records, start, repaired, SCHEMA_HINT)
        schema.install()
        judge_recovery(records, repaired)
        # New jobs run once each; the schedule (its row re-registered) runs again.
        new = enqueue(dsn, "fast", NEW_JOBS)
        wait_for(lambda: load.finished(new), timeout=DEADLINE, what="new jobs run")
        wait_for(lambda: final_statuses(dsn, new) == {i: ["successful"] for i in new},
                 timeout=DEADLINE, what="new jobs logged once")
        wait_for(lambda: load.schedule_runs > runs, timeout=DEADLINE,
                 what="the schedule runs again")


# -- 2. the worker role's grants revoked -----------------------------------------------------


@pytest.fixture
def worker_role(server_dsn: str, dsn: str) -> Iterator[str]:
    """A LOGIN role with every privilege on the (root-owned) queue tables and sequences."""
    with login_role(server_dsn, "pgqs_noise", databases=[dsn]) as name:
        with psycopg.connect(dsn, autocommit=True) as conn:
            grant(conn, name, True)
        yield name


def grant(conn: psycopg.Connection[Any], role: str, on: bool) -> None:
    template = (
        "GRANT ALL ON ALL {} IN SCHEMA public TO {}" if on
        else "REVOKE ALL ON ALL {} IN SCHEMA public FROM {}"
    )
    for kind in ("TABLES", "SEQUENCES"):
        conn.execute(sql.SQL(template).format(sql.SQL(kind), sql.Identifier(role)))


def test_revoked_grants_give_one_line_per_backoff_step_then_recover(
    dsn: str, worker_role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    beats = count_beats(monkeypatch)
    with captured() as records, worker(make_conninfo(dsn, user=worker_role)) as load, \
            psycopg.connect(dsn, autocommit=True) as admin:
        slow = busy(load, dsn)
        start = break_and_judge(load, records, slow, GRANT_HINT,
                                lambda: grant(admin, worker_role, False), beats)
        repaired = time.time()
        judge_outage(records, start, repaired, GRANT_HINT)
        grant(admin, worker_role, True)
        judge_recovery(records, repaired)
        # Nothing was dropped, so nothing may be lost: the outcomes kept through the
        # outage are written (a slow job may run again if its heartbeat went stale
        # meanwhile: at least once), and new jobs run.
        new = enqueue(dsn, "fast", NEW_JOBS)
        wait_for(lambda: load.finished(new), timeout=DEADLINE, what="new jobs run")

        def all_logged() -> bool:
            found = final_statuses(dsn, slow + new)
            return set(found) == set(slow + new) and all(
                set(s) == {"successful"} for s in found.values()
            )

        wait_for(all_logged, timeout=DEADLINE,
                 what=lambda: f"every job logged successful: {final_statuses(dsn, slow + new)}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            left = conn.execute("SELECT id FROM pgqueuer WHERE id = ANY(%s)",
                                [slow + new]).fetchall()
        assert left == []


# -- the Ticker on its own -------------------------------------------------------------------


def test_a_ticker_with_nothing_to_do_does_not_claim_to_work_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failing ticker whose next calls have nothing to do (return IDLE) stays
    failing and silent (at its normal pace), and says "works again" only when a
    call that does something succeeds."""
    script: list[object] = [DatabaseError("boom"), IDLE, IDLE, None]
    calls: list[tuple[float, bool]] = []
    done = threading.Event()
    ticker: Ticker

    def tick() -> object:
        calls.append((time.monotonic(), ticker.failing))
        step = script.pop(0) if script else None
        if not script:
            done.set()
        if isinstance(step, PgqException):
            raise step
        return step

    ticker = Ticker(tick, 0.01, name="test-ticker", jitter=0.0)
    with caplog.at_level(logging.WARNING, logger="pgqueue_sync"):
        ticker.start()
        try:
            assert done.wait(DEADLINE)
        finally:
            ticker.stop(5.0)
    assert not ticker.is_alive()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("pgqueue_sync")]
    assert len(messages) == 2 and "test-ticker failed" in messages[0], messages
    assert messages[1] == "test-ticker works again", messages
    assert not any(r.exc_info for r in caplog.records)
    # Failing from the error on, through both idle calls; the call after the
    # error waited its backoff delay, the idle ones only the interval.
    assert [failing for _, failing in calls] == [False, True, True, True]
    gaps = [b - a for (a, _), (b, _) in zip(calls[:-1], calls[1:], strict=True)]
    assert gaps[0] >= shortest_delay(1) and max(gaps[1:]) < shortest_delay(1), gaps
    assert not ticker.failing and ticker.last_error is None


# -- faults fixed in qm.py: the aggregator's backoff, a reused job id ---------------------------


def test_the_aggregator_backs_off_instead_of_claiming_to_work_again(dsn: str) -> None:
    with captured() as records, pool_for(dsn) as pool, \
            psycopg.connect(dsn, autocommit=True) as admin:
        pgq = make_pgq(pool)
        pgq.entrypoint("fast")(lambda job: None)
        with running(pgq, **RUN):
            wait_for(lambda: pgq.qm.idle_waits > 0, timeout=DEADLINE, what="worker idle")
            start = time.time()
            Schema(SyncPsycopgDriver(admin), DBSettings()).uninstall()
            aggregate_soon(pgq)
            # Two steps: ~0.5 s apart; the false recovery line comes ~0.3 s after the first.
            wait_for(lambda: len(records.failures(start, AGGREGATOR)) >= 2
                     or any(recovered(r) for r in records.warnings(start)
                            if r.threadName == AGGREGATOR),
                     timeout=DEADLINE, what="a second aggregator step or a recovery line")
            lines = [r for r in records.warnings(start) if r.threadName == AGGREGATOR]
            assert not any(recovered(r) for r in lines), show(lines)


def test_a_new_job_reusing_a_running_jobs_id_after_a_reinstall_runs(dsn: str) -> None:
    with captured() as records, worker(dsn) as load, \
            psycopg.connect(dsn, autocommit=True) as admin:
        [old] = enqueue(dsn, "slow", 1)
        wait_for(lambda: old in load.started, timeout=DEADLINE, what="slow job running")
        schema = Schema(SyncPsycopgDriver(admin), DBSettings())
        schema.uninstall()
        schema.install()
        [new] = enqueue(dsn, "fast", 1)
        assert new == old  # the reinstalled sequence starts again
        # While the old run goes on, the new row waits (claimed, then stale, then
        # claimed again) instead of being taken for a re-pick of the old one.
        wait_for(lambda: any("reuses the id" in r.getMessage() for r in records.warnings(0)),
                 timeout=DEADLINE, what="the reused id noticed")
        assert load.done.count(new) == 0 and final_statuses(dsn, [new]) == {}
        load.release([old])
        wait_for(lambda: load.done.count(new) >= 2, timeout=DEADLINE,
                 what="the old run ended and the new job then ran itself")
        wait_for(lambda: final_statuses(dsn, [new]) == {new: ["successful"]},
                 timeout=DEADLINE, what="one outcome for the new job")
