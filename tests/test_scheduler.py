"""The cron scheduler against a real PostgreSQL: registration, claims, heartbeats, the facade.

Time-based tests use ``* * * * * *`` (every second), so a first run comes within
about two seconds (registration sets ``next_run`` to the next whole second and
the scheduler polls again ``next_in + 1 s`` later). Every wait is on a
condition with a deadline. PgQueuer 1.6.0 itself is driven through asyncpg in a
thread with its own event loop, to prove both schedulers share one row and
never run one due schedule twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import pgqueuer
import psycopg
import pytest
from croniter import croniter
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from pgqueue_sync import (
    ConfigurationError,
    Context,
    DBSettings,
    Job,
    PgQueuer,
    Queries,
    Schedule,
    ScheduleContext,
    ScheduleExecutor,
    SchedulerManager,
    SyncPsycopgDriver,
    normalize_expression,
)

from .worker_helpers import make_pgq, pool_for, running, wait_for

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
EVERY_SECOND = "* * * * * *"
#: How long a child may take to import, connect and register.
BOOT_TIMEOUT = 20.0


def noop(schedule: Schedule) -> None:
    """A schedule function that does nothing."""


async def async_noop(schedule: Any) -> None:
    """PgQueuer accepts only async schedule functions."""


def rows(queries: Queries, entrypoint: str | None = None) -> list[Schedule]:
    return [s for s in queries.peek_schedule() if entrypoint in (None, s.entrypoint)]


def row(queries: Queries, entrypoint: str) -> Schedule:
    [found] = rows(queries, entrypoint)
    return found


def register_only(queries: Queries, register: Callable[[SchedulerManager], object]) -> None:
    """Register schedules the way run() does (shutdown already set: no polling)."""
    sm = SchedulerManager(queries)
    register(sm)
    sm.shutdown.set()
    sm.run()


def set_schedules(conn: psycopg.Connection[Any], assignments: str, entrypoint: str) -> None:
    """Simulate another runner's state with SQL (``assignments`` is test-authored text)."""
    conn.execute(
        sql.SQL("UPDATE {} SET " + assignments + " WHERE entrypoint = %s").format(
            DBSettings().ident("schedules_table")
        ),
        (entrypoint,),
    )


@contextlib.contextmanager
def scheduler_running(sm: SchedulerManager, **options: Any) -> Iterator[threading.Thread]:
    """Run ``sm.run(**options)`` in a thread; stop it and join (bounded) afterwards."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            sm.run(**options)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=target, name="test-scheduler", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        sm.shutdown.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "scheduler did not stop within 30s"
    if errors:
        raise errors[0]


# -- PgQueuer 1.6.0, driven from a thread ------------------------------------------------


def _asyncpg_params(dsn: str) -> dict[str, Any]:
    keys = {"host": "host", "port": "port", "user": "user", "password": "password",
            "dbname": "database"}
    return {keys[k]: (int(v) if k == "port" else v)
            for k, v in conninfo_to_dict(dsn).items() if k in keys}


def run_pgqueuer(dsn: str, operation: Callable[[Any], Awaitable[T]]) -> T:
    """``operation(queries)`` with PgQueuer's own ``Queries`` on an asyncpg connection."""

    async def main() -> T:
        connection = await asyncpg.connect(**_asyncpg_params(dsn))
        try:
            return await operation(pgqueuer.Queries(pgqueuer.AsyncpgDriver(connection)))
        finally:
            await connection.close()

    result: list[T] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(main())), daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert result, "PgQueuer operation did not finish"
    return result[0]


def pgqueuer_registers(dsn: str, entrypoint: str, expression: str) -> None:
    """Register a schedule through PgQueuer's own path (its key and its insert)."""

    async def register(queries: Any) -> None:
        theirs = pgqueuer.SchedulerManager(queries)
        theirs.schedule(entrypoint, expression)(async_noop)
        await queries.insert_schedule({k: v.next_in() for k, v in theirs.registry.items()})

    run_pgqueuer(dsn, register)


