"""A project's own subclass of the backend, as projects write to add behaviour."""

from __future__ import annotations

from pgqueue_sync.contrib.django.backend import PgQueueSyncBackend


class ShopBackend(PgQueueSyncBackend):
    """Adds nothing; the worker must serve it like the base class."""
