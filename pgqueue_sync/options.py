"""Worker defaults and the validation of ``entrypoint()`` and ``run()`` arguments.

Every default is a named constant here; every check says what to change.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from .errors import ConfigurationError
from .types import ISOLATION_MODES, ON_FAILURE_MODES, Isolation, OnFailure, QueueExecutionMode

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: Longest idle wait between claims when no notification arrives.
DEQUEUE_TIMEOUT = timedelta(seconds=30)
#: Jobs claimed per statement (and the completion write batch size).
BATCH_SIZE = 10
#: A picked job whose heartbeat is older than this is re-picked by any worker.
#: Every worker of a fleet, PgQueuer's included, must use the same value.
HEARTBEAT_TIMEOUT = timedelta(seconds=30)
#: How often a worker folds its log rows into statistics (0 or None disables).
LOG_AGGREGATION_INTERVAL = timedelta(seconds=30)
#: Handler threads (and in-flight jobs, async ones included) per worker.
CONCURRENCY = 10
#: Re-poll interval while eligible work exists but limits blocked it.
MIN_DEQUEUE_POLL_INTERVAL = 0.1
#: Claim lanes per worker: extra lanes overlap claim round trips while a
#: backlog exists (never used with max_concurrent_tasks). Three measured best
#: on 2 cores with the pool driver (benchmarks/worker.py).
CLAIM_LANES = 3
#: How long an idle second lane sleeps between checks (seconds).
LANE_IDLE_WAIT = 1.0
#: The flusher writes outcomes itself once this many batches of them wait
#: (otherwise they ride along with the next claim, or go on its timer).
OUTCOME_BATCHES_BEFORE_FLUSH = 4
#: How long run() waits for an unreachable database at start before giving up.
WAIT_FOR_DATABASE = timedelta(seconds=60)
#: A claim looks for stale picked jobs at most this often (and at most a quarter
#: of the shortest stale timeout): that scan steps over the dead entries of every
#: job finished since the last VACUUM.
STALE_CHECK_INTERVAL = timedelta(seconds=5)
#: Workers ANALYZE/VACUUM the queue table where autovacuum falls behind (see upkeep.py).
QUEUE_UPKEEP = True
#: After the next picked job's stale time, wait this much longer before the
#: rescuing claim (the claim's test is strict: heartbeat < NOW() - timeout).
STALE_WAKE_MARGIN = 0.05
#: How long the final writes at shutdown (hand-backs, outcomes) may take.
FINAL_WRITES_TIMEOUT = 30.0
#: The listener probes itself this often and waits this long for the echo.
HEALTH_CHECK_INTERVAL = 10.0
HEALTH_CHECK_TIMEOUT = timedelta(seconds=10)
#: How often a worker that gets no notifications looks for jobs: with
#: ``poll_only`` (no LISTEN, e.g. behind PgBouncer in transaction mode), until its
#: listener first echoes a probe, and while a failed probe says it hears nothing.
POLL_INTERVAL = timedelta(seconds=1)
#: How long the workers' pruner keeps log rows, statistics rows and stored results
#: (docs/retention.md); ``None`` keeps them forever.
KEEP_LOG: timedelta | None = timedelta(days=7)
KEEP_STATISTICS: timedelta | None = timedelta(days=30)
KEEP_RESULTS: timedelta | None = timedelta(days=7)
#: The shortest retention window: a final log row must outlive the few seconds a
#: CompletionWatcher may take to read it.
MIN_RETENTION = timedelta(minutes=1)
#: An entrypoint's per-job timeout (``entrypoint(timeout=...)``): None, no timeout.
ENTRYPOINT_TIMEOUT: timedelta | None = None
#: Where an entrypoint's ``def`` handler runs (``entrypoint(isolation=...)``).
ISOLATION: Isolation = "thread"
#: Child processes per isolated entrypoint without a ``concurrency_limit``.
ISOLATED_PROCESSES = os.cpu_count() or 2


#: The longest duration any option accepts: longer is surely a unit mistake, and
#: PostgreSQL intervals and ``time.monotonic()`` arithmetic stay exact below it.
MAX_DURATION = timedelta(days=3650)


def duration(name: str, value: timedelta | float | int) -> timedelta:
    """A non-negative, finite ``timedelta`` (at most :data:`MAX_DURATION`) from a
    ``timedelta`` or seconds; :class:`ConfigurationError` names ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, timedelta | float | int):
        raise ConfigurationError(f"{name} must be a timedelta or seconds, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number of seconds, got {value!r}")
    try:
        result = value if isinstance(value, timedelta) else timedelta(seconds=value)
    except OverflowError:
        result = MAX_DURATION + timedelta(seconds=1)
    if result < timedelta(0):
        raise ConfigurationError(f"{name} must not be negative, got {value!r}")
    if result > MAX_DURATION:
        raise ConfigurationError(
            f"{name} must be at most {MAX_DURATION.days} days, got {value!r}; "
            "is the unit right? (seconds, or a timedelta)"
        )
    return result


