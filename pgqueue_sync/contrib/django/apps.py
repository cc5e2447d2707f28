"""The reusable app: ``INSTALLED_APPS += ["pgqueue_sync.contrib.django"]``."""

from __future__ import annotations

from django.apps import AppConfig


class PgQueueSyncConfig(AppConfig):
    """Registers the system checks; never touches the database at start-up.

    The label ``pgqueue_sync`` is permanent: migrations and admin URLs use it.
    """

    name = "pgqueue_sync.contrib.django"
    label = "pgqueue_sync"
    verbose_name = "Job queue"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Importing registers the system checks (idempotent: Django keeps a set).
        from . import (
            _compat,  # noqa: F401
            checks,  # noqa: F401
        )

        if _compat.HAS_TASKS:
            # Django collects a Tasks backend's check() only once its Tasks
            # package has been imported; _compat has done that.
            pass