class PgQueuerScheduler:
    """PgQueuer's ``SchedulerManager.run`` in a thread with its own event loop."""

    def __init__(self, dsn: str, register: Callable[[Any], object]) -> None:
        self._dsn = dsn
        self._register = register
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sm: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="test-pgqueuer-sm", daemon=True)

    def __enter__(self) -> PgQueuerScheduler:
        self._thread.start()
        assert self._ready.wait(20), "PgQueuer scheduler did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._sm is not None:
            self._loop.call_soon_threadsafe(self._sm.shutdown.set)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "PgQueuer scheduler did not stop within 30s"
        if self.error is not None:
            raise self.error

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # surfaced in __exit__
            self.error = exc
        finally:
            self._ready.set()

    async def _run(self) -> None:
        connection = await asyncpg.connect(**_asyncpg_params(self._dsn))
        try:
            self._sm = pgqueuer.SchedulerManager(
                pgqueuer.Queries(pgqueuer.AsyncpgDriver(connection))
            )
            self._register(self._sm)
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            await self._sm.run()
        finally:
            await connection.close()


# -- expressions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "stored"),
    [
        ("* * * * *", "* * * * *"),
        ("* * * * * *", "* * * * * *"),
        ("*/5 * * * * */3", "*/5 * * * * */3"),
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("0 9 * * MON", "0 9 * * mon"),
        ("0 9 * * MON-FRI", "0 9 * * mon-fri"),
        ("  0   0  1 JAN * ", "0 0 1 jan *"),
        ("0 0 L * *", "0 0 l * *"),
    ],
)
def test_expressions_are_stored_as_pgqueuer_stores_them(expression: str, stored: str) -> None:
    theirs = pgqueuer.SchedulerManager(queries=None)
    theirs.schedule("job", expression)(async_noop)
    [their_key] = theirs.registry
    ours = SchedulerManager(None)  # type: ignore[arg-type]  # registration needs no database
    ours.schedule("job", expression)(noop)

    assert normalize_expression(expression) == stored == their_key.expression
    assert list(ours.registry) == [("job", stored)]
    assert stored == " ".join(croniter(expression).expressions)


@pytest.mark.parametrize(
    "expression",
    ["", "every minute", "* * * *", "60 * * * *", "* * 32 * *", "@reboot", "H * * * *"],
)
def test_invalid_expressions_are_rejected_at_registration(expression: str) -> None:
    sm = SchedulerManager(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError) as info:
        sm.schedule("job", expression)
    assert repr(expression) in str(info.value)
    assert not sm.registry
    # PgQueuer refuses the same expressions (with ValueError, which ours also is).
    with pytest.raises(ValueError):
        pgqueuer.SchedulerManager(queries=None).schedule("job", expression)
    pgq = PgQueuer.in_memory()
    with pytest.raises(ConfigurationError, match="invalid cron expression"):
        pgq.schedule("job", expression)


def test_a_pair_registers_once_per_process() -> None:
    sm = SchedulerManager(None)  # type: ignore[arg-type]
    sm.schedule("job", "@hourly")(noop)
    with pytest.raises(ConfigurationError, match="already registered"):
        sm.schedule("job", "0 * * * *")  # the same pair once normalised
    sm.schedule("job", "30 * * * *")(noop)
    sm.schedule("other", "@hourly")(noop)
    assert sorted(sm.registry) == [("job", "0 * * * *"), ("job", "30 * * * *"),
                                   ("other", "0 * * * *")]


def test_context_is_detected_from_the_annotation() -> None:
    sm = SchedulerManager(None)  # type: ignore[arg-type]

    @sm.schedule("with_context", "* * * * *")
    def with_context(schedule: Schedule, ctx: ScheduleContext) -> None: ...

    @sm.schedule("without", "* * * * *")
    async def without(schedule: Schedule) -> None: ...

    @sm.schedule("forced", "* * * * *", accepts_context=True)
    def forced(schedule, ctx):  # type: ignore[no-untyped-def]
        ...

    params = {key[0]: ex.parameters for key, ex in sm.registry.items()}
    assert params["with_context"].accepts_context and not params["without"].accepts_context
    assert params["forced"].accepts_context
    assert sm.registry[("without", "* * * * *")].is_async
    assert not sm.registry[("with_context", "* * * * *")].is_async


# -- registration in the database ----------------------------------------------------------


