"""``CompletionWatcher``: block until jobs reach a final status, PgQueuer's name in sync form.

Works from any process, with or without a worker in it. A job's status is its
latest row in the log table (:meth:`Queries.job_status`). The watcher LISTENs
on the queue's channel: the queue trigger notifies on each statement that
deletes rows, which is how successful, failed (``exception``), cancelled and
deleted jobs leave the queue, so those are seen within a few milliseconds.
Holding a job as ``failed`` is an UPDATE, and PgQueuer's trigger never
notifies on UPDATE: held jobs, and anything a lost notification hides, are
found by a safety poll every ``refresh_interval``.

Threads: ``pgqueue_sync-completion`` runs the status queries (at most one at a
time, bursts of notifications coalesced over ``debounce``), and
``pgqueue_sync-completion-listener`` receives notifications
(:class:`~pgqueue_sync.worker.listener.Listener`, reconnecting on its own).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any

import psycopg

from .drivers.base import Driver
from .drivers.psycopg import SyncPsycopgDriver, connect
from .errors import CompletionTimeout, ConfigurationError, PgqException
from .models import AnyEvent, TableChangedEvent, parse_event
from .queries import Queries
from .results import JobResult, Results
from .settings import DBSettings
from .types import JOB_STATUS, TERMINAL_STATUSES, JobId
from .worker.listener import Listener
from .worker.threads import JOIN_TIMEOUT

logger = logging.getLogger(__name__)

#: Safety-poll interval: the longest a missed notification (or a hold) stays unseen.
REFRESH_INTERVAL = timedelta(seconds=1)
#: Notifications arriving within this window share one status query.
DEBOUNCE = timedelta(milliseconds=50)
#: Backoff cap after a failed status query (seconds).
ERROR_BACKOFF_MAX = 5.0

_Future = concurrent.futures.Future


class CompletionWatcher:
    """Waits for jobs to finish; thread-safe, usable as a context manager.

    ``connection`` is a conninfo string or URL (the watcher opens and closes
    its own two connections), a psycopg connection, a
    :class:`~pgqueue_sync.drivers.Driver` or a :class:`Queries` (these are
    borrowed and left open; LISTEN gets a connection of its own, opened from
    the driver's settings). ``queries=`` (PgQueuer's keyword) takes precedence
    over ``connection`` for both. ``settings`` default to the queries' or the
    process-wide ``PGQUEUER_*`` names.

    A job is final once its latest log status is ``successful``, ``exception``,
    ``canceled`` or ``deleted``, as for PgQueuer's watcher, or ``failed`` (held
    with ``on_failure="hold"``, waiting for ``pgq-sync requeue``) unless
    ``failed_is_terminal=False``, which waits through holds as PgQueuer does.
    A job that was never enqueued, whose log rows were deleted, or that was
    removed by a ``TRUNCATE`` (``clear_queue()`` without entrypoints, which
    logs nothing) never becomes final: waits end in :class:`CompletionTimeout`.

    Example::

        with CompletionWatcher(dsn) as watcher:
            status = watcher.wait_for(job_id, timeout=30)
            statuses = watcher.wait_for_all(ids, timeout=60)

    The constructor connects and raises
    :class:`~pgqueue_sync.errors.ConnectionFailed` if it cannot.
    """

    def __init__(
        self,
        connection: str | psycopg.Connection[Any] | Driver | Queries,
        *,
        queries: Queries | None = None,
        settings: DBSettings | None = None,
        refresh_interval: timedelta | float = REFRESH_INTERVAL,
        debounce: timedelta | float = DEBOUNCE,
        failed_is_terminal: bool = True,
    ) -> None:
        self.refresh_interval = _seconds("refresh_interval", refresh_interval, positive=True)
        self.debounce = _seconds("debounce", debounce)
        self.terminal: frozenset[JOB_STATUS] = (
            TERMINAL_STATUSES | {"failed"} if failed_is_terminal else TERMINAL_STATUSES
        )
        self._owned: list[psycopg.Connection[Any]] = []
        # PgQueuer's signature passes a driver and `queries=`; the queries suffice.
        self.queries, listen_connect = self._resolve(queries or connection, settings)
        self.settings = self.queries.settings
        self._lock = threading.Lock()
        self._waiters: dict[JobId, list[_Future[JOB_STATUS]]] = {}
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._stop_listening: Callable[[], None] = lambda: None
        try:
            self._stop_listening = self._listen(listen_connect)
        except BaseException:
            self._close_owned()
            raise
        self._thread = threading.Thread(
            target=self._run, name="pgqueue_sync-completion", daemon=True
        )
        self._thread.start()

    def wait_for(self, job_id: int, timeout: timedelta | float | None) -> JOB_STATUS:
        """Block until ``job_id`` is final and return its status.

        ``timeout`` (seconds or ``timedelta``) is required; pass ``None`` to
        wait without limit. Raises :class:`CompletionTimeout` (a
        ``TimeoutError``) naming the job when time runs out, and
        :class:`PgqException` when the watcher is closed meanwhile.
        """
        return self.wait_for_all([job_id], timeout)[JobId(int(job_id))]

    def wait_for_all(
        self, ids: Iterable[int], timeout: timedelta | float | None
    ) -> dict[JobId, JOB_STATUS]:
        """Block until every job in ``ids`` is final; their statuses in input order.

        On timeout raises :class:`CompletionTimeout` whose ``pending`` lists
        the jobs not final yet and whose ``done`` holds those that were.
        """
        seconds = _timeout(timeout)
        futures = self._watch(ids)
        _, not_done = concurrent.futures.wait(futures.values(), seconds)
        if not_done:
            self._unwatch(futures)
            done = {i: f.result() for i, f in futures.items() if f.done() and not f.exception()}
            pending = [i for i, f in futures.items() if i not in done]
            self._raise_if_closed()
            raise CompletionTimeout(pending, seconds, done=done)
        return {job_id: future.result() for job_id, future in futures.items()}

    def as_completed(
        self, ids: Iterable[int], timeout: timedelta | float | None
    ) -> Iterator[tuple[JobId, JOB_STATUS]]:
        """Yield ``(job_id, status)`` for the jobs in ``ids`` as they become final.

        ``timeout`` bounds the whole iteration; when it runs out the iterator
        raises :class:`CompletionTimeout` listing the jobs still pending.
        """
        seconds = _timeout(timeout)
        futures = self._watch(ids)
        by_future = {future: job_id for job_id, future in futures.items()}
        seen: set[JobId] = set()
        try:
            for future in concurrent.futures.as_completed(by_future, seconds):
                seen.add(by_future[future])
                yield by_future[future], future.result()
        except concurrent.futures.TimeoutError:
            self._raise_if_closed()
            pending = [i for i in futures if i not in seen]
            raise CompletionTimeout(pending, seconds) from None
        finally:
            self._unwatch(futures)

    def watch(self, job_id: int) -> concurrent.futures.Future[JOB_STATUS]:
        """A future that resolves to the final status of ``job_id``.

        Like PgQueuer's ``wait_for``, which returns an asyncio future. Wait on
        it with a timeout (``future.result(timeout)``); cancel it to stop
        watching. It fails with :class:`PgqException` if the watcher closes.
        """
        future = self._watch([job_id])[JobId(int(job_id))]
        future.add_done_callback(lambda f: self._unwatch({JobId(int(job_id)): f}))
        return future

    def wait_for_result(
        self, job_id: int, timeout: timedelta | float | None
    ) -> JobResult | None:
        """Wait as :meth:`wait_for`, then return the stored result (one more query).

        ``None`` when nothing was stored for the job (its worker did not store
        results, or it was cancelled before it finished). Needs the results
        table (see :mod:`pgqueue_sync.results`).
        """
        self.wait_for(job_id, timeout)
        return Results(self.queries).get_result(job_id)

    def wait_for_results(
        self, ids: Iterable[int], timeout: timedelta | float | None
    ) -> dict[JobId, JobResult | None]:
        """Wait as :meth:`wait_for_all`, then read every stored result in one query."""
        statuses = self.wait_for_all(ids, timeout)
        stored = Results(self.queries).get_results(statuses)
        return {job_id: stored.get(job_id) for job_id in statuses}

    def close(self) -> None:
        """Stop both threads and close owned connections; idempotent.

        Waits still pending fail with :class:`PgqException`.
        """
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake.set()
        self._stop_listening()
        self._thread.join(JOIN_TIMEOUT)
        if self._thread.is_alive():
            logger.warning("completion thread did not stop within %.1fs", JOIN_TIMEOUT)
        with self._lock:
            waiters, self._waiters = self._waiters, {}
        for future in (f for futures in waiters.values() for f in futures):
            if not future.done():
                future.set_exception(PgqException("the completion watcher was closed"))
        self._close_owned()

    def __enter__(self) -> CompletionWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _watch(self, ids: Iterable[int]) -> dict[JobId, _Future[JOB_STATUS]]:
        futures: dict[JobId, _Future[JOB_STATUS]] = {}
        for raw in ids:
            futures.setdefault(JobId(int(raw)), _Future())
        with self._lock:
            self._raise_if_closed()
            for job_id, future in futures.items():
                self._waiters.setdefault(job_id, []).append(future)
        self._wake.set()  # first look at once (after the debounce)
        return futures

    def _unwatch(self, futures: dict[JobId, _Future[JOB_STATUS]]) -> None:
        with self._lock:
            for job_id, future in futures.items():
                waiting = self._waiters.get(job_id)
                if waiting is not None and future in waiting:
                    waiting.remove(future)
                    if not waiting:
                        del self._waiters[job_id]

    def _raise_if_closed(self) -> None:
        if self._closed.is_set():
            raise PgqException("the completion watcher is closed")

    def _run(self) -> None:
        backoff = self.refresh_interval
        while not self._closed.is_set():
            self._wake.wait(self.refresh_interval)  # timing out is the safety poll
            if self._closed.wait(self.debounce):
                return
            self._wake.clear()  # before the query: a later event triggers another
            try:
                self._refresh()
                backoff = self.refresh_interval
            except PgqException as exc:
                logger.warning("completion status query failed (%s); retrying in %.1fs",
                               exc, backoff)
                self._closed.wait(backoff)
                backoff = min(backoff * 2, ERROR_BACKOFF_MAX)

    def _refresh(self) -> None:
        with self._lock:
            ids = list(self._waiters)
        if not ids:
            return
        final = [(i, s) for i, s in self.queries.job_status(ids) if s in self.terminal]
        resolved: list[tuple[_Future[JOB_STATUS], JOB_STATUS]] = []
        with self._lock:
            for job_id, status in final:
                resolved += [(f, status) for f in self._waiters.pop(job_id, [])]
        for future, status in resolved:
            if future.set_running_or_notify_cancel():
                future.set_result(status)

    def _resolve(
        self, connection: object, settings: DBSettings | None
    ) -> tuple[Queries, Callable[[], psycopg.Connection[Any]] | None]:
        if isinstance(connection, str):
            conninfo = connection
            conn = connect(conninfo)
            self._owned.append(conn)
            own = Queries(SyncPsycopgDriver(conn), settings=settings)
            return own, lambda: connect(conninfo)
        if isinstance(connection, psycopg.Connection):
            connection = SyncPsycopgDriver(connection)
        queries: Queries
        if hasattr(connection, "job_status") and hasattr(connection, "driver"):
            queries = connection  # type: ignore[assignment]  # Queries or its in-memory twin
        elif hasattr(connection, "fetch"):
            queries = Queries(connection, settings=settings)  # type: ignore[arg-type]
        else:
            raise ConfigurationError(
                f"CompletionWatcher needs a conninfo string, a psycopg connection, a driver "
                f"or Queries, got {type(connection).__name__}"
            )
        return queries, getattr(queries.driver, "new_connection", None)

    def _listen(
        self, connect_fn: Callable[[], psycopg.Connection[Any]] | None
    ) -> Callable[[], None]:
        driver = self.queries.driver
        if hasattr(driver, "add_listener"):  # the in-memory adapter
            subscribe: Callable[[Callable[[str], None]], Callable[[], None]]
            subscribe = driver.add_listener
            return subscribe(self._on_payload)
        if connect_fn is None:
            logger.warning(
                "%s cannot open a LISTEN connection; completions are seen by polling every "
                "%.1fs", type(driver).__name__, self.refresh_interval,
            )
            return lambda: None
        listener = Listener(
            connect_fn,
            self.settings.channel,
            on_event=self._on_event,
            on_reconnect=self._wake.set,  # notifications sent meanwhile are lost: look again
            name="pgqueue_sync-completion-listener",
        )
        listener.start()
        return listener.stop

    def _on_payload(self, payload: str) -> None:
        event = parse_event(payload)
        if event is not None:
            self._on_event(event)

    def _on_event(self, event: AnyEvent) -> None:
        # Runs on the listener thread: only flag. Inserts never finish a job.
        if (
            isinstance(event, TableChangedEvent)
            and event.operation != "insert"
            and event.table == self.settings.bare_name("queue_table")
        ):
            self._wake.set()

    def _close_owned(self) -> None:
        for conn in self._owned:
            conn.close()
        self._owned.clear()


def _seconds(name: str, value: timedelta | float, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, timedelta | float | int):
        raise ConfigurationError(f"{name} must be a timedelta or seconds, got {value!r}")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0 or (positive and seconds == 0):
        raise ConfigurationError(
            f"{name} must be {'positive' if positive else 'non-negative'}, got {value!r}"
        )
    return seconds


def _timeout(value: timedelta | float | None) -> float | None:
    return None if value is None else _seconds("timeout", value)


__all__ = ["CompletionWatcher"]
