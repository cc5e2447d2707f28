"""Install the queue schema (PgQueuer 1.6's tables, enum, function, trigger) and the results table.

``manage.py migrate`` runs :func:`install_queue_schema` on every database the
app is migrated to that holds the queue (``PGQUEUE_SYNC["DATABASE_ALIAS"]``
and the Tasks backend's alias; other aliases are skipped). A database that
``pgq install`` or ``pgq-sync install`` already prepared is upgraded in place
instead of failing, so Django and PgQueuer processes can share it.

Reversing (``migrate pgqueue_sync zero``) deliberately changes nothing in
the database: the tables may be shared with PgQueuer workers and hold jobs,
and dropping them is not something a routine migration rollback should do.
Drop them explicitly with ``manage.py pgq_sync uninstall``.

The model operations only record Django's state of the unmanaged mirrors
(no DDL). Their ``db_table`` is computed from the same settings as the
models, so ``makemigrations`` stays quiet whatever ``PREFIX``/``SCHEMA`` is.

The migration is not atomic: an upgrade commits new enum labels before the
statements that use them, as ``pgq upgrade`` does. Every step is idempotent,
so an interrupted run is completed by running ``migrate`` again.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import migrations, models

from pgqueue_sync.contrib.django.models import STATUS_CHOICES, STATUS_MAX_LENGTH, db_table

logger = logging.getLogger(__name__)


def install_queue_schema(apps: Any, schema_editor: Any) -> None:
    """Install or upgrade the queue schema on ``schema_editor``'s database (see module doc)."""
    from pgqueue_sync.contrib.django.installer import ensure_schema, queue_aliases

    alias = schema_editor.connection.alias
    if alias not in queue_aliases():
        logger.info("database %r does not hold the queue; not installing it there", alias)
        return
    ensure_schema(alias)


class Migration(migrations.Migration):
    initial = True
    atomic = False
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.RunPython(install_queue_schema, migrations.RunPython.noop, elidable=False),
        migrations.CreateModel(
            name="QueueJob",
            fields=[
                ("id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("priority", models.IntegerField()),
                ("queue_manager_id", models.UUIDField(blank=True, null=True)),
                ("created", models.DateTimeField()),
                ("updated", models.DateTimeField()),
                ("heartbeat", models.DateTimeField()),
                ("execute_after", models.DateTimeField()),
                ("status", models.CharField(choices=STATUS_CHOICES, max_length=STATUS_MAX_LENGTH)),
                ("entrypoint", models.TextField()),
                ("dedupe_key", models.TextField(blank=True, null=True)),
                ("payload", models.BinaryField(blank=True, null=True)),
                ("headers", models.JSONField(blank=True, null=True)),
                ("attempts", models.IntegerField(default=0)),
                ("slot", models.BigIntegerField(blank=True, null=True)),
            ],
            options={
                "verbose_name": "job",
                "verbose_name_plural": "jobs",
                "db_table": db_table("queue_table"),
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="QueueLog",
            fields=[
                ("id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("created", models.DateTimeField()),
                ("job_id", models.BigIntegerField()),
                ("status", models.CharField(choices=STATUS_CHOICES, max_length=STATUS_MAX_LENGTH)),
                ("priority", models.IntegerField()),
                ("entrypoint", models.TextField()),
                ("traceback", models.JSONField(blank=True, null=True)),
                ("aggregated", models.BooleanField(default=False, null=True)),
            ],
            options={
                "verbose_name": "job log entry",
                "verbose_name_plural": "job log",
                "db_table": db_table("queue_table_log"),
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="QueueResult",
            fields=[
                ("job_id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("entrypoint", models.TextField()),
                ("status", models.TextField()),
                ("result", models.JSONField(blank=True, null=True)),
                ("error", models.TextField(blank=True, null=True)),
                ("created", models.DateTimeField(blank=True, null=True)),
                ("finished", models.DateTimeField()),
                ("attempts", models.IntegerField(default=0)),
                ("queue_manager_id", models.UUIDField(blank=True, null=True)),
            ],
            options={
                "verbose_name": "job result",
                "verbose_name_plural": "job results",
                "db_table": db_table("results_table"),
                "managed": False,
            },
        ),
    ]