def test_one_row_per_pair_whoever_registers_it(dsn: str, queries: Queries) -> None:
    # Ours twice, once through an alias, from two managers.
    register_only(queries, lambda sm: sm.schedule("hourly", "@hourly")(noop))
    register_only(queries, lambda sm: sm.schedule("hourly", "0 * * * *")(noop))
    # PgQueuer's own registration of the same pair, and of a pair it registers first.
    pgqueuer_registers(dsn, "hourly", "@hourly")
    pgqueuer_registers(dsn, "daily", "0 0 * * *")
    register_only(queries, lambda sm: sm.schedule("daily", "@daily")(noop))

    found = sorted((s.entrypoint, s.expression, s.status) for s in rows(queries))
    assert found == [("daily", "0 0 * * *", "queued"), ("hourly", "0 * * * *", "queued")]
    hourly = row(queries, "hourly")
    # next_run is the next whole hour, computed from the client's clock.
    assert hourly.next_run.minute == hourly.next_run.second == 0
    assert hourly.next_run - hourly.created <= timedelta(hours=1)


@pytest.mark.parametrize("clean_old", [True, False])
def test_clean_old_deletes_old_rows_of_the_registered_entrypoints(
    queries: Queries, clean_old: bool
) -> None:
    queries.insert_schedule({
        ("report", "0 0 * * *"): timedelta(hours=1),
        ("report", "0 12 * * *"): timedelta(hours=1),
        ("other", "0 0 * * *"): timedelta(hours=1),
    })
    register_only(
        queries, lambda sm: sm.schedule("report", "*/5 * * * *", clean_old=clean_old)(noop)
    )
    found = {(s.entrypoint, s.expression) for s in rows(queries)}
    old = {("report", "0 0 * * *"), ("report", "0 12 * * *")}
    expected = {("report", "*/5 * * * *"), ("other", "0 0 * * *")}
    assert found == (expected if clean_old else expected | old)


# -- running schedules ---------------------------------------------------------------------


def test_a_due_schedule_runs_and_is_released(queries: Queries) -> None:
    sm = SchedulerManager(queries)
    runs: list[tuple[Schedule, str]] = []

    @sm.schedule("tick", EVERY_SECOND)
    def tick(schedule: Schedule) -> None:
        runs.append((schedule, threading.current_thread().name))

    with scheduler_running(sm):
        wait_for(lambda: runs, timeout=10)
        released = wait_for(lambda: (r := row(queries, "tick")).last_run and r, timeout=10)
    claimed, thread_name = runs[0]
    assert claimed.status == "picked" and claimed.entrypoint == "tick"
    assert thread_name == f"pgqueue_sync-schedule-{claimed.id}"
    assert released.status == "queued"
    # The claim moved next_run to the following second, truncated.
    assert claimed.next_run.microsecond == 0
    assert abs(claimed.next_run - claimed.updated) <= timedelta(seconds=1)


def test_a_crashed_runners_schedule_is_claimed_after_the_stale_window(
    queries: Queries, conn: psycopg.Connection[Any]
) -> None:
    sm = SchedulerManager(queries)
    ticks: list[int] = []
    nightly = threading.Event()
    # The ticker keeps the poll cadence at about a second (the nightly one alone
    # would poll again only before 03:00).
    sm.schedule("ticker", EVERY_SECOND)(lambda schedule: ticks.append(1))
    sm.schedule("nightly", "0 3 * * *")(lambda schedule: nightly.set())
    register_only(queries, lambda other: other.schedule("nightly", "0 3 * * *")(noop))
    # Another runner claimed "nightly" and died: picked, next_run far ahead.
    set_schedules(conn, "status = 'picked', heartbeat = NOW() - interval '25 seconds', "
                  "next_run = NOW() + interval '1 day'", "nightly")

    with scheduler_running(sm):
        wait_for(lambda: len(ticks) >= 2, timeout=10)  # two polls at least since then
        assert not nightly.is_set()  # a 25 s old heartbeat is not stale yet
        set_schedules(conn, "heartbeat = NOW() - interval '31 seconds'", "nightly")
        assert nightly.wait(10), "the stale schedule was not claimed"
        released = wait_for(lambda: (r := row(queries, "nightly")).status == "queued" and r)
    assert released.last_run is not None
    # Cron runs in UTC; psycopg returns the session's time zone, which follows the server.
    next_utc = released.next_run.astimezone(timezone.utc)
    assert next_utc.hour == 3 and next_utc.minute == 0


