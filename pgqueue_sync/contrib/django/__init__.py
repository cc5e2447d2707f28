"""pgqueue_sync for Django: enqueue in the request's transaction, a worker command, Tasks.

Add ``"pgqueue_sync.contrib.django"`` to ``INSTALLED_APPS`` (its label is
``pgqueue_sync``), then::

    from pgqueue_sync.contrib.django import enqueue, entrypoint

The Django Tasks backend is
``TASKS = {"default": {"BACKEND": "pgqueue_sync.contrib.django.PgQueueSyncBackend"}}``.
Names are imported lazily, so importing this package touches neither the
database nor the app registry.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DjangoDriver": ".db",
    "django_connection": ".db",
    "worker_connection_params": ".db",
    "enqueue": ".producer",
    "enqueue_on_commit": ".producer",
    "get_queries": ".producer",
    "entrypoint": ".registry",
    "schedule": ".registry",
    "get_settings": ".conf",
    "DjangoConfigurationError": ".errors",
    "PgQueueSyncBackend": ".backend",
    "PgQueueSyncTask": ".backend",
    "create_worker": ".worker",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
