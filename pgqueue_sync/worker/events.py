"""The worker's side of LISTEN/NOTIFY: starting its listener, acting on the events it
receives (new work, cancellations, probes), and checking that it still hears them.

A notification is only a hint that wakes the dispatcher. While the listener is
not known to hear this worker's own probe (``poll_only``, a listener that has
not echoed yet, or one behind PgBouncer in transaction mode), the dispatcher
polls every ``poll_interval`` instead (see docs/pgbouncer.md).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .. import options
from ..drivers.psycopg import connect, describe_conninfo
from ..errors import ConfigurationError, DatabaseError, FailingListenerError
from ..models import (
    AnyEvent,
    CancellationEvent,
    HealthCheckEvent,
    TableChangedEvent,
    parse_event,
)
from ..ops import label_worker_session
from ..preflight import in_process
from ..types import Channel, JobId, QueueExecutionMode, QueueManagerId
from .buffers import Heartbeats
from .held import HeldJobs
from .listener import Listener
from .state import FINAL_WAIT_SLICE, RunControl
from .threads import Ticker

if TYPE_CHECKING:
    from ..queries import Queries

logger = logging.getLogger(__name__)

#: What a failed connect of the listener's own DSN (``listen_dsn``) tells the user to check.
LISTEN_DSN_HINT = "check --listen-dsn / PGQUEUE_SYNC_LISTEN_DSN and that the server is running"


class Listening:
    """One worker's listener, its event handling and its health probes.

    ``verified`` is set while the listener is known to hear this worker's
    notifications (its probe echoed); clear, the dispatcher polls every
    ``poll_interval`` instead. ``failures`` counts failed probes in a row;
    ``error`` is set when a failed probe stops the worker
    (``shutdown_on_listener_failure``); ``enabled`` is False with ``poll_only``.
    """

    def __init__(
        self,
        queries: Queries,
        channel: Channel,
        owner: QueueManagerId,
        *,
        held: HeldJobs,
        control: RunControl,
    ) -> None:
        self._queries = queries
        self._channel = channel
        self._owner = owner
        self._held = held
        self._control = control
        self._pending_probes: dict[uuid.UUID, threading.Event] = {}
        self.listener: Listener | None = None
        self.verified = threading.Event()
        self.failures = 0
        self._warned_deaf_listener = False
        self.enabled = True  # False with poll_only: no listener at all
        self.error: FailingListenerError | None = None
        self._health: Ticker | None = None

    def reset(self) -> None:
        """Before a run (``run()`` may be called again on the same worker)."""
        self.error = None
        self.verified.clear()
        self.failures = 0
        self._warned_deaf_listener = False

    def start(self, opts: options.RunOptions) -> Callable[[], None]:
        """Start listening as ``opts`` say (or not at all with ``poll_only``); returns
        the function that stops it."""
        driver = self._queries.driver
        self.listener = None
        self.enabled = not opts.poll_only
        if opts.poll_only:
            logger.info("poll-only: no LISTEN; looking for jobs every %gs",
                        opts.poll_interval.total_seconds())
            return lambda: None
        if in_process(driver):
            subscribe: Callable[[Callable[[str], None]], Callable[[], None]]
            subscribe = driver.add_listener  # type: ignore[attr-defined]
            self.verified.set()  # an in-process fan-out cannot miss a notification
            return subscribe(self._on_payload)
        listener = self.listener = Listener(
            self._listener_connection(opts),
            self._channel,
            on_event=self.on_event,
            on_reconnect=self._on_reconnect,
            on_failure=self._on_lost,
            # Names this worker's own session for 'pgq-sync workers' (ops.py).
            on_connect=functools.partial(label_worker_session, queue_manager_id=self._owner,
                                         settings=self._queries.settings),
        )
        if not listener.start():
            logger.warning("the listener is not connected yet; polling until it is")
        return listener.stop

    def _listener_connection(self, opts: options.RunOptions) -> Callable[[], Any]:
        driver = self._queries.driver
        if opts.listen_dsn is not None:
            logger.info("listener: LISTEN on %s (listen_dsn)", describe_conninfo(opts.listen_dsn))
            return functools.partial(
                connect, opts.listen_dsn, hint=LISTEN_DSN_HINT, prepare_threshold=None
            )
        if hasattr(driver, "new_connection"):
            new_connection: Callable[[], Any] = driver.new_connection
            return new_connection
        raise ConfigurationError(
            f"{type(driver).__name__} cannot open a LISTEN connection; use "
            "SyncPsycopgDriver or SyncPsycopgPoolDriver for workers, or pass listen_dsn "
            "(--listen-dsn) or poll_only (--poll-only)"
        )

    def start_probes(self, opts: options.RunOptions) -> Ticker:
        """Start the ``pgqueue_sync-health`` thread, which probes the listener every
        ``HEALTH_CHECK_INTERVAL``, the first time at once."""
        health = self._health = Ticker(
            lambda: self._probe(opts), options.HEALTH_CHECK_INTERVAL,
            name="pgqueue_sync-health", jitter=0.0,
        ).start()
        # The first probe at once: until it echoes, the dispatcher polls.
        health.wake()
        return health

    def _on_payload(self, payload: str) -> None:
        event = parse_event(payload)
        if event is not None:
            self.on_event(event)

    def on_event(self, event: AnyEvent) -> None:
        """Act on an event received on the channel (on the listener thread)."""
        if isinstance(event, TableChangedEvent):
            # insert: new work; delete: a freed seat; update: a retry, requeue,
            # hold or hand-back (sent by us and by PgQueuer 2).
            self._control.wake.set()
        elif isinstance(event, CancellationEvent):
            self._cancel_local(event.ids)
        elif isinstance(event, HealthCheckEvent):
            probe = self._pending_probes.pop(event.id, None)
            if probe is not None:
                probe.set()

    def _cancel_local(self, ids: list[JobId]) -> None:
        for context in self._held.contexts_of(ids):
            context.cancellation.cancel()

    def _on_reconnect(self) -> None:
        # Notifications sent while it was down are lost: poll now, and end any
        # database backoff (the server is evidently back).
        self._control.wake.set()
        self._control.recovered.set()
        # Trust the new connection once it echoes a probe: probe now.
        if self._health is not None:
            self._health.wake()

    def _on_lost(self, exc: BaseException) -> None:
        # Until the reconnected listener echoes a probe, poll every poll_interval.
        self.verified.clear()
        self._control.wake.set()

    def healthy(self, heartbeats: Heartbeats | None, timeout: timedelta | float) -> bool:
        """The run runs, its ``heartbeats`` thread is alive and (unless ``poll_only``)
        its listener echoes a probe within ``timeout``."""
        if heartbeats is None or not heartbeats.is_alive() or self._control.halt.is_set():
            return False
        if not self.enabled:
            return True
        return self.listener_healthy(timeout)

    def listener_healthy(self, timeout: timedelta | float) -> bool:
        """Whether a probe sent on the channel comes back within ``timeout``."""
        seconds = options.duration("timeout", timeout).total_seconds()
        return bool(self._send_probe(seconds))

    def _send_probe(self, seconds: float) -> bool | None:
        """Whether the probe came back within ``seconds``; None if it could not be sent
        (or the worker began to stop while it waited)."""
        if not self.enabled:
            return False
        probe_id, received = uuid.uuid4(), threading.Event()
        self._pending_probes[probe_id] = received
        try:
            self._queries.notify_health_check(probe_id)
            # In slices: a stopping worker does not wait out a deaf listener's probe.
            deadline = time.monotonic() + seconds
            while not received.wait(min(FINAL_WAIT_SLICE, max(deadline - time.monotonic(), 0))):
                if time.monotonic() >= deadline:
                    return False
                if self._control.halt.is_set():
                    return None
            return True
        except DatabaseError as exc:  # no probe sent: not healthy, whatever the reason
            logger.debug("listener probe could not be sent: %s", exc)
            return None
        finally:
            self._pending_probes.pop(probe_id, None)

    def _probe(self, opts: options.RunOptions) -> None:
        """The health ticker's probe: trust the listener while it echoes; otherwise
        poll every ``poll_interval``, reconnect it once per run of failures and say,
        the first time, what fixes a listener that hears nothing (PgBouncer)."""
        timeout = options.HEALTH_CHECK_TIMEOUT.total_seconds()
        poll = opts.poll_interval.total_seconds()
        echoed = self._send_probe(timeout)
        if echoed:
            self._heard(poll)
            return
        self.verified.clear()
        self._control.wake.set()  # and poll every poll_interval meanwhile
        if opts.shutdown_on_listener_failure and opts.mode is not QueueExecutionMode.drain:
            logger.warning("listener health check failed: no echo within %.1fs; stopping "
                           "(shutdown_on_listener_failure)", timeout)
            self.error = FailingListenerError()
            self._control.halt_all()
            return
        if echoed is None:
            return  # not sent: a database problem, reported by the statements it fails
        self.failures += 1
        if self.failures > 1:  # reconnected once already: that did not help
            logger.debug("listener health check failed %d times in a row; polling every %.1fs",
                         self.failures, poll)
            return
        self._warn_deaf(timeout, poll)
        if self.listener is not None:
            self.listener.reconnect()

    def _heard(self, poll: float) -> None:
        self.failures = 0
        if not self.verified.is_set():
            if self._warned_deaf_listener:
                logger.info("the listener hears notifications again; waiting for them "
                            "instead of polling every %.1fs", poll)
            self.verified.set()

    def _warn_deaf(self, timeout: float, poll: float) -> None:
        if not self._warned_deaf_listener:
            self._warned_deaf_listener = True
            logger.warning(
                "listener health check failed: no echo within %.1fs; reconnecting it, and "
                "polling for jobs every %.1fs until it hears again. Behind PgBouncer in "
                "transaction mode LISTEN seems to work but no notification ever arrives: use "
                "--listen-dsn (listen_dsn=) to a direct server connection or --poll-only "
                "(poll_only=True); see docs/pgbouncer.md", timeout, poll,
            )
        else:
            logger.warning("listener health check failed: no echo within %.1fs; reconnecting "
                           "it, and polling every %.1fs meanwhile", timeout, poll)
