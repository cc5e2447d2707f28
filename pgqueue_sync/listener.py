"""The LISTEN thread: one dedicated autocommit connection, a select() loop, reconnects.

A notification is only a hint: it wakes the dispatcher, and the ``SKIP LOCKED``
claim decides who gets a job. Notifications sent while the connection was down
are lost, so every reconnect also asks the dispatcher to poll.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from .models import AnyEvent, parse_event

logger = logging.getLogger(__name__)

#: Longest single select() wait, so stop() is noticed promptly.
SELECT_TIMEOUT = 1.0
#: Reconnect backoff: first delay, cap, and growth factor.
RECONNECT_INITIAL_DELAY = 0.1
RECONNECT_MAX_DELAY = 5.0
RECONNECT_BACKOFF = 2.0
STOP_TIMEOUT = 5.0

ConnectionFactory = Callable[[], "psycopg.Connection[Any]"]


class Listener:
    """Receives queue events on ``channel`` in a named thread and hands them to callbacks.

    ``on_event`` runs on the listener thread and must not block. ``on_reconnect``
    runs after every successful reconnect (not after the first connect).
    ``on_failure`` runs each time the connection is found broken.
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
    ) -> None:
        self._connect = connect
        self.channel = channel
        self._on_event = on_event
        self._on_reconnect = on_reconnect
        self._on_failure = on_failure
        self._stop = threading.Event()
        # A self-pipe in the select() set lets stop() interrupt a wait at once.
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        """Connect and LISTEN on the calling thread (errors raise here), then start the loop."""
        self._conn = self._open()
        self.connected.set()
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the loop and close the connection; bounded by ``timeout``."""
        self._stop.set()
        try:
            self._wakeup_w.send(b"x")
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("listener thread did not stop within %.1fs", timeout)
        self._close()
        self._wakeup_r.close()
        self._wakeup_w.close()

    def _open(self) -> psycopg.Connection[Any]:
        conn = self._connect()
        if not conn.autocommit:
            conn.close()
            raise ValueError("the LISTEN connection must be in autocommit mode")
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        return conn

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._wait_once()
            except (psycopg.Error, OSError, ValueError) as exc:
                self.connected.clear()
                logger.warning("listener connection lost (%s); reconnecting", exc)
                self._on_failure(exc)
                self._close()
                if self._reconnect():
                    self._on_reconnect()

    def _wait_once(self) -> None:
        conn = self._conn
        if conn is None:
            raise psycopg.OperationalError("no listener connection")
        fileno = conn.fileno()
        wakeup = self._wakeup_r.fileno()
        readable, _, _ = select.select([fileno, wakeup], [], [], SELECT_TIMEOUT)
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
        self._on_event(event)

    def _reconnect(self) -> bool:
        delay = RECONNECT_INITIAL_DELAY
        while not self._stop.wait(delay):
            try:
                self._conn = self._open()
            except (psycopg.Error, OSError) as exc:
                logger.warning("listener reconnect failed (%s); retrying in %.1fs", exc, delay)
                delay = min(delay * RECONNECT_BACKOFF, RECONNECT_MAX_DELAY)
                continue
            self.connected.set()
            logger.info("listener reconnected to channel %r", self.channel)
            return True
        return False

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass
