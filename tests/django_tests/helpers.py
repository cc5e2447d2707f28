"""Shared helpers of the Django tests: a real worker over the test database, table cleanup."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from pgqueue_sync import PgQueuer, SyncPsycopgPoolDriver
from pgqueue_sync.contrib.django.conf import get_settings
from pgqueue_sync.contrib.django.db import worker_connection_params

QUEUE_TABLES = ("queue_table", "queue_table_log", "statistics_table", "results_table")


def worker_connect() -> psycopg.Connection[Any]:
    """An autocommit connection to the (test) database, outside Django."""
    return psycopg.connect(**worker_connection_params("default"), autocommit=True)


def truncate_queue_tables() -> None:
    """Empty the queue's tables (Django's flush skips unmanaged tables)."""
    names = get_settings().db_settings
    tables = sql.SQL(", ").join(names.ident(t) for t in QUEUE_TABLES)
    with worker_connect() as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(tables))


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
