"""JSON views: create an order (row + job in one transaction) and run a Django Task."""

from __future__ import annotations

from django.db import transaction
from django.http import Http404, HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from pgqueue_sync.contrib.django import enqueue

from .models import Order
from .tasks import summarize_orders

try:
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:  # Django 4.2-5.2: the django-tasks backport
    from django_tasks.exceptions import TaskResultDoesNotExist


@csrf_exempt  # so the README's curl commands work; keep CSRF on in real views
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    """Insert an order and its confirmation job; both commit, or neither does."""
    email = request.POST.get("email", "ada@example.com")
    with transaction.atomic():
        order = Order.objects.create(email=email)
        [job_id] = enqueue("orders.send_confirmation", str(order.pk).encode())
        if request.POST.get("fail"):
            # Rolls back the order *and* the job: no worker ever sees it.
            raise ValueError("failing on purpose after enqueueing")
    return JsonResponse({"order": order.pk, "job": job_id}, status=201)


@require_GET
def show_order(request: HttpRequest, order_id: int) -> JsonResponse:
    order = get_object_or_404(Order, pk=order_id)
    confirmed = order.confirmed_at.isoformat() if order.confirmed_at else None
    return JsonResponse({"order": order.pk, "email": order.email, "confirmed_at": confirmed})


@csrf_exempt
@require_POST
def start_report(request: HttpRequest) -> JsonResponse:
    """Enqueue the summarize_orders Django Task; answer with its result id."""
    result = summarize_orders.enqueue()
    return JsonResponse({"result_id": result.id, "status": str(result.status)}, status=202)


@require_GET
def show_report(request: HttpRequest, result_id: str) -> JsonResponse:
    """The task's status, and its return value once it succeeded."""
    try:
        result = summarize_orders.get_result(result_id)
    except TaskResultDoesNotExist:
        raise Http404(f"no task result {result_id!r}") from None
    body: dict[str, object] = {
        "result_id": result.id,
        "status": str(result.status),
        "attempts": result.attempts,
        "errors": [error.exception_class_path for error in result.errors],
    }
    if result.status == "SUCCESSFUL":
        body["return_value"] = result.return_value
    return JsonResponse(body)
