"""Work done by `manage.py pgq_sync worker`, which imports this module at start.

Two kinds of job live here:

* ``send_confirmation`` is a plain pgqueue_sync entrypoint: producers call
  ``enqueue("orders.send_confirmation", payload)`` and the worker calls it with
  the :class:`~pgqueue_sync.Job`.
* ``summarize_orders`` is a Django Task (``@task``): producers call
  ``summarize_orders.enqueue()`` and read the outcome with ``get_result()``.
"""

from __future__ import annotations

import logging

from django.utils import timezone
from pgqueue_sync import Job
from pgqueue_sync.contrib.django import entrypoint

from .models import Order

try:
    from django.tasks import task
except ImportError:  # Django 4.2-5.2: the django-tasks backport
    from django_tasks import task

logger = logging.getLogger(__name__)


@entrypoint("orders.send_confirmation")
def send_confirmation(job: Job) -> None:
    """Pretend to e-mail the customer, then record it on the order."""
    order_id = int(job.payload or b"0")
    order = Order.objects.get(pk=order_id)
    logger.info("sending confirmation of order %s to %s", order.pk, order.email)
    Order.objects.filter(pk=order.pk).update(confirmed_at=timezone.now())


@task
def summarize_orders() -> dict[str, int]:
    """Count the orders; the return value is stored and read back with get_result()."""
    total = Order.objects.count()
    confirmed = Order.objects.filter(confirmed_at__isnull=False).count()
    return {"orders": total, "confirmed": confirmed}
