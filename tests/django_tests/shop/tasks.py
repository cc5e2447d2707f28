"""Handlers and Django tasks of the test app (imported by the worker's autodiscovery)."""

from __future__ import annotations

import threading

from django.db import connections

from pgqueue_sync import Job
from pgqueue_sync.contrib.django import entrypoint
from pgqueue_sync.contrib.django._compat import task

from .models import Order


@entrypoint("shop.send_confirmation")
def send_confirmation(job: Job) -> None:
    assert job.payload is not None
    Order.objects.filter(pk=int(job.payload)).update(sent=True)


@task
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="emails", priority=5)
def mark_sent(order_id: int) -> str:
    Order.objects.filter(pk=order_id).update(sent=True)
    return f"order {order_id} sent"


@task
def explode(message: str) -> None:
    raise ValueError(message)


@task(takes_context=True)
def with_context(context, label: str) -> dict:
    return {"label": label, "attempt": context.attempt, "id": context.task_result.id}


@task
async def async_add(a: int, b: int) -> int:
    return a + b


@task(takes_context=True, max_attempts=2, retry_delay=0)
def flaky(context) -> int:
    if context.attempt == 1:
        raise ConnectionError("first attempt fails")
    return context.attempt


@task(max_attempts=2, retry_delay=0)
def always_fails() -> None:
    raise KeyError("never works")


@task
def connection_state() -> dict:
    """Whether this thread's connection was closed when the task started; then uses it."""
    closed = connections["default"].connection is None
    Order.objects.exists()
    return {"closed_at_start": closed, "thread": threading.current_thread().name,
            "database": connections["default"].settings_dict["NAME"]}


#: ``stuck`` waits for this (at most its argument in seconds); tests set it in finally.
RELEASE_STUCK = threading.Event()
#: Set when a ``stuck`` run returns, so a test can wait for its late return.
STUCK_RETURNED = threading.Event()


@task(max_attempts=2, retry_delay=0)
def stuck(seconds: float) -> str:
    """Runs past a short QUEUE_TIMEOUT: a task that hangs."""
    try:
        RELEASE_STUCK.wait(seconds)
        return "late"
    finally:
        STUCK_RETURNED.set()
