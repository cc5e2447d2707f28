"""What every part of :class:`~pgqueue_sync.queries.Queries` stands on: the
driver, the settings, the tracer and the statements built from the settings."""

from __future__ import annotations

from typing import TypeVar

from ..drivers.base import Driver
from ..settings import DBSettings, db_settings
from ..sql.statements import Statements
from ..tracing import TracingProtocol

_Q = TypeVar("_Q", bound="QueriesBase")


class QueriesBase:
    """The state the parts of :class:`~pgqueue_sync.queries.Queries` share."""

    def __init__(
        self,
        driver: Driver,
        *,
        settings: DBSettings | None = None,
        tracer: TracingProtocol | None = None,
    ) -> None:
        self.driver = driver
        self.settings = settings or db_settings()
        self.statements = Statements(self.settings)
        self.tracer = tracer

    def _on(self: _Q, driver: Driver) -> _Q:
        """These queries over another ``driver`` (a transaction), with the same settings."""
        return type(self)(driver, settings=self.settings)
