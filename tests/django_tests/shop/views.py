"""A view that creates a row and enqueues its job in one transaction."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse

from pgqueue_sync.contrib.django import enqueue

from .models import Order


def create_order(request: HttpRequest) -> HttpResponse:
    email = request.GET.get("email", "a@example.com")
    with transaction.atomic():
        order = Order.objects.create(email=email)
        [job_id] = enqueue("shop.send_confirmation", str(order.pk).encode())
        if request.GET.get("fail"):
            raise RuntimeError("the view failed after enqueueing")
    return JsonResponse({"order": order.pk, "job": job_id})