def test_a_schedule_claimed_again_while_running_here_does_not_start_twice(
    queries: Queries,
    conn: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sm = SchedulerManager(queries)
    started: list[Schedule] = []
    release = threading.Event()

    @sm.schedule("slow", EVERY_SECOND)
    def slow(schedule: Schedule) -> None:
        started.append(schedule)
        release.wait(20)

    sm.schedule("ticker", EVERY_SECOND)(noop)  # keeps polling at about a second
    with scheduler_running(sm):
        wait_for(lambda: started, timeout=10)
        # As if this process's heartbeats had not reached the database for 30 s.
        monkeypatch.setattr(queries, "update_schedule_heartbeat", lambda ids: None)
        set_schedules(conn, "heartbeat = NOW() - interval '31 seconds'", "slow")
        wait_for(lambda: row(queries, "slow").next_run > started[0].next_run, timeout=10)
        assert len(started) == 1
        release.set()
        wait_for(lambda: row(queries, "slow").status == "queued")
    assert any("still running here" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_long_running_schedule_keeps_its_heartbeat(queries: Queries, kind: str) -> None:
    sm = SchedulerManager(queries)
    started, release = threading.Event(), threading.Event()

    if kind == "sync":
        @sm.schedule("long", EVERY_SECOND)
        def long_sync(schedule: Schedule) -> None:
            started.set()
            release.wait(20)
    else:
        @sm.schedule("long", EVERY_SECOND)
        async def long_async(schedule: Schedule) -> None:
            started.set()
            while not release.is_set():
                await asyncio.sleep(0.02)

    with scheduler_running(sm):
        assert started.wait(10)
        first = row(queries, "long")
        assert first.status == "picked"
        assert sm.active_heartbeat_ids == {first.id}
        later = wait_for(
            lambda: (r := row(queries, "long")).heartbeat >= first.heartbeat
            + timedelta(seconds=2) and r,
            timeout=10,
        )
        assert later.status == "picked" and later.last_run == first.last_run
        release.set()
        done = wait_for(lambda: (r := row(queries, "long")).status == "queued" and r)
        assert done.last_run is not None
        wait_for(lambda: not sm.active_heartbeat_ids)


def test_shutdown_timeout_releases_schedules_still_running(queries: Queries) -> None:
    sm = SchedulerManager(queries)
    started: set[str] = set()
    cancelled = threading.Event()
    never = threading.Event()

    @sm.schedule("stuck_sync", EVERY_SECOND)
    def stuck_sync(schedule: Schedule) -> None:
        started.add("sync")
        never.wait(30)

    @sm.schedule("stuck_async", EVERY_SECOND)
    async def stuck_async(schedule: Schedule) -> None:
        started.add("async")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    try:
        with scheduler_running(sm, shutdown_timeout=0.2) as thread:
            wait_for(lambda: started == {"sync", "async"}, timeout=10)
            begun = time.monotonic()
            sm.shutdown.set()
            thread.join(10)
            assert not thread.is_alive()
            assert time.monotonic() - begun < 5
        assert cancelled.is_set()
        assert {(s.entrypoint, s.status) for s in rows(queries)} == {
            ("stuck_sync", "queued"), ("stuck_async", "queued")
        }
        assert all(s.last_run is not None for s in rows(queries))
    finally:
        never.set()


def test_a_failing_schedule_is_logged_and_released(
    queries: Queries, caplog: pytest.LogCaptureFixture
) -> None:
    sm = SchedulerManager(queries)
    calls: list[int] = []

    @sm.schedule("flaky", EVERY_SECOND)
    def flaky(schedule: Schedule) -> None:
        calls.append(1)
        raise RuntimeError("flaky failed")

    with scheduler_running(sm):
        wait_for(lambda: len(calls) >= 2, timeout=10)  # released, then claimed again
    assert any("flaky" in r.getMessage() and r.exc_info for r in caplog.records)


# -- several schedulers --------------------------------------------------------------------


class SchedulerProcess:
    """One ``tests.sched_apps.ticker`` child; its output goes to a file under tmp_path."""

    def __init__(self, dsn: str, events: Path, log_path: Path, api: str) -> None:
        self.log_path = log_path
        argv = [sys.executable, "-m", "tests.sched_apps.ticker", "--dsn", dsn,
                "--events", str(events), "--api", api]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ),
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def started(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"scheduler exited with {self.proc.returncode}:\n{self.log()}")
        return "scheduler started" in self.log()

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a grace period; the exit status of a clean stop."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None


def read_runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_never_twice(runs: list[dict[str, Any]]) -> None:
    """Each claim set a distinct next_run, and no two runs overlapped in time."""
    next_runs = [r["next_run"] for r in runs]
    assert len(next_runs) == len(set(next_runs)), f"a due schedule ran twice: {runs}"
    ordered = sorted(runs, key=lambda r: r["start"])
    for before, after in zip(ordered, ordered[1:], strict=False):
        assert before["end"] <= after["start"], f"overlapping runs: {before} {after}"


def test_a_due_schedule_runs_once_across_three_processes(
    dsn: str, queries: Queries, tmp_path: Path
) -> None:
    events = tmp_path / "runs.jsonl"
    procs: list[SchedulerProcess] = []
    try:
        for i, api in enumerate(("sm", "sm", "pgq")):  # the facade, schedules only, too
            procs.append(SchedulerProcess(dsn, events, tmp_path / f"sched-{i}.log", api))
        for proc in procs:
            wait_for(proc.started, timeout=BOOT_TIMEOUT, interval=0.05)
        # Every process polls at the same instants (whole seconds + 1 s), so each of
        # these runs was contended by all three claims.
        wait_for(lambda: len(read_runs(events)) >= 3, timeout=20, interval=0.05)
    finally:
        statuses = [proc.stop() for proc in procs]
    assert statuses == [0, 0, 0], "\n".join(p.log() for p in procs)
    runs = read_runs(events)
    [schedule] = rows(queries)
    assert (schedule.entrypoint, schedule.expression) == ("tick", EVERY_SECOND)
    assert {r["id"] for r in runs} == {schedule.id}
    assert_never_twice(runs)
    assert schedule.status == "queued"  # every process released what it ran


@pytest.mark.interop
def test_pgqueuer_and_our_schedulers_never_run_one_due_schedule_twice(
    dsn: str, tmp_path: Path
) -> None:
    runs: list[dict[str, Any]] = []
    lock = threading.Lock()

    def note(who: str, schedule: Any, start: float) -> None:
        with lock:
            runs.append({"who": who, "next_run": schedule.next_run.isoformat(),
                         "start": start, "end": time.time()})

    async def theirs(schedule: Any) -> None:
        start = time.time()
        await asyncio.sleep(0.2)
        note("pgqueuer", schedule, start)

    def register_theirs(sm: Any) -> None:
        sm.schedule("tick", EVERY_SECOND)(theirs)

    with contextlib.ExitStack() as stack:
        ours = []
        for i in range(2):
            conn = stack.enter_context(psycopg.connect(dsn, autocommit=True))
            sm = SchedulerManager(Queries(SyncPsycopgDriver(conn), settings=DBSettings()))

            def mine(schedule: Schedule, who: str = f"ours-{i}") -> None:
                start = time.time()
                time.sleep(0.2)
                note(who, schedule, start)

            sm.schedule("tick", EVERY_SECOND)(mine)
            ours.append(sm)
        for sm in ours:
            stack.enter_context(scheduler_running(sm))
        stack.enter_context(PgQueuerScheduler(dsn, register_theirs))
        wait_for(lambda: len(runs) >= 3, timeout=20)
    assert_never_twice(runs)
    with psycopg.connect(dsn, autocommit=True) as conn:
        queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
        assert [(s.entrypoint, s.expression, s.status) for s in rows(queries)] == [
            ("tick", EVERY_SECOND, "queued")
        ]


# -- the facade ----------------------------------------------------------------------------


def test_pgqueuer_run_runs_jobs_and_schedules_sharing_resources(dsn: str) -> None:
    resources: dict[str, Any] = {}
    seen: dict[str, Any] = {}
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool, resources=resources)

        @pgq.entrypoint("job")
        def job(job: Job, ctx: Context) -> None:
            seen["job"] = ctx.resources

        @pgq.schedule("sync_tick", EVERY_SECOND)
        def sync_tick(schedule: Schedule, ctx: ScheduleContext) -> None:
            ctx.resources["written by a schedule"] = True
            seen["sync"] = ctx.resources

        @pgq.schedule("async_tick", EVERY_SECOND)
        async def async_tick(schedule: Schedule, ctx: ScheduleContext) -> None:
            seen["async"] = (ctx.resources, threading.current_thread().name)

        with running(pgq):
            wait_for(lambda: any(t.name == "pgqueue_sync-scheduler"
                                 for t in threading.enumerate()))
            pgq.queries.enqueue("job", None)
            wait_for(lambda: len(seen) == 3, timeout=10)
    assert seen["job"] is resources and seen["sync"] is resources
    assert seen["async"] == (resources, "pgqueue_sync-scheduler-event-loop")
    assert resources["written by a schedule"] is True
    assert pgq.sm.resources is pgq.qm.resources is resources
    assert pgq.sm.shutdown is pgq.qm.shutdown is pgq.shutdown


