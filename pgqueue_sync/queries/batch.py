"""An enqueue's arguments, checked and rendered as one column of values per job.

:func:`normalize_batch` turns :meth:`Queries.enqueue`'s scalar-or-list
arguments into validated columns of equal length; both adapters (and the Django
producer) call it, so they accept and refuse the same values.
:func:`enqueue_params` renders those columns as the statement's array
parameters. ``_COLUMNS`` is the one table of what each column is made from, how
its values are checked and how it is rendered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from psycopg.types.json import Jsonb

from ..errors import ConfigurationError
from ..options import duration, key_text
from ..sql.arrays import bytea_array, int_array, text_array
from ..tracing import TracingProtocol, get_tracer, is_active, merge_publish_headers
from ..types import ON_CONFLICT_MODES

_T = TypeVar("_T")
_INT32 = (-(2**31), 2**31 - 1)


def normalize_batch(
    entrypoint: object,
    payload: object,
    priority: object,
    execute_after: object,
    dedupe_key: object,
    headers: object,
) -> dict[str, list[Any]]:
    """The enqueue arguments (each a value for every job, or a list of one per job) as
    checked columns of equal length, keyed as ``_COLUMNS``: ``entrypoint``,
    ``payload``, ``priority``, ``delay`` and ``at`` (both from ``execute_after``),
    ``dedupe_key`` and ``headers`` (``Jsonb``). Raises :class:`ConfigurationError`."""
    columns = {
        "entrypoint": entrypoint,
        "payload": payload,
        "priority": priority,
        "execute_after": execute_after,
        "dedupe_key": dedupe_key,
        "headers": headers,
    }
    lengths = {k: len(v) for k, v in columns.items() if isinstance(v, list | tuple)}
    if len(set(lengths.values())) > 1:
        raise ConfigurationError(
            f"batch enqueue needs lists of equal length, got {lengths}; "
            "pass one value per job for every list argument"
        )
    size = next(iter(lengths.values()), 1)
    full = {
        k: list(v) if isinstance(v, list | tuple) else [v] * size for k, v in columns.items()
    }
    return {name: _checked(full[source], check) for name, (source, check, _) in _COLUMNS.items()}


def enqueue_params(rows: dict[str, list[Any]]) -> dict[str, str]:
    """The array parameters of the enqueue statement, from :func:`normalize_batch`'s columns."""
    return {name: _array(rows[name], render) for name, (_, _, render) in _COLUMNS.items()}


def check_conflict_mode(mode: str, keys: list[str | None]) -> None:
    """Refuse an unknown ``on_conflict`` mode, and a dedupe key given twice to
    ``update_priority``."""
    if mode not in ON_CONFLICT_MODES:
        raise ConfigurationError(
            f"on_conflict must be one of {', '.join(ON_CONFLICT_MODES)}, got {mode!r}"
        )
    if mode == "update_priority":
        present = [k for k in keys if k is not None]
        if len(present) != len(set(present)):
            raise ConfigurationError(
                "on_conflict='update_priority' cannot take the same dedupe_key twice in one call"
            )


def trace_publish(tracer: TracingProtocol | None, rows: dict[str, list[Any]]) -> None:
    """Merge the tracer's headers into a normalised batch, in place."""
    active = get_tracer(tracer)
    if is_active(active):
        own = [h.obj for h in rows["headers"]]
        merged = merge_publish_headers(active, rows["entrypoint"], own)
        rows["headers"] = [_headers(h) for h in merged]


def _checked(values: list[Any], check: Callable[[Any], _T]) -> list[_T]:
    """``[check(v) for v in values]``, checking each distinct object once: a batch
    mostly repeats one entrypoint, priority, delay and ``None``. (The list holds
    every value for the whole call, so an ``id()`` cannot be reused meanwhile.)"""
    done: dict[int, _T] = {}
    out = []
    for value in values:
        key = id(value)
        if key not in done:
            done[key] = check(value)
        out.append(done[key])
    return out


