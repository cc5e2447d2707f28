"""The LISTEN thread: one dedicated autocommit connection, a select() loop, reconnects.

A notification is only a hint: it wakes the dispatcher, and the ``SKIP LOCKED``
claim decides who gets a job. Notifications sent while the connection was down
are lost, so every reconnect also asks the dispatcher to poll.

The thread never dies of what it receives or of the server: a payload that
does not parse is logged at DEBUG and dropped, an error in a callback is
logged, and any failure of the connection (or of opening a new one) leads to
a reconnect with backoff, one log line per attempt.
"""

from __future__ import annotations

import functools
import logging
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from ..backoff import Backoff
from ..models import AnyEvent, parse_event

logger = logging.getLogger(__name__)

#: Longest single select() wait, so stop() is noticed promptly.
SELECT_TIMEOUT = 1.0
#: Reconnect backoff: first delay and cap (seconds).
RECONNECT_INITIAL_DELAY = 0.1
RECONNECT_MAX_DELAY = 5.0
STOP_TIMEOUT = 5.0
#: How long start() waits for the first LISTEN before returning (seconds).
START_WAIT = 10.0

ConnectionFactory = Callable[[], "psycopg.Connection[Any]"]


class _ReconnectRequested(Exception):
    """Raised in the loop by :meth:`Listener.reconnect`: the caller logged why."""


class Listener:
    """Receives queue events on ``channel`` in a named thread and hands them to callbacks.

    ``on_event`` runs on the listener thread and must not block. ``on_reconnect``
    runs after every successful reconnect (not after the first connect).
    ``on_failure`` runs each time the connection is found broken.
    ``on_connect`` runs on each new connection before its ``LISTEN`` (a worker
    names its session there); if it raises, that connection is dropped and
    retried like any failed connect.
    """

    def __init__(
        self,
        connect: ConnectionFactory,
        channel: str,
        *,
        on_event: Callable[[AnyEvent], None],
        on_reconnect: Callable[[], None] = lambda: None,
        on_failure: Callable[[BaseException], None] = lambda exc: None,
        name: str = "pgqueue_sync-listener",
        on_connect: Callable[[psycopg.Connection[Any]], object] | None = None,
    ) -> None:
        self._connect = connect
        self._on_connect = on_connect
        self.channel = channel
        self._on_event = on_event
        self._on_reconnect = on_reconnect
        self._on_failure = on_failure
        self._stop = threading.Event()
        # A self-pipe in the select() set lets stop() interrupt a wait at once.
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._reconnect_requested = False
        self.connected = threading.Event()

    def start(self, wait: float = START_WAIT) -> bool:
        """Start the loop, which connects and LISTENs, retrying (with backoff) until it
        can; wait up to ``wait`` seconds for the first LISTEN. Returns whether it
        is listening (if not, it keeps trying in the background)."""
        self._thread.start()
        return self.connected.wait(wait)

    def reconnect(self) -> None:
        """Drop the connection and open a new one (e.g. after a failed health probe)."""
        self._reconnect_requested = True
        self._poke()

    def _poke(self) -> None:
        try:
            self._wakeup_w.send(b"x")
        except OSError:
            pass

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the loop and close the connection; bounded by ``timeout``."""
        self._stop.set()
        self._poke()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("listener thread did not stop within %.1fs", timeout)
        self._close()
        self._wakeup_r.close()
        self._wakeup_w.close()

    def _open(self) -> psycopg.Connection[Any]:
        conn = self._connect()
        try:
            if not conn.autocommit:
                raise ValueError("the LISTEN connection must be in autocommit mode")
            if self._on_connect is not None:
                self._on_connect(conn)
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self) -> None:
        backoff = Backoff(initial=RECONNECT_INITIAL_DELAY, maximum=RECONNECT_MAX_DELAY)
        first = True
        while not self._stop.is_set():
            if self._conn is None:
                if not self._connect_once(backoff, first):
                    continue
                if not first:
                    logger.info("listener reconnected to channel %r", self.channel)
                    self._safely(self._on_reconnect)
                first = False
            try:
                self._wait_once()
            except Exception as exc:  # psycopg, OS, a broken socket: reconnect
                self.connected.clear()
                if isinstance(exc, _ReconnectRequested):
                    logger.debug("listener reconnecting, as requested")
                else:
                    logger.warning("listener connection lost (%s); reconnecting", exc)
                self._safely(functools.partial(self._on_failure, exc))
                self._close()

    def _connect_once(self, backoff: Backoff, first: bool) -> bool:
        try:
            self._conn = self._open()
        except Exception as exc:
            delay = backoff.failure()
            verb = "connect" if first else "reconnect"
            logger.warning("listener %s failed (%s); retrying in %.1fs", verb, exc, delay)
            self._stop.wait(delay)
            return False
        backoff.success()
        self.connected.set()
        return True

    def _wait_once(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if self._reconnect_requested:
            self._reconnect_requested = False
            raise _ReconnectRequested("reconnect requested")
        fileno = conn.fileno()
        wakeup = self._wakeup_r.fileno()
        readable, _, _ = select.select([fileno, wakeup], [], [], SELECT_TIMEOUT)
        if wakeup in readable:
            self._wakeup_r.recv(4096)
        if fileno not in readable:
            return
        pgconn = conn.pgconn
        pgconn.consume_input()
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            raise psycopg.OperationalError("the server closed the listener connection")
        while (notify := pgconn.notifies()) is not None:
            self._dispatch(notify.extra.decode("utf-8", "replace"))

    def _dispatch(self, payload: str) -> None:
        event = parse_event(payload)
        if event is None:
            logger.debug("ignoring unknown or malformed event on %r", self.channel)
            return
        self._safely(lambda: self._on_event(event))

    def _safely(self, callback: Callable[[], object]) -> None:
        try:
            callback()
        except Exception:  # a callback's bug must not take the listener down
            logger.exception("listener callback failed")

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass
