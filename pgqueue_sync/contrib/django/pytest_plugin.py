"""pytest fixtures for Django projects using pgqueue_sync (registered as a ``pytest11`` plugin).

Fixtures (each imports Django only when a test uses it, so the plugin is
harmless in projects without Django or pytest-django):

``pgqueue_jobs``
    :func:`~.testing.capture_jobs` for the test: jobs are recorded, not written.
``pgqueue_eager``
    :func:`~.testing.eager_jobs` for the test; ``@pytest.mark.pgqueue_eager(
    on_commit=True, propagate=False)`` sets its arguments.
``pgqueue_drain``
    the :func:`~.testing.drain` function (needs the ``db`` fixture, requested
    for you): run the test's queued jobs on its own connection.
``pgqueue_truncate``
    empties the queue's tables (queue, log, statistics, schedules, results)
    before and after a ``transaction=True`` test: Django's flush skips them.
``pgqueue_worker``
    a callable running the real threaded worker in ``drain`` mode until the
    queue is empty (needs ``transactional_db`` and truncates, both requested
    for you).

Example::

    @pytest.mark.django_db
    def test_checkout_sends_invoice(client, pgqueue_drain):
        client.post("/checkout/")
        assert pgqueue_drain().counts == {"successful": 1}
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ...app import PgQueuer
    from .testing import CapturedJobs, DrainReport, EagerJobs

#: Seconds :func:`pgqueue_worker` waits for the worker to drain by default.
WORKER_TIMEOUT = 30.0
#: ``pgq_sync worker`` settings that are also ``PgQueuer.run()`` options.
_RUN_OPTIONS = ("batch_size", "dequeue_timeout", "heartbeat_timeout", "max_concurrent_tasks",
                "shutdown_timeout", "shutdown_on_listener_failure", "concurrency")
_TESTING = "pgqueue_sync.contrib.django.testing"
_TABLES = ("queue_table", "queue_table_log", "statistics_table", "schedules_table",
           "results_table")
_PRESENT = ("SELECT name FROM unnest(%(names)s::text[]) AS name "
            "WHERE to_regclass(name) IS NOT NULL")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "pgqueue_eager(on_commit=False, propagate=True): arguments of the pgqueue_eager fixture",
    )


@pytest.fixture(autouse=True)
def _pgqueue_reset_test_modes() -> Iterator[None]:
    """Clear what ``PGQUEUE_SYNC["TEST_MODE"]`` recorded, after each test that loaded it."""
    yield
    testing = sys.modules.get(_TESTING)  # never import Django for tests that did not
    if testing is not None:
        testing.reset_settings_modes()


@pytest.fixture
def pgqueue_jobs() -> Iterator[CapturedJobs]:
    """Capture the test's enqueues (nothing reaches the database); see ``capture_jobs``."""
    from .testing import capture_jobs

    with capture_jobs() as jobs:
        yield jobs


@pytest.fixture
def pgqueue_eager(request: pytest.FixtureRequest) -> Iterator[EagerJobs]:
    """Run the test's jobs at enqueue (or commit); see ``eager_jobs`` and the marker."""
    from .testing import eager_jobs

    marker = request.node.get_closest_marker("pgqueue_eager")
    kwargs = dict(marker.kwargs) if marker is not None else {}
    with eager_jobs(**kwargs) as runs:
        yield runs


@pytest.fixture
def pgqueue_drain(db: None) -> Callable[..., DrainReport]:
    """The ``drain`` function: claim and run queued jobs on the test's own connection."""
    from .testing import drain

    return drain


@pytest.fixture
def pgqueue_truncate(transactional_db: None) -> Iterator[None]:
    """Empty the queue's tables before and after the test (for ``transaction=True`` tests)."""
    truncate_queue_tables()
    yield
    truncate_queue_tables()


@pytest.fixture
def pgqueue_worker(transactional_db: None, pgqueue_truncate: None) -> Callable[..., PgQueuer]:
    """A callable running the Django worker in drain mode; see :func:`run_worker`."""
    return run_worker


def truncate_queue_tables(using: str | None = None) -> None:
    """TRUNCATE those of the queue's tables that exist, on Django's connection for ``using``.

    Blocks for two statements; outside ``atomic()`` they commit at once.
    """
    from psycopg import sql

    from .conf import get_settings
    from .producer import get_queries

    names = get_settings().db_settings
    tables = {names.ident(t).as_string(): names.ident(t) for t in _TABLES}
    driver = get_queries(using).driver
    rows = driver.fetch(sql.SQL(_PRESENT), {"names": list(tables)})
    present = [tables[row["name"]] for row in rows]
    if present:
        driver.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(present)))


def run_worker(*args: str, timeout: float = WORKER_TIMEOUT, **run_options: Any) -> PgQueuer:
    """Run the Django worker (``worker.create_worker(args)``) in drain mode; return it.

    Blocks until no eligible job remains (``mode="drain"``), running the
    worker in its own thread so that no signal handlers are installed.
    ``args`` are the worker's arguments (``"-q", "emails"``,
    ``"--no-schedules"``, ...); ``run_options`` are ``PgQueuer.run()``
    options, over ``PGQUEUE_SYNC["WORKER"]``. The worker has its own
    connections, so it sees only committed jobs: use it in
    ``transaction=True`` tests. Raises ``TimeoutError`` (after asking the
    worker to stop) when it is still running after ``timeout`` seconds, and
    re-raises the worker's own failure.
    """
    from .conf import get_settings
    from .worker import create_worker

    settings = get_settings().worker
    options = {**{k: settings[k] for k in _RUN_OPTIONS if k in settings},
               "mode": "drain", **run_options}
    if "concurrency" in options and "--concurrency" not in args:
        args = (*args, "--concurrency", str(options["concurrency"]))
    with create_worker(args) as pgq:
        _run_in_thread(pgq, options, timeout)
    return pgq


def _run_in_thread(pgq: PgQueuer, options: dict[str, Any], timeout: float) -> None:
    failures: list[BaseException] = []

    def target() -> None:
        try:
            pgq.run(**options)
        except BaseException as exc:  # re-raised in the test's thread
            failures.append(exc)

    thread = threading.Thread(target=target, name="pgqueue_worker-fixture", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pgq.shutdown.set()
        thread.join(float(options.get("shutdown_timeout") or WORKER_TIMEOUT) + 5.0)
        raise TimeoutError(f"the worker did not drain the queue within {timeout:g}s")
    if failures:
        raise failures[0]
