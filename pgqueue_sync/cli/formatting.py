"""Plain-text tables and argument parsing for the CLI (no click, no database)."""

from __future__ import annotations

import importlib
import json
import os
import traceback
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from ..errors import ConfigurationError


def parse_headers(text: str | None) -> dict[str, Any] | None:
    """A JSON object for ``--headers``."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"--headers must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigurationError(f"--headers must be a JSON object, got {type(value).__name__}")
    return value


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned text columns (numbers right-aligned) under a header rule."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        columns = zip(values, widths, numeric, strict=True)
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in columns]
        return "  ".join(parts).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def to_json(value: object) -> str:
    """JSON with datetimes as ISO 8601 and bytes as their length."""
    return json.dumps(value, default=_json_default, indent=2, sort_keys=True)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: Frames from these places are not the user's code: the package itself, the
#: import machinery and click.
_NOT_USER_CODE = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,  # pgqueue_sync/
    os.path.dirname(os.path.abspath(importlib.__file__)) + os.sep,
    "<frozen ",
)


def user_traceback(exc: BaseException | None, *, everything: bool = False) -> str:
    """The traceback of ``exc`` with frames outside the user's own code left out.

    ``everything`` keeps every frame (``--log-level DEBUG``). Empty for ``None``.
    """
    if exc is None:
        return ""
    frames = traceback.extract_tb(exc.__traceback__)
    kept = frames if everything else [f for f in frames if not _outside_user_code(f.filename)]
    lines = []
    if kept:
        note = "most recent call last"
        if len(kept) < len(frames):
            note = "frames outside your code left out; --log-level DEBUG shows all"
        lines.append(f"Traceback ({note}):\n")
    frames = traceback.StackSummary.from_list(kept)
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def _outside_user_code(filename: str) -> bool:
    if filename.startswith(_NOT_USER_CODE):
        return True
    parts = os.path.normpath(filename).split(os.sep)
    return "click" in parts and "site-packages" in parts