def test_pgqueuer_run_with_only_schedules_runs_only_the_scheduler(dsn: str) -> None:
    ran = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.schedule("tick", EVERY_SECOND)(lambda schedule: ran.set())
        with running(pgq):
            assert ran.wait(10)
            names = {t.name for t in threading.enumerate()}
    assert "pgqueue_sync-schedule-heartbeat" in names
    assert not {"pgqueue_sync-listener", "pgqueue_sync-flusher", "pgqueue_sync-scheduler"} & names


def test_pgqueuer_run_fails_fast_when_the_scheduler_fails(dsn: str) -> None:
    armed, handled = threading.Event(), threading.Event()

    class Exploding(ScheduleExecutor):
        def next_in(self) -> timedelta:
            if armed.is_set():
                raise RuntimeError("scheduler boom")
            return super().next_in()

    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("job")(lambda job: handled.set())
        pgq.schedule("tick", EVERY_SECOND, executor_factory=Exploding)(noop)
        with pytest.raises(RuntimeError, match="scheduler boom"):
            with running(pgq) as thread:
                pgq.queries.enqueue("job", None)
                assert handled.wait(10)  # the worker runs
                armed.set()
                thread.join(15)
                assert not thread.is_alive(), "run() did not stop after the scheduler failed"
        assert pgq.shutdown.is_set()


