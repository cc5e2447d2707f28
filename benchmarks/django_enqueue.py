"""The Django integration's costs, beside the plain driver and PgQueuer 1.6's sync enqueue.

    python benchmarks/django_enqueue.py [--jobs 2000] [--tasks 2000] [--runs 3] [--drain-only]

Measures, each on a fresh database of the same server:

* single-job enqueue in its own transaction (a view's shape): through Django's
  connection (``contrib.django.enqueue`` inside ``atomic()``), through our
  ``SyncPsycopgDriver`` on a plain autocommit connection, and through
  PgQueuer 1.6's sync ``Queries`` on psycopg (if installed);
* ``Task.enqueue()`` of the Django Tasks backend (two statements: the job and
  its results row);
* draining Django tasks with the real threaded worker (signals, context,
  results; per-task INFO logging quieted as ``manage.py pgq_sync worker``
  does) against draining plain entrypoints doing the same nothing, storing
  their (null) result. The two drains alternate run by run; their ratio is
  the median of the runs' ratios.

Rates are jobs/s, medians of ``--runs``; ratios > 1 mean the first is faster.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import django  # noqa: E402
import psycopg  # noqa: E402
from common import best_of, scratch_database, timed  # noqa: E402
from django.conf import settings  # noqa: E402
from psycopg.conninfo import conninfo_to_dict  # noqa: E402

from pgqueue_sync import DBSettings, Queries, SyncPsycopgDriver  # noqa: E402
from pgqueue_sync.results import Results  # noqa: E402


def configure(dsn: str) -> None:
    params = conninfo_to_dict(dsn)
    backport = not _has("django.tasks")
    settings.configure(
        DATABASES={"default": {
            "ENGINE": "django.db.backends.postgresql", "NAME": params["dbname"],
            "USER": params.get("user", ""), "HOST": params.get("host", ""),
            "PORT": params.get("port", ""), "PASSWORD": params.get("password", ""),
        }},
        INSTALLED_APPS=["django.contrib.contenttypes", "pgqueue_sync.contrib.django",
                        *(["django_tasks"] if backport else [])],
        TASKS={"default": {"BACKEND": "pgqueue_sync.contrib.django.PgQueueSyncBackend"}},
        USE_TZ=True,
    )
    django.setup()


def _has(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def django_single(jobs: int) -> float:
    from django.db import connections, transaction

    from pgqueue_sync.contrib.django import enqueue

    def run() -> None:
        for _ in range(jobs):
            with transaction.atomic():
                enqueue("bench", b"x" * 32)

    rate = jobs / timed(run)
    connections.close_all()
    return rate


def django_autocommit(jobs: int) -> float:
    from django.db import connections

    from pgqueue_sync.contrib.django import enqueue

    rate = jobs / timed(lambda: [enqueue("bench", b"x" * 32) for _ in range(jobs)])
    connections.close_all()
    return rate


def driver_single(dsn: str, jobs: int) -> float:
    # The same shape as a view: one transaction per job, committed by the caller.
    with psycopg.connect(dsn, autocommit=True) as conn:
        queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())

        def run() -> None:
            for _ in range(jobs):
                with conn.transaction():
                    queries.enqueue("bench", b"x" * 32)

        return jobs / timed(run)


def driver_autocommit(dsn: str, jobs: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        queries = Queries(SyncPsycopgDriver(conn), settings=DBSettings())
        return jobs / timed(lambda: [queries.enqueue("bench", b"x" * 32) for _ in range(jobs)])


def pgqueuer_single(dsn: str, jobs: int) -> float | None:
    try:
        from pgqueuer.db import SyncPsycopgDriver as TheirDriver
        from pgqueuer.queries import SyncQueries
    except ImportError:
        return None
    with psycopg.connect(dsn, autocommit=True) as conn:
        queries = SyncQueries(TheirDriver(conn))
        return jobs / timed(lambda: [queries.enqueue("bench", b"x" * 32) for _ in range(jobs)])


def tasks_enqueue(jobs: int) -> float:
    from django.db import connections

    task = _noop_task()
    rate = jobs / timed(lambda: [task.enqueue(i) for i in range(jobs)])
    connections.close_all()
    return rate


def tasks_drain(dsn: str, jobs: int) -> float:
    from pgqueue_sync.contrib.django.backend import register_task_entrypoints
    from pgqueue_sync.contrib.django.worker import quiet_per_task_logging

    task = _noop_task()
    for i in range(jobs):
        task.enqueue(i)
    # As the worker (manage.py pgq_sync worker) does once it registers Tasks
    # queues: Django 6's two INFO lines per task are not logged.
    quiet_per_task_logging()
    return jobs / _drain(dsn, register_task_entrypoints)


def plain_drain(dsn: str, jobs: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        Queries(SyncPsycopgDriver(conn)).enqueue(["plain"] * jobs, [b"1"] * jobs)

    def register(pgq: Any) -> None:
        pgq.entrypoint("plain", store_result=True)(lambda job: None)

    return jobs / _drain(dsn, register)


def _drain(dsn: str, register: Any) -> float:
    from psycopg_pool import ConnectionPool

    from pgqueue_sync import PgQueuer, SyncPsycopgPoolDriver

    with ConnectionPool(dsn, kwargs={"autocommit": True}, min_size=2, max_size=12,
                        open=True) as pool:
        pgq = PgQueuer(SyncPsycopgPoolDriver(pool))
        register(pgq)
        return timed(lambda: pgq.run(mode="drain", dequeue_timeout=0.2))


_TASK: Any = None


def noop(i: int) -> int:
    return i


def _noop_task() -> Any:
    global _TASK
    if _TASK is None:
        from pgqueue_sync.contrib.django._compat import task

        _TASK = task(noop)
        globals()["noop"] = _TASK
    return _TASK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--drain-only", action="store_true",
                        help="measure only the two drains (not the enqueue paths)")
    args = parser.parse_args()
    figures: dict[str, float] = {}
    theirs = None
    with scratch_database() as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            Results(SyncPsycopgDriver(conn), DBSettings()).install()
        configure(dsn)
        if not args.drain_only:
            figures.update({
                "enqueue, Django atomic()": best_of(args.runs, lambda: django_single(args.jobs)),
                "enqueue, driver transaction": best_of(args.runs,
                                                       lambda: driver_single(dsn, args.jobs)),
                "enqueue, Django autocommit": best_of(args.runs,
                                                      lambda: django_autocommit(args.jobs)),
                "enqueue, driver autocommit": best_of(args.runs,
                                                      lambda: driver_autocommit(dsn, args.jobs)),
            })
            theirs = pgqueuer_single(dsn, args.jobs)
            if theirs is not None:
                figures["enqueue, PgQueuer 1.6 sync"] = theirs
            figures["Task.enqueue()"] = best_of(args.runs, lambda: tasks_enqueue(args.tasks))
        # The two drains alternate, so a busy moment of the machine hits both alike;
        # the ratio is the median of the runs' own ratios.
        pairs = [(tasks_drain(dsn, args.tasks), plain_drain(dsn, args.tasks))
                 for _ in range(args.runs)]
        figures["drain Django tasks"] = statistics.median(t for t, _ in pairs)
        figures["drain plain entrypoint"] = statistics.median(p for _, p in pairs)
    for name, rate in figures.items():
        print(f"{name:32} {rate:10,.0f} jobs/s")
    if not args.drain_only:
        atomic = figures["enqueue, Django atomic()"]
        print(f"Django atomic / driver transaction: "
              f"{atomic / figures['enqueue, driver transaction']:.2f}x")
        auto = figures["enqueue, Django autocommit"]
        print(f"Django autocommit / driver autocommit: "
              f"{auto / figures['enqueue, driver autocommit']:.2f}x")
        if theirs is not None:
            print(f"Django autocommit / PgQueuer sync (autocommit): {auto / theirs:.2f}x")
    ratios = ", ".join(f"{t / p:.2f}" for t, p in pairs)
    print(f"task drain / plain drain: {statistics.median(t / p for t, p in pairs):.2f}x "
          f"(median of the runs: {ratios})")


if __name__ == "__main__":
    main()
