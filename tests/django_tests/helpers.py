"""Shared helpers of the Django tests: a real worker over the test database, table cleanup."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from pgqueue_sync import PgQueuer, SyncPsycopgPoolDriver
from pgqueue_sync.contrib.django.conf import get_settings
from pgqueue_sync.contrib.django.db import worker_connection_params
from pgqueue_sync.contrib.django.pytest_plugin import truncate_queue_tables

__all__ = ["drain_with_worker", "truncate_queue_tables", "worker_connect"]


def worker_connect() -> psycopg.Connection[Any]:
    """An autocommit connection to the (test) database, outside Django."""
    return psycopg.connect(**worker_connection_params("default"), autocommit=True)


def drain_with_worker(register: Any, **run_options: Any) -> PgQueuer:
    """Run a real threaded worker in drain mode until no eligible work remains.

    ``register(pgq)`` registers the entrypoints. Blocks; the pool is closed on return.
    """
    params = worker_connection_params("default")
    options = {"mode": "drain", "dequeue_timeout": 0.5, "shutdown_timeout": 10.0}
    with ConnectionPool(kwargs={**params, "autocommit": True}, min_size=1, max_size=6,
                        open=True, name="test-worker") as pool:
        pgq = PgQueuer(SyncPsycopgPoolDriver(pool), settings=get_settings().db_settings)
        register(pgq)
        pgq.run(**{**options, **run_options})
        return pgq
