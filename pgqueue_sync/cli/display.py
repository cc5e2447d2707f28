"""How the operator commands show values: tables fitted to the terminal, ages and
durations, UTC timestamps and dataclasses as JSON.

Tables fit the terminal (80 columns when the output is not a terminal and
``COLUMNS`` is unset) by clipping free-text columns; ``--json`` gives every
value in full. No click, no database.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from .formatting import table

#: Table width when the output is not a terminal and ``COLUMNS`` is unset.
DEFAULT_WIDTH = 80
#: A clipped column keeps at least this many characters (or its header's width).
MIN_CLIPPED_WIDTH = 8
_ELLIPSIS = "…"


def fit_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
              flex: Sequence[int]) -> str:
    """``table()``, with the ``flex`` columns clipped until the table fits the width."""
    width = terminal_width()
    texts = [[_text(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in texts)]) for i, h in enumerate(headers)]
    floors = {i: max(len(headers[i]), MIN_CLIPPED_WIDTH) for i in flex}
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    while excess > 0:
        widest = max(flex, key=lambda i: widths[i] - floors[i])
        if widths[widest] <= floors[widest]:
            break
        widths[widest] -= 1
        excess -= 1
    clipped = [
        [clip(texts[r][i], widths[i]) if i in flex else value for i, value in enumerate(row)]
        for r, row in enumerate(rows)
    ]
    return table(headers, clipped)


def terminal_width() -> int:
    """The terminal's columns; else ``COLUMNS`` (at least 40), else :data:`DEFAULT_WIDTH`."""
    if sys.stdout.isatty():
        return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
    try:
        return max(int(os.environ.get("COLUMNS", "")), 40)
    except ValueError:
        return DEFAULT_WIDTH


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, its last one an ellipsis when cut."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + _ELLIPSIS


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return timestamp_text(value)
    return str(value)


def timestamp_text(value: datetime) -> str:
    """UTC, whatever the session's TimeZone, so every command and host agrees."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def short_id(value: uuid.UUID | None) -> str:
    """The first eight hex digits of a queue_manager_id: enough to tell workers apart."""
    return "-" if value is None else str(value)[:8]


def age_text(seconds: float | None) -> str:
    """``42s``, ``3m07s``, ``2h05m`` or ``4d03h``."""
    if seconds is None:
        return "-"
    whole = max(int(seconds), 0)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def duration_text(seconds: float | None) -> str:
    """A measured duration: ``85ms``, ``4.2s``, ``3m07s``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return age_text(seconds)


def ago_text(seconds: float | None) -> str:
    return "-" if seconds is None else f"{age_text(seconds)} ago"


def relative_text(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    delta = (moment - now).total_seconds()
    return f"in {age_text(delta)}" if delta >= 1 else ago_text(-delta)


def plain(value: Any) -> dict[str, Any]:
    """A dataclass as a JSON-ready dict (UUIDs as strings); datetimes stay for to_json()."""
    data: dict[str, Any] = dataclasses.asdict(value)
    return {key: _uuid_free(item) for key, item in data.items()}


def _uuid_free(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _uuid_free(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_uuid_free(v) for v in value]
    return value


def json_value(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")

