"""Read-only Django models over the queue's tables, for the admin and for reporting.

The models are *unmanaged* mirrors (``Meta.managed = False``): Django never
creates, alters or flushes these tables. They are installed by this app's
migration (the same DDL as ``pgq-sync install``) and changed only through
:class:`~pgqueue_sync.Queries` (``manage.py pgq_sync ...``, the admin
actions, :func:`~pgqueue_sync.contrib.django.get_queries`). Every ORM write —
``save()``, ``delete()``, ``create()``, ``update()``, ``bulk_create()`` ... —
raises :class:`ReadOnlyModelError`, because the queue's invariants (the log
row for every transition, the NOTIFY, dedupe keys, concurrency slots) live in
that SQL, not in the ORM.

Reads go to ``PGQUEUE_SYNC["DATABASE_ALIAS"]`` unless a query says
``.using()``. Table names follow ``PGQUEUE_SYNC["PREFIX"]``/``["SCHEMA"]``
(and the ``PGQUEUER_*`` variables) *as they are when Django starts*: Django
fixes ``db_table`` when the model class is created, so ``override_settings``
does not move them. With a schema the names are qualified
(``'"queue"."pgqueuer"'``, a form Django's PostgreSQL backend passes through
unquoted), so the admin works whatever the connection's ``search_path`` is;
without one they are bare and resolve through ``search_path``, as PgQueuer's do.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from django.db import models

from ...errors import ConfigurationError, PgqException
from ...settings import DBSettings
from ...types import JOB_STATUSES
from .conf import get_settings

logger = logging.getLogger(__name__)

#: ``status`` choices: the ``pgqueuer_status`` enum labels, in their database order.
STATUS_CHOICES: list[tuple[str, str]] = [(label, label) for label in JOB_STATUSES]
#: Longest enum label, with room for labels a later PgQueuer may add.
STATUS_MAX_LENGTH = 32


class ReadOnlyModelError(PgqException):
    """The queue models are read-only: change jobs through ``get_queries()``, not the ORM."""


def configured_names() -> DBSettings:
    """The object names of the current ``PGQUEUE_SYNC`` setting.

    An invalid setting falls back to the ``PGQUEUER_*`` defaults (logged), so
    that Django still starts and the system checks (``pgqueue_sync.E002``,
    ``E003``) can report the mistake instead of an import error.
    """
    try:
        return get_settings().db_settings
    except ConfigurationError as exc:
        logger.warning("invalid PGQUEUE_SYNC setting (%s); models use the default names", exc)
    try:
        return DBSettings.from_env()
    except ConfigurationError:
        return DBSettings()


def db_table(field: str, names: DBSettings | None = None) -> str:
    """``Meta.db_table`` for the object in the :class:`DBSettings` ``field``.

    ``"queue_table"`` -> ``pgqueuer``, or ``'"sch"."pgqueuer"'`` with a
    schema. Parts are lower-cased as :meth:`DBSettings.ident` does, since
    PgQueuer writes them unquoted and PostgreSQL folds them. The parts are
    validated identifiers, so quoting them cannot inject anything.
    """
    names = names if names is not None else configured_names()
    parts = [part.lower() for part in names.qualified_parts(field)]
    if len(parts) == 1:
        return parts[0]
    return ".".join(f'"{part}"' for part in parts)


def _refuse(model: type[models.Model] | None, operation: str) -> NoReturn:
    name = model.__name__ if model is not None else "queue model"
    raise ReadOnlyModelError(
        f"{name}.{operation}() is refused: {name} is a read-only view of the job queue; "
        "change jobs through pgqueue_sync.contrib.django.get_queries() (enqueue, "
        "requeue_jobs, mark_job_as_cancelled, clear_queue, ...) or manage.py pgq_sync"
    )


class ReadOnlyQuerySet(models.QuerySet):
    """A QuerySet whose writing methods raise :class:`ReadOnlyModelError`."""

    def create(self, **kwargs: Any) -> NoReturn:
        _refuse(self.model, "create")

    def bulk_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(self.model, "bulk_create")

    def bulk_update(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(self.model, "bulk_update")

    def update(self, **kwargs: Any) -> NoReturn:
        _refuse(self.model, "update")

    def update_or_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(self.model, "update_or_create")

    def get_or_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(self.model, "get_or_create")

    def delete(self) -> NoReturn:
        _refuse(self.model, "delete")

    def _update(self, values: Any) -> NoReturn:
        _refuse(self.model, "update")

    def _raw_delete(self, using: Any) -> NoReturn:
        _refuse(self.model, "delete")


class ReadOnlyManager(models.Manager.from_queryset(ReadOnlyQuerySet)):  # type: ignore[misc]
    """Reads from ``PGQUEUE_SYNC["DATABASE_ALIAS"]`` unless ``db_manager()``/``using()`` says."""

    def get_queryset(self) -> ReadOnlyQuerySet:
        queryset = super().get_queryset()
        if self._db is None:
            queryset = queryset.using(get_settings().database_alias)
        return queryset


class ReadOnlyModel(models.Model):
    """Base of the queue mirrors: instance writes raise :class:`ReadOnlyModelError`."""

    objects = ReadOnlyManager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(type(self), "save")

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse(type(self), "delete")


class QueueJob(ReadOnlyModel):
    """A row of the queue table: a job ``queued``, running (``picked``) or held (``failed``).

    Finished jobs leave this table; their history is in :class:`QueueLog`.
    """

    id = models.BigIntegerField(primary_key=True)
    priority = models.IntegerField()
    queue_manager_id = models.UUIDField(null=True, blank=True)
    created = models.DateTimeField()
    updated = models.DateTimeField()
    heartbeat = models.DateTimeField()
    execute_after = models.DateTimeField()
    status = models.CharField(max_length=STATUS_MAX_LENGTH, choices=STATUS_CHOICES)
    entrypoint = models.TextField()
    dedupe_key = models.TextField(null=True, blank=True)
    payload = models.BinaryField(null=True, blank=True)
    headers = models.JSONField(null=True, blank=True)
    attempts = models.IntegerField(default=0)
    slot = models.BigIntegerField(null=True, blank=True)

    class Meta:
        managed = False
        db_table = db_table("queue_table")
        verbose_name = "job"
        verbose_name_plural = "jobs"

    def __str__(self) -> str:
        return f"job {self.id} ({self.entrypoint}, {self.status})"


class QueueLog(ReadOnlyModel):
    """A row of the log table: one status transition of one job."""

    id = models.BigIntegerField(primary_key=True)
    created = models.DateTimeField()
    job_id = models.BigIntegerField()
    status = models.CharField(max_length=STATUS_MAX_LENGTH, choices=STATUS_CHOICES)
    priority = models.IntegerField()
    entrypoint = models.TextField()
    traceback = models.JSONField(null=True, blank=True)
    aggregated = models.BooleanField(null=True, default=False)

    class Meta:
        managed = False
        db_table = db_table("queue_table_log")
        verbose_name = "job log entry"
        verbose_name_plural = "job log"

    def __str__(self) -> str:
        return f"job {self.job_id} {self.status} at {self.created:%Y-%m-%d %H:%M:%S}"


class QueueResult(ReadOnlyModel):
    """A row of pgqueue_sync's results table (``{prefix}pgqueue_sync_results``): an outcome."""

    job_id = models.BigIntegerField(primary_key=True)
    entrypoint = models.TextField()
    status = models.TextField()
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)
    created = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField()
    attempts = models.IntegerField(default=0)
    queue_manager_id = models.UUIDField(null=True, blank=True)

    class Meta:
        managed = False
        db_table = db_table("results_table")
        verbose_name = "job result"
        verbose_name_plural = "job results"

    def __str__(self) -> str:
        return f"result of job {self.job_id} ({self.status})"