#: A duration as text (``--delay 5m``, ``PGQUEUE_SYNC_KEEP_LOG=7d``, Django settings).
_DURATION_TEXT = re.compile(r"^\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, *, option: str) -> timedelta:
    """``"90"``, ``"1.5s"``, ``"10m"``, ``"2h"``, ``"1d"`` or ``"250ms"`` as a timedelta."""
    match = _DURATION_TEXT.match(text)
    if not match:
        raise ConfigurationError(
            f"{option} must be seconds or a number ending in ms/s/m/h/d (e.g. 30s, 5m), "
            f"got {text!r}"
        )
    seconds = float(match.group("value")) * _UNIT_SECONDS[match.group("unit") or "s"]
    try:
        return duration(option, seconds)  # finite, and within what an interval holds
    except ConfigurationError:
        raise ConfigurationError(
            f"{option} {text.strip()!r} is too long: at most {MAX_DURATION.days} days; "
            "is the unit right?"
        ) from None


#: Longest entrypoint name and dedupe key, in UTF-8 bytes: well inside what one
#: B-tree index entry of the queue table can hold (about 2,700 bytes, shared with
#: the other indexed columns).
MAX_KEY_BYTES = 1024


def key_text(name: str, value: str) -> str:
    """``value`` if PostgreSQL can store and index it as an entrypoint or dedupe key:
    valid UTF-8, no NUL character, at most :data:`MAX_KEY_BYTES` bytes."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConfigurationError(
            f"{name} {value[:40]!r}... is not valid text (a lone surrogate); "
            "pass a proper str"
        ) from None
    if "\x00" in value:
        raise ConfigurationError(f"{name} must not contain NUL characters, got {value[:40]!r}")
    if size > MAX_KEY_BYTES:
        raise ConfigurationError(
            f"{name} is {size} bytes long; at most {MAX_KEY_BYTES} bytes (UTF-8) fit the "
            f"queue's indexes: shorten it (e.g. hash a long key), got {value[:40]!r}..."
        )
    return value


def positive_duration(name: str, value: timedelta | float | int) -> timedelta:
    """Like :func:`duration`, but zero is rejected too."""
    result = duration(name, value)
    if result == timedelta(0):
        raise ConfigurationError(f"{name} must be greater than zero, got {value!r}")
    return result


def optional_duration(name: str, value: timedelta | float | int | None) -> timedelta | None:
    """``None`` stays ``None``; anything else must be a positive duration."""
    return None if value is None else positive_duration(name, value)


def retention(
    name: str, value: timedelta | float | int | None, *, off: str = "None"
) -> timedelta | None:
    """A retention window: ``None`` (keep forever) or a duration of at least
    :data:`MIN_RETENTION` (seconds or a ``timedelta``); ``off`` names the way to
    turn it off in the message."""
    if value is None:
        return None
    result = duration(name, value)
    if result < MIN_RETENTION:
        raise ConfigurationError(
            f"{name} must be at least {MIN_RETENTION.total_seconds():g} seconds "
            f"(e.g. timedelta(days=7)), or {off} to keep every row; got {value!r}"
        )
    return result


def job_timeout(value: timedelta | float | int | None) -> timedelta | None:
    """An entrypoint's ``timeout``: ``None`` (no timeout) or a positive duration
    (seconds or a ``timedelta``) of at least a millisecond."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, timedelta | float | int):
        raise ConfigurationError(
            f"timeout must be seconds or a timedelta (None: no timeout), got {value!r}"
        )
    result = duration("timeout", value)
    if result < timedelta(milliseconds=1):
        raise ConfigurationError(
            f"timeout must be at least 1 ms, got {value!r}; pass seconds (e.g. timeout=30) "
            "or a timedelta, or None for no timeout"
        )
    return result


def positive_int(name: str, value: int) -> int:
    """An ``int`` >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_entrypoint_name(name: str, registry: Mapping[str, object]) -> None:
    """Reject empty or already registered names."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"entrypoint name must be a non-empty string, got {name!r}")
    key_text("entrypoint name", name)
    if name in registry:
        raise ConfigurationError(f"entrypoint {name!r} is already registered; names must be unique")


def concurrency_limit(limit: int, serialized_dispatch: bool) -> int:
    """The fleet-wide limit; ``serialized_dispatch=True`` means 1."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigurationError(f"concurrency_limit must be an int >= 0, got {limit!r}")
    if serialized_dispatch:
        if limit not in (0, 1):
            raise ConfigurationError(
                f"serialized_dispatch=True means concurrency_limit=1; got concurrency_limit={limit}"
            )
        return 1
    return limit


def isolation(value: str) -> Isolation:
    """``"thread"`` or ``"process"``."""
    if value not in ISOLATION_MODES:
        raise ConfigurationError(
            f"isolation must be one of {', '.join(map(repr, ISOLATION_MODES))}, got {value!r}"
        )
    return value


def on_failure(value: str) -> OnFailure:
    """``"delete"`` or ``"hold"``."""
    if value not in ON_FAILURE_MODES:
        raise ConfigurationError(f"on_failure must be 'delete' or 'hold', got {value!r}")
    return value


def requests_per_second(rate: float) -> float:
    """A valid ``requests_per_second`` (``inf``: no limit), or :class:`ConfigurationError`."""
    if isinstance(rate, bool) or not isinstance(rate, int | float) or math.isnan(rate):
        raise ConfigurationError(f"requests_per_second must be a number, got {rate!r}")
    if rate <= 0:
        raise ConfigurationError(f"requests_per_second must be > 0, got {rate!r}")
    return float(rate)


def execution_mode(mode: QueueExecutionMode | str) -> QueueExecutionMode:
    """``continuous`` or ``drain``, from the enum or its name."""
    try:
        return QueueExecutionMode(mode)
    except ValueError:
        raise ConfigurationError(
            f"mode must be 'continuous' or 'drain', got {mode!r}"
        ) from None


class RunKeywords(TypedDict, total=False):
    """The keywords of ``run()``, declared once for :meth:`QueueManager.run
    <pgqueue_sync.worker.manager.QueueManager.run>` and :meth:`PgQueuer.run
    <pgqueue_sync.app.PgQueuer.run>`; each defaults to the constant named beside it."""

    #: Longest idle wait between claims without a notification (DEQUEUE_TIMEOUT).
    dequeue_timeout: timedelta | float
    #: Jobs claimed per statement (BATCH_SIZE).
    batch_size: int
    #: ``continuous`` runs until shut down; ``drain`` stops once the queue is empty.
    mode: QueueExecutionMode | str
    #: Jobs this worker may hold at once (None: no budget beyond the handler threads).
    max_concurrent_tasks: int | None
    #: Stop the worker when the listener fails instead of polling.
    shutdown_on_listener_failure: bool
    #: A picked job whose heartbeat is older than this is re-picked (HEARTBEAT_TIMEOUT).
    heartbeat_timeout: timedelta | float
    #: How often log rows are folded into statistics; None or 0 disables it.
    log_aggregation_interval: timedelta | float | None
    #: Handler threads and in-flight jobs (CONCURRENCY when None).
    concurrency: int | None
    #: How long a graceful stop waits for running jobs (None: until they finish).
    shutdown_timeout: timedelta | float | None
    #: How long run() waits for an unreachable database at start (WAIT_FOR_DATABASE).
    wait_for_database: timedelta | float
    #: ANALYZE/VACUUM the queue table where autovacuum falls behind (QUEUE_UPKEEP).
    queue_upkeep: bool
    #: A direct server connection string for LISTEN (e.g. behind PgBouncer).
    listen_dsn: str | None
    #: Never LISTEN; poll every ``poll_interval``.
    poll_only: bool
    #: How often a worker without notifications looks for jobs (POLL_INTERVAL).
    poll_interval: timedelta | float
    #: Retention of log rows, statistics rows and stored results (None: forever).
    keep_log: timedelta | float | None
    keep_statistics: timedelta | float | None
    keep_results: timedelta | float | None


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Validated ``run()`` arguments."""

    dequeue_timeout: timedelta
    batch_size: int
    mode: QueueExecutionMode
    max_concurrent_tasks: int | None
    shutdown_on_listener_failure: bool
    heartbeat_timeout: timedelta
    log_aggregation_interval: timedelta | None
    concurrency: int
    shutdown_timeout: timedelta | None
    wait_for_database: timedelta = WAIT_FOR_DATABASE
    claim_lanes: int = CLAIM_LANES
    queue_upkeep: bool = QUEUE_UPKEEP
    #: Holds a password, perhaps: kept out of the repr.
    listen_dsn: str | None = dataclasses.field(default=None, repr=False)
    poll_only: bool = False
    poll_interval: timedelta = POLL_INTERVAL
    keep_log: timedelta | None = KEEP_LOG
    keep_statistics: timedelta | None = KEEP_STATISTICS
    keep_results: timedelta | None = KEEP_RESULTS

    @classmethod
    def build(cls, **given: Unpack[RunKeywords]) -> RunOptions:
        """Validate everything up front; raises :class:`ConfigurationError`."""
        known_keywords("run()", given, RunKeywords)
        batch = positive_int("batch_size", given.get("batch_size", BATCH_SIZE))
        aggregation = given.get("log_aggregation_interval", LOG_AGGREGATION_INTERVAL)
        concurrency = given.get("concurrency")
        shutdown_timeout = given.get("shutdown_timeout")
        poll_only = bool(given.get("poll_only", False))
        on_listener_failure = bool(given.get("shutdown_on_listener_failure", False))
        return cls(
            dequeue_timeout=positive_duration(
                "dequeue_timeout", given.get("dequeue_timeout", DEQUEUE_TIMEOUT)
            ),
            batch_size=batch,
            mode=execution_mode(given.get("mode", QueueExecutionMode.continuous)),
            max_concurrent_tasks=_budget(given.get("max_concurrent_tasks"), batch),
            shutdown_on_listener_failure=on_listener_failure,
            heartbeat_timeout=positive_duration(
                "heartbeat_timeout", given.get("heartbeat_timeout", HEARTBEAT_TIMEOUT)
            ),
            log_aggregation_interval=None if aggregation is None else (
                duration("log_aggregation_interval", aggregation) or None
            ),
            concurrency=positive_int(
                "concurrency", CONCURRENCY if concurrency is None else concurrency
            ),
            shutdown_timeout=None if shutdown_timeout is None else duration(
                "shutdown_timeout", shutdown_timeout
            ),
            wait_for_database=duration(
                "wait_for_database", given.get("wait_for_database", WAIT_FOR_DATABASE)
            ),
            queue_upkeep=bool(given.get("queue_upkeep", QUEUE_UPKEEP)),
            listen_dsn=_listen_dsn(given.get("listen_dsn"), poll_only, on_listener_failure),
            poll_only=poll_only,
            poll_interval=positive_duration(
                "poll_interval", given.get("poll_interval", POLL_INTERVAL)
            ),
            keep_log=retention("keep_log", given.get("keep_log", KEEP_LOG)),
            keep_statistics=retention(
                "keep_statistics", given.get("keep_statistics", KEEP_STATISTICS)
            ),
            keep_results=retention("keep_results", given.get("keep_results", KEEP_RESULTS)),
        )


def known_keywords(call: str, given: Mapping[str, Any], declared: type) -> None:
    """Raise :class:`ConfigurationError` naming any keyword ``declared`` (a TypedDict)
    does not declare: ``**kwargs`` would otherwise let a misspelt option pass silently."""
    names: frozenset[str] = declared.__required_keys__ | declared.__optional_keys__  # type: ignore[attr-defined]
    unknown = sorted(set(given) - names)
    if unknown:
        raise ConfigurationError(
            f"{call} got unknown option(s) {', '.join(map(repr, unknown))}; "
            f"known options: {', '.join(sorted(names))}"
        )


def _listen_dsn(
    listen_dsn: str | None, poll_only: bool, shutdown_on_listener_failure: bool
) -> str | None:
    """The listener's own DSN, checked: parsable, and not combined with ``poll_only``."""
    if poll_only and shutdown_on_listener_failure:
        raise ConfigurationError(
            "poll_only runs no listener, so shutdown_on_listener_failure has nothing to "
            "watch; drop one of them"
        )
    if listen_dsn is None:
        return None
    if not isinstance(listen_dsn, str) or not listen_dsn.strip():
        raise ConfigurationError(
            "listen_dsn must be a non-empty libpq connection string or postgresql:// URL "
            "(or None to LISTEN on the worker's own connections)"
        )
    if poll_only:
        raise ConfigurationError(
            "listen_dsn and poll_only exclude each other: poll_only runs no listener; "
            "drop one of them"
        )
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(listen_dsn)
    except Exception:  # its message may quote the DSN, password included: not repeated
        raise ConfigurationError(
            "listen_dsn is not a valid libpq connection string or postgresql:// URL"
        ) from None
    return listen_dsn


def _budget(max_concurrent_tasks: int | None, batch_size: int) -> int | None:
    if not max_concurrent_tasks:
        return None
    positive_int("max_concurrent_tasks", max_concurrent_tasks)
    if max_concurrent_tasks < 2 * batch_size:
        raise ConfigurationError(
            f"max_concurrent_tasks ({max_concurrent_tasks}) must be at least twice batch_size "
            f"({batch_size}); raise it or lower batch_size"
        )
    return max_concurrent_tasks
