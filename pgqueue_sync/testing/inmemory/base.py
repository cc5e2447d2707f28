"""What the parts of :class:`~pgqueue_sync.testing.InMemoryQueries` stand on:
the driver, the settings and the tracer (and the ``LIMIT`` check two parts share)."""

from __future__ import annotations

import contextlib

from ...errors import DatabaseError
from ...settings import DBSettings, db_settings
from ...sql.names import check_lengths
from ...tracing import TracingProtocol
from .driver import InMemoryDriver, Statement


class InMemoryQueriesBase:
    """The state the parts of :class:`~pgqueue_sync.testing.InMemoryQueries` share."""

    def __init__(
        self,
        driver: InMemoryDriver | None = None,
        *,
        settings: DBSettings | None = None,
        tracer: TracingProtocol | None = None,
    ) -> None:
        self.driver = driver if driver is not None else InMemoryDriver()
        self.settings = settings or db_settings()
        check_lengths(self.settings)  # the same settings must work against PostgreSQL
        self.tracer = tracer

    def _statement(self) -> contextlib.AbstractContextManager[Statement]:
        return self.driver.statement(self.settings)


def check_limit(limit: int) -> int:
    """A ``LIMIT`` PostgreSQL accepts; a negative one fails as it would there."""
    if limit < 0:
        raise DatabaseError("LIMIT must not be negative", sqlstate="2201W")
    return limit
