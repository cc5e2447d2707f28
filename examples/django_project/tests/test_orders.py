"""The three ways to test code that enqueues: capture, eager, drain (and a real worker).

Run from examples/django_project: ``pytest`` (needs pytest-django; the test
database is ``test_<NAME>``, created and migrated by pytest-django).
"""

from __future__ import annotations

import pytest
from pgqueue_sync.contrib.django.testing import capture_jobs, drain, eager_jobs

from orders.models import Order
from orders.tasks import summarize_orders


@pytest.mark.django_db
def test_order_enqueues_its_confirmation(client):
    with capture_jobs() as jobs:
        response = client.post("/orders/", {"email": "ada@example.com"})
    order_id = response.json()["order"]
    jobs.assert_enqueued("orders.send_confirmation", payload=str(order_id).encode(), count=1)


@pytest.mark.django_db
def test_failed_view_leaves_neither_order_nor_job(client):
    client.raise_request_exception = False
    response = client.post("/orders/", {"email": "bob@example.com", "fail": "1"})
    assert response.status_code == 500
    assert not Order.objects.exists()
    assert drain().total == 0  # the job was rolled back with the order


@pytest.mark.django_db
def test_eager_confirms_at_once(client):
    with eager_jobs() as runs:
        response = client.post("/orders/", {"email": "ada@example.com"})
    assert runs.entrypoints == ["orders.send_confirmation"]
    assert Order.objects.get(pk=response.json()["order"]).confirmed_at is not None


@pytest.mark.django_db
def test_drain_runs_jobs_and_tasks(client):
    client.post("/orders/", {"email": "ada@example.com"})
    result = summarize_orders.enqueue()
    report = drain()
    assert report.counts == {"successful": 2}
    result.refresh()
    assert result.status == "SUCCESSFUL"
    assert result.return_value == {"orders": 1, "confirmed": 1}


@pytest.mark.django_db
def test_report_view(client, pgqueue_drain):
    result_id = client.post("/reports/").json()["result_id"]
    assert client.get(f"/reports/{result_id}/").json()["status"] == "READY"
    pgqueue_drain()
    body = client.get(f"/reports/{result_id}/").json()
    assert body["status"] == "SUCCESSFUL"
    assert body["return_value"] == {"orders": 0, "confirmed": 0}


@pytest.mark.django_db(transaction=True)
def test_with_the_real_worker(client, pgqueue_worker):
    order_id = client.post("/orders/", {"email": "ada@example.com"}).json()["order"]
    pgqueue_worker()  # the real threaded worker, in drain mode, on its own connections
    assert Order.objects.get(pk=order_id).confirmed_at is not None
