"""PostgreSQL array literals for bound parameters.

psycopg adapts Python lists element by element in Python, which dominated the
client-side cost of the hot statements. These helpers build the array's text
form once; it is still sent as a *bound value* and cast server-side
(``%(ids)s::bigint[]``), never spliced into SQL text.
"""

from __future__ import annotations

from collections.abc import Iterable


def int_array(values: Iterable[int]) -> str:
    """``{1,2,3}`` for integers (each passed through ``int()``)."""
    return "{" + ",".join(str(int(v)) for v in values) + "}"


def text_array(values: Iterable[str | None]) -> str:
    """A quoted text array literal; ``None`` becomes ``NULL``.

    Every element is double-quoted with ``\\`` and ``"`` escaped, which makes
    commas, braces, spaces and the word NULL inside values safe.
    """
    return "{" + ",".join(_element(v) for v in values) + "}"


def bytea_array(values: Iterable[bytes | None]) -> str:
    """A ``bytea[]`` literal in hex form; ``None`` becomes ``NULL``.

    Hex digits need no escaping; the element's own backslash is doubled, as
    the array syntax requires.
    """
    return "{" + ",".join("NULL" if v is None else '"\\\\x' + v.hex() + '"' for v in values) + "}"


def _element(value: str | None) -> str:
    if value is None:
        return "NULL"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
