"""Fixtures shared by the Django tests (pgqueue_sync's own pytest plugin provides the rest)."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgqueue_sync.contrib.django.conf import get_settings

from .helpers import truncate_queue_tables, worker_connect

THREAD_EXIT_TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def no_threads_left() -> Iterator[None]:
    """Fail a test that leaves a thread running (waiting a bounded time for stragglers)."""
    before = set(threading.enumerate())
    yield
    # asgiref's async_to_sync (async tasks) leaves a one-thread executor behind
    # that ends once collected; collect it rather than report it.
    gc.collect()
    for thread in set(threading.enumerate()) - before:
        thread.join(THREAD_EXIT_TIMEOUT)
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not left, f"threads left running: {left}"


@pytest.fixture(autouse=True)
def root_log_level() -> Iterator[None]:
    # The worker command sets the root logger's level, as `pgq-sync run` does.
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


@pytest.fixture
def committed() -> Iterator[None]:
    """For transactional tests: Django's flush leaves the (unmanaged) queue tables alone."""
    try:
        yield
    finally:
        truncate_queue_tables()


@pytest.fixture
def listener() -> Iterator[psycopg.Connection[Any]]:
    """A connection LISTENing on the queue's channel (the worker's settings)."""
    conn = worker_connect()
    try:
        channel = sql.Identifier(get_settings().db_settings.channel)
        conn.execute(sql.SQL("LISTEN {}").format(channel))
        yield conn
    finally:
        conn.close()