def test_pgqueuer_run_fails_fast_when_the_worker_fails(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = threading.Event()
    with pool_for(dsn) as pool:
        pgq = make_pgq(pool)
        pgq.entrypoint("job")(lambda job: None)
        pgq.schedule("tick", EVERY_SECOND)(lambda schedule: ran.set())

        def failing_worker(**options: Any) -> None:
            assert ran.wait(10), "the scheduler did not run"
            raise RuntimeError("worker boom")

        monkeypatch.setattr(pgq.qm, "run", failing_worker)
        began = time.monotonic()
        with pytest.raises(RuntimeError, match="worker boom"):
            pgq.run()
        assert time.monotonic() - began < 15
        assert not any(t.name == "pgqueue_sync-scheduler" for t in threading.enumerate())
        with psycopg.connect(dsn, autocommit=True) as conn:
            queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
            assert row(queries, "tick").status == "queued"


def test_pgqueuer_run_validates_worker_options_before_starting_the_scheduler() -> None:
    pgq = PgQueuer.in_memory()
    pgq.entrypoint("job")(lambda job: None)
    pgq.schedule("tick", EVERY_SECOND)(noop)
    with pytest.raises(ConfigurationError, match="batch_size"):
        pgq.run(batch_size=0)
    assert not pgq.shutdown.is_set()


def test_schedules_run_on_the_in_memory_adapter() -> None:
    pgq = PgQueuer.in_memory()
    ran = threading.Event()
    pgq.schedule("tick", EVERY_SECOND)(lambda schedule: ran.set())
    with running(pgq):
        assert ran.wait(10)
    [schedule] = pgq.queries.peek_schedule()
    assert schedule.last_run is not None
