"""Where the connection string comes from: one resolution order for the CLI and helpers.

Order, first match wins:

1. an explicit DSN (the CLI's ``--dsn``);
2. ``PGQUEUE_SYNC_DSN``;
3. ``DATABASE_URL`` (the twelve-factor convention);
4. ``PGQUEUER_DSN`` then ``PGDSN`` (what PgQueuer's ``pgq`` reads);
5. the libpq variables (``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGDATABASE``,
   ``PGSERVICE``, ...): an empty conninfo, which libpq completes from them;
6. an embedded PostgreSQL when the ``embedded`` extra is installed;
7. libpq's own defaults (the local Unix socket).

SQLAlchemy-style URLs (``postgresql+psycopg://``, ``postgresql+asyncpg://``)
are accepted: the ``+driver`` suffix is removed.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ..drivers.psycopg import describe_conninfo
from ..errors import ConfigurationError

#: Environment variables holding a whole DSN, in order of precedence.
DSN_VARIABLES = ("PGQUEUE_SYNC_DSN", "DATABASE_URL", "PGQUEUER_DSN", "PGDSN")
#: libpq variables that, when any is set, make an empty conninfo meaningful.
LIBPQ_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE")

#: :attr:`ResolvedDSN.source` when nothing was configured (step 7).
LIBPQ_DEFAULTS = "libpq defaults"

_URL_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9.+-]*)://")
_POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclasses.dataclass(frozen=True)
class ResolvedDSN:
    """A conninfo string and where it came from (for messages; never shows a password)."""

    conninfo: str
    source: str

    def describe(self) -> str:
        """``host/db as user (from SOURCE)`` with the password left out."""
        return f"{describe_conninfo(self.conninfo)} (from {self.source})"


def normalize_dsn(value: str, *, source: str = "the DSN") -> str:
    """Accept a libpq keyword string or a ``postgres[ql][+driver]://`` URL.

    Raises :class:`ConfigurationError` (without echoing a password) when the
    value is not a PostgreSQL connection string.
    """
    text = value.strip()
    match = _URL_SCHEME.match(text)
    if match:
        scheme, _, driver = match.group("scheme").partition("+")
        if scheme.lower() not in _POSTGRES_SCHEMES:
            raise ConfigurationError(
                f"{source} is a {scheme}:// URL; give a postgresql:// URL or a libpq "
                "'host=... dbname=...' string"
            )
        if driver:
            text = "postgresql://" + text[match.end() :]
    try:
        conninfo_to_dict(text)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "unparsable"
        raise ConfigurationError(
            f"{source} is not a valid connection string ({_scrub(reason)}); "
            "use 'postgresql://user@host:5432/db' or 'host=... dbname=...'"
        ) from None
    return text


def resolve_dsn(
    explicit: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    allow_embedded: bool = True,
) -> ResolvedDSN:
    """Find the DSN to use, following the module's order.

    Starting the embedded server (step 6) blocks until it accepts connections
    and keeps it running for this process (see :mod:`pgqueue_sync.cli.embedded`).
    """
    env = os.environ if environ is None else environ
    if explicit:
        return ResolvedDSN(normalize_dsn(explicit, source="--dsn"), "--dsn")
    for name in DSN_VARIABLES:
        value = env.get(name, "").strip()
        if value:
            return ResolvedDSN(normalize_dsn(value, source=name), name)
    if any(env.get(name) for name in LIBPQ_VARIABLES):
        return ResolvedDSN("", "libpq PG* variables")
    if allow_embedded:
        from . import embedded

        if embedded.is_available():
            return ResolvedDSN(embedded.embedded_dsn(embedded.data_dir(env)), "embedded server")
    return ResolvedDSN("", LIBPQ_DEFAULTS)


def _scrub(text: str) -> str:
    # libpq quotes the offending fragment, which may contain a password.
    return re.sub(r'"[^"]*"', '"..."', text)
