"""The in-memory "database": :class:`InMemoryDriver` holds the tables, runs each
operation atomically as a :class:`Statement`, and hands the NOTIFY payloads an
operation sent to the listeners standing in for ``LISTEN``."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, Literal

from ...errors import ConfigurationError, UniqueViolation
from ...models import utc_now
from ...settings import DBSettings
from ...types import JOB_STATUS
from .tables import ACTIVE_STATUSES, JobRow, LogRow, ScheduleRow, StatRow

logger = logging.getLogger(__name__)

_Callback = Callable[[str], None]


class Statement:
    """One atomic operation: the tables, one ``NOW()``, and the notifications it sends."""

    def __init__(self, driver: InMemoryDriver, settings: DBSettings, now: datetime) -> None:
        self.db = driver
        self.settings = settings
        self.now = now
        self.payloads: list[str] = []

    def next_id(self, table: str) -> int:
        # Like nextval(): drawn even for rows later skipped or rejected (gaps).
        self.db._sequences[table] += 1
        return self.db._sequences[table]

    def log(self, row: JobRow, status: JOB_STATUS, traceback: Any = None) -> None:
        log_id = self.next_id("log")
        entry = LogRow(log_id, self.now, row.id, status, row.priority, row.entrypoint, traceback)
        self.db.log_rows.append(entry)

    def table_changed(
        self, operation: Literal["insert", "update", "delete", "truncate"]
    ) -> None:
        # The statement-level trigger: one event per INSERT/DELETE/TRUNCATE statement,
        # however many rows it touched (zero included), spelled as json_build_object does.
        data = {
            "channel": self.settings.channel,
            "operation": operation,
            "sent_at": _pg_json_time(self.now),
            "table": self.settings.bare_name("queue_table"),
            "type": "table_changed_event",
        }
        self.payloads.append(json.dumps(data, separators=(", ", " : ")))

    def active_keys(self) -> dict[str, JobRow]:
        return {
            r.dedupe_key: r
            for r in self.db.jobs.values()
            if r.dedupe_key is not None and r.status in ACTIVE_STATUSES
        }

    def reactivate(self, rows: Sequence[JobRow]) -> None:
        """Refuse to put ``rows`` back to ``queued`` if that breaks the dedupe index."""
        taken = {k: r.id for k, r in self.active_keys().items()}
        for row in rows:
            key = row.dedupe_key
            if key is None or row.status in ACTIVE_STATUSES:
                continue
            if taken.setdefault(key, row.id) != row.id:
                index = self.settings.index_name("unique_dedupe_key")
                raise UniqueViolation(
                    f'duplicate key value violates unique constraint "{index}"',
                    constraint_name=index,
                )


class InMemoryDriver:
    """The in-process storage of one queue "database", shared by threads.

    Holds the queue, log, statistics and schedule rows and their id sequences,
    all guarded by one :class:`threading.Lock`, plus a notification fan-out
    standing in for ``LISTEN`` (:meth:`add_listener`).

    ``clock`` plays PostgreSQL's ``NOW()``: it is read once per operation and
    must return aware datetimes. Inject one (e.g.
    :class:`pgqueue_sync.testing.ManualClock`) to move time in tests.
    """

    def __init__(self, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.jobs: dict[int, JobRow] = {}
        self.log_rows: list[LogRow] = []
        self.statistics: dict[tuple[int, datetime, str, str], StatRow] = {}
        self.schedules: dict[int, ScheduleRow] = {}
        self._sequences: collections.Counter[str] = collections.Counter()
        self._listeners: list[_Callback] = []
        self._outbox: collections.deque[str] = collections.deque()
        self._outbox_lock = threading.Lock()
        self._delivering = False

    def now(self) -> datetime:
        """The clock's current time; :class:`ConfigurationError` if it is naive."""
        value = self.clock()
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise ConfigurationError(f"the in-memory clock returned a naive datetime: {value!r}")
        return value

    def add_listener(self, callback: _Callback) -> Callable[[], None]:
        """Call ``callback(payload)`` for every NOTIFY payload; returns the unsubscribe.

        Payloads are delivered after the operation that sent them has released
        the storage lock (so callbacks may call queries), in commit order, on
        the thread of one of the senders. A callback that raises is logged and
        skipped. Keep callbacks quick: a sender may be delivering them.
        """
        with self._outbox_lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._outbox_lock:
                with contextlib.suppress(ValueError):
                    self._listeners.remove(callback)

        return unsubscribe

    @contextlib.contextmanager
    def statement(self, settings: DBSettings) -> Iterator[Statement]:
        """Run one operation atomically; its notifications are sent only if it succeeds.

        Operations check everything before they change a row, so an error leaves
        the tables as they were (only the id sequences advance, as in PostgreSQL).
        """
        with self._lock:
            stmt = Statement(self, settings, self.now())
            yield stmt
            if stmt.payloads:
                with self._outbox_lock:
                    self._outbox.extend(stmt.payloads)
        if stmt.payloads:
            self._deliver()

    def _deliver(self) -> None:
        with self._outbox_lock:
            if self._delivering:  # another thread (or an outer frame) drains the outbox
                return
            self._delivering = True
        try:
            while True:
                with self._outbox_lock:
                    if not self._outbox:
                        # Cleared under the same lock as the emptiness check, so a
                        # payload queued meanwhile is never left undelivered.
                        self._delivering = False
                        return
                    payload = self._outbox.popleft()
                    listeners = tuple(self._listeners)
                for callback in listeners:
                    try:
                        callback(payload)
                    except Exception:
                        logger.exception("in-memory listener %r failed", callback)
        except BaseException:
            with self._outbox_lock:
                self._delivering = False
            raise


def _pg_json_time(value: datetime) -> str:
    """A timestamptz as PostgreSQL writes it into JSON (fraction without trailing zeros)."""
    utc = value.astimezone(timezone.utc)
    fraction = f"{utc.microsecond:06d}".rstrip("0")
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "+00:00"
