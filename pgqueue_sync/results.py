"""Optional job return values: the opt-in results table, reading and pruning.

A worker started with ``store_results=True`` (or an entrypoint registered with
``store_result=True``) writes one row per finished job into
``{prefix}pgqueue_sync_results``, in the same statement that records the
job's outcome, so no extra round trip is made and a result is visible exactly
when the job's terminal status is. The table is pgqueue_sync's own; PgQueuer's
four tables are untouched and PgQueuer ignores it (see :mod:`.sql.results`).

Install it with ``pgq-sync install --results`` or ``pgq-sync results install``
(or :meth:`Results.install`); read with :meth:`Results.get_result`; prune with
:meth:`Results.prune_results` or ``pgq-sync results prune --older-than 7d``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

from .drivers.base import Driver
from .errors import ConfigurationError, SchemaNotInstalledError
from .models import Job
from .settings import DBSettings, db_settings
from .sql import ddl
from .sql import results as results_sql
from .types import JOB_STATUS, JobId

logger = logging.getLogger(__name__)

#: Rows deleted per statement by :meth:`Results.prune_results`.
PRUNE_BATCH_SIZE = 10_000

# jsonb rejects the NUL character (``\u0000``) inside strings; an odd number of
# backslashes before ``u0000`` is an escaped NUL, an even number a literal text.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

_INSTALL_HINT = "run 'pgq-sync results install' (or Results.install()) first"


@dataclasses.dataclass(frozen=True)
class JobResult:
    """One stored outcome, as :meth:`Results.get_result` returns it.

    ``result`` is the handler's return value decoded from JSON (``None`` when it
    returned ``None`` or when nothing could be stored). ``error`` is
    ``"ExceptionType: message"`` for ``exception`` and ``failed`` outcomes, or a
    note saying why a return value was not stored. ``created`` is when the job
    was enqueued, ``finished`` when its outcome was written; ``attempts`` counts
    its earlier retries.
    """

    job_id: JobId
    entrypoint: str
    status: JOB_STATUS
    result: Any
    error: str | None
    created: datetime | None
    finished: datetime
    attempts: int
    queue_manager_id: uuid.UUID | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobResult:
        """Build from a row of the results table."""
        return cls(
            job_id=JobId(row["job_id"]),
            entrypoint=row["entrypoint"],
            status=row["status"],
            result=row["result"],
            error=row["error"],
            created=row["created"],
            finished=row["finished"],
            attempts=row["attempts"],
            queue_manager_id=row["queue_manager_id"],
        )


@dataclasses.dataclass(frozen=True)
class StoredResult:
    """What the worker hands to the outcome write for one job that stores its result.

    ``value`` is the return value as JSON text (``None``: no value, e.g. a
    failure); ``note`` says why a value could not be stored.
    """

    job: Job
    value: str | None = None
    note: str | None = None


def encode_result(job: Job, value: Any) -> StoredResult:
    """``value`` as a :class:`StoredResult`; never raises.

    A value that JSON (as PostgreSQL's ``jsonb`` accepts it) cannot represent
    is logged at WARNING, without the value, and stored as a note instead; the
    job's outcome is unaffected.
    """
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")  # lone surrogates would fail the whole write
    except Exception as exc:  # any failure of the user's value only loses the value
        return _unstorable(job, value, type(exc).__name__)
    if "\\u0000" in text and _JSON_NUL.search(text):  # the regex only where needed
        return _unstorable(job, value, "NUL character")
    return StoredResult(job, text)


def _unstorable(job: Job, value: Any, why: str) -> StoredResult:
    kind = type(value).__name__
    logger.warning(
        "job %d (%r) returned a %s that is not JSON-serialisable (%s); storing a note instead",
        job.id, job.entrypoint, kind, why,
    )
    return StoredResult(job, None, f"result not stored: {kind} is not JSON-serialisable ({why})")


class QueriesLike(Protocol):
    """What :class:`Results` takes from a :class:`~pgqueue_sync.queries.Queries`
    passed in place of a driver: its driver and its settings. (A protocol, so that
    this module, which the queries import, does not import them back.)"""

    @property
    def driver(self) -> Driver: ...

    @property
    def settings(self) -> DBSettings: ...


class Results:
    """The results table of one set of :class:`DBSettings`, through a driver.

    ``connection`` is a :class:`~pgqueue_sync.drivers.Driver` or a
    :class:`~pgqueue_sync.queries.Queries` (whose driver and settings are
    used). Every method is one or a few blocking statements and thread-safe
    when the driver is. Reading a missing table raises
    :class:`SchemaNotInstalledError` with the command that creates it.
    """

    def __init__(
        self, connection: Driver | QueriesLike, settings: DBSettings | None = None
    ) -> None:
        driver = getattr(connection, "driver", None)
        if driver is not None and hasattr(connection, "job_status"):
            self.driver: Driver = driver
            settings = settings or connection.settings  # type: ignore[union-attr]
        else:
            self.driver = connection  # type: ignore[assignment]
        self.settings = settings or db_settings()

    def install(self) -> None:
        """Create the table and its index in one transaction (idempotent)."""
        with self.driver.transaction() as tx:
            # Skip CREATE SCHEMA for an existing schema: it needs CREATE on the database.
            create_schema = not self._schema_exists(tx)
            for statement in results_sql.install_statements(
                self.settings, create_schema=create_schema
            ):
                tx.execute(statement)

    def _schema_exists(self, driver: Driver) -> bool:
        if not self.settings.db_schema:
            return True
        query, params = ddl.namespace_exists(self.settings)
        return bool(driver.fetch(query, params)[0]["present"])

    def uninstall(self) -> None:
        """Drop the table and every stored result (``IF EXISTS``)."""
        with self.driver.transaction() as tx:
            for statement in results_sql.uninstall_statements(self.settings):
                tx.execute(statement)

    def is_installed(self) -> bool:
        """True when the results table exists."""
        query, params = results_sql.exists(self.settings)
        return bool(self.driver.fetch(query, params)[0]["present"])

    def get_result(self, job_id: int) -> JobResult | None:
        """The stored outcome of ``job_id``; ``None`` if none was stored (yet).

        Nothing is stored for jobs still queued or running, for retries, for
        jobs whose worker did not store results, and for jobs cancelled
        through :meth:`Queries.mark_job_as_cancelled` before they finished.
        """
        return self.get_results([job_id]).get(JobId(int(job_id)))

    def get_results(self, ids: Iterable[int]) -> dict[JobId, JobResult]:
        """The stored outcomes of those ``ids`` that have one, by job id."""
        params = {"ids": [int(i) for i in ids]}
        try:
            rows = self.driver.fetch(results_sql.select_results(self.settings), params)
        except SchemaNotInstalledError as exc:
            raise self._not_installed() from exc
        return {JobId(r["job_id"]): JobResult.from_row(r) for r in rows}

    def prune_results(
        self, older_than: timedelta | float, *, batch_size: int = PRUNE_BATCH_SIZE
    ) -> int:
        """Delete results finished more than ``older_than`` ago; returns how many.

        Deletes in batches of ``batch_size`` rows, each its own statement (and,
        on an autocommit connection, its own transaction), so a large backlog
        never holds one long lock. Safe to run concurrently with workers and
        with another prune.
        """
        age = older_than if isinstance(older_than, timedelta) else timedelta(seconds=older_than)
        if age < timedelta(0):
            raise ConfigurationError(f"older_than must be >= 0, got {age}")
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        query = results_sql.prune_batch(self.settings)
        total = 0
        while True:
            try:
                rows = self.driver.fetch(query, {"age": age, "batch": batch_size})
            except SchemaNotInstalledError as exc:
                raise self._not_installed() from exc
            deleted = int(rows[0]["count"])
            total += deleted
            if deleted < batch_size:
                return total

    def _not_installed(self) -> SchemaNotInstalledError:
        name = self.settings.qualified_text("results_table")
        return SchemaNotInstalledError(
            f"the results table {name!r} does not exist; {_INSTALL_HINT}"
        )

    def install_sql(self) -> str:
        """The install as an SQL script."""
        return install_script(self.settings)


def install_script(settings: DBSettings) -> str:
    """Create the results table, as an offline SQL script."""
    return ddl.render_script(results_sql.install_statements(settings))


def uninstall_script(settings: DBSettings) -> str:
    """Drop the results table, as an offline SQL script."""
    return ddl.render_script(results_sql.uninstall_statements(settings))


def missing_table_problem(driver: Driver, settings: DBSettings) -> str | None:
    """A message naming the fix when the results table is missing, else ``None``."""
    if Results(driver, settings).is_installed():
        return None
    name = settings.qualified_text("results_table")
    return f"the results table {name!r} is missing; {_INSTALL_HINT}"


__all__ = ["JobResult", "Results", "StoredResult", "encode_result"]