def check_entrypoint(value: object) -> str:
    """A non-empty entrypoint name that fits its column."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"entrypoint must be a non-empty string, got {value!r}")
    return key_text("entrypoint", value)


def _check_payload(value: object) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    hint = "; encode it first, e.g. text.encode()" if isinstance(value, str) else ""
    raise ConfigurationError(f"payload must be bytes or None, got {type(value).__name__}{hint}")


def _check_priority(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"priority must be an int, got {value!r}")
    if not _INT32[0] <= value <= _INT32[1]:
        raise ConfigurationError(f"priority {value} does not fit a PostgreSQL integer")
    return value


def _check_dedupe(value: object) -> str | None:
    if value is None:
        return value
    if isinstance(value, str):
        return key_text("dedupe_key", value)
    raise ConfigurationError(f"dedupe_key must be a string or None, got {value!r}")


def _delay(value: object) -> timedelta:
    if value is None or isinstance(value, datetime):
        return timedelta(0)
    if isinstance(value, timedelta | int | float) and not isinstance(value, bool):
        # A negative delay (due in the past) is allowed; its size is checked as any other.
        past = value < timedelta(0) if isinstance(value, timedelta) else value < 0
        return -duration("execute_after", -value) if past else duration("execute_after", value)
    raise ConfigurationError(
        f"execute_after must be a timedelta, seconds or an aware datetime, got {value!r}"
    )


def _at(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ConfigurationError(
            f"execute_after datetime {value.isoformat()} has no timezone; "
            "pass an aware datetime, e.g. datetime.now(timezone.utc) + delay"
        )
    return value


def _headers(value: object) -> Jsonb:
    # Without headers PgQueuer stores JSON null (not SQL NULL); keep it that way.
    if value is None:
        return Jsonb(None)
    if isinstance(value, Mapping):
        headers = dict(value)
        _check_storable_json("headers", headers)
        return Jsonb(headers)
    raise ConfigurationError(f"headers must be a mapping or None, got {type(value).__name__}")


def _check_storable_json(name: str, value: object) -> None:
    """Refuse what ``jsonb`` cannot hold, before any SQL runs: NaN/infinity, values
    JSON has no form for, NUL characters and lone surrogates."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"{name} must be plain JSON (str, int, finite float, bool, None, lists and "
            f"dicts with str keys): {exc}"
        ) from None
    if _has_nul(value):
        raise ConfigurationError(f"{name} must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(
            f"{name} contains a lone surrogate, which is not valid text"
        ) from None


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def _array(values: list[Any], render: Callable[[list[Any]], str]) -> str:
    """``render(values)``; when every value is equal (a batch sharing one entrypoint,
    priority or delay, or no headers), render one element and repeat its text."""
    if len(values) > 1 and values.count(values[0]) == len(values):
        element = render(values[:1])[1:-1]  # the literal without its braces
        return "{" + ",".join([element] * len(values)) + "}"
    return render(values)


def _at_array(moments: list[datetime | None]) -> str:
    return text_array(None if a is None else a.isoformat() for a in moments)


def _delay_array(delays: list[timedelta]) -> str:
    # Batches mostly share one delay (usually zero): format each distinct one once.
    texts: dict[timedelta, str] = {}
    for delay in delays:
        if delay not in texts:
            texts[delay] = f"{delay.total_seconds()} seconds"
    return text_array(texts[d] for d in delays)


def _headers_array(headers: list[Jsonb]) -> str:
    # JSON null (no headers) is by far the common case; skip json.dumps for it.
    return text_array("null" if h.obj is None else json.dumps(h.obj) for h in headers)


#: What an enqueue writes, per column of the statement: the argument it comes
#: from, the check that validates (and normalises) each value, and how a column
#: becomes its array parameter.
_COLUMNS: dict[str, tuple[str, Callable[[Any], Any], Callable[[list[Any]], str]]] = {
    "entrypoint": ("entrypoint", check_entrypoint, text_array),
    "payload": ("payload", _check_payload, bytea_array),
    "priority": ("priority", _check_priority, int_array),
    "delay": ("execute_after", _delay, _delay_array),
    "at": ("execute_after", _at, _at_array),
    "dedupe_key": ("dedupe_key", _check_dedupe, text_array),
    "headers": ("headers", _headers, _headers_array),
}
