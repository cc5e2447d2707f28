"""The read-only queue models and their admin: pages, actions, refused writes, names."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.db import models
from django.test import RequestFactory
from django.test.utils import isolate_apps
from django.urls import reverse

from pgqueue_sync import DBSettings, Queries
from pgqueue_sync.contrib.django import enqueue, get_queries
from pgqueue_sync.contrib.django.admin import QueueJobAdmin, json_text, payload_text
from pgqueue_sync.contrib.django.conf import get_settings
from pgqueue_sync.contrib.django.db import DjangoDriver
from pgqueue_sync.contrib.django.installer import ensure_schema
from pgqueue_sync.contrib.django.models import (
    STATUS_CHOICES,
    QueueJob,
    QueueLog,
    QueueResult,
    ReadOnlyModel,
    ReadOnlyModelError,
    db_table,
)
from pgqueue_sync.models import TracebackRecord
from pgqueue_sync.types import JOB_STATUSES, JobId

pytestmark = pytest.mark.django_db


def _changelist(model: type[models.Model]) -> str:
    return str(reverse(f"admin:pgqueue_sync_{model._meta.model_name}_changelist"))


def _hold_as_failed(job_id: JobId) -> None:
    """Put a job in the state a worker with ``on_failure='hold'`` leaves it: ``failed``."""
    record = TracebackRecord(
        job_id=job_id, timestamp=datetime.now(timezone.utc),
        exception_type="ValueError", exception_message="boom", traceback="Traceback ...",
    )
    assert get_queries().log_jobs([(job_id, "failed", record)]) == [job_id]


def _messages(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


# -- models ----------------------------------------------------------------------------------


def test_models_mirror_the_configured_tables() -> None:
    names = get_settings().db_settings
    assert QueueJob._meta.db_table == names.bare_name("queue_table")
    assert QueueLog._meta.db_table == names.bare_name("queue_table_log")
    assert QueueResult._meta.db_table == names.bare_name("results_table")
    for model in (QueueJob, QueueLog, QueueResult):
        assert model._meta.managed is False
    assert [value for value, _ in STATUS_CHOICES] == list(JOB_STATUSES)


def test_models_read_jobs_log_and_results() -> None:
    [job_id] = enqueue("shop.admin_read", b"\x00\x01", headers={"k": [1, 2]})
    job = QueueJob.objects.get(id=job_id)
    assert (job.entrypoint, job.status, job.attempts) == ("shop.admin_read", "queued", 0)
    assert bytes(job.payload) == b"\x00\x01"
    assert job.headers == {"k": [1, 2]}
    assert (job.created.tzinfo is not None) is settings.USE_TZ
    [entry] = QueueLog.objects.filter(job_id=job_id)
    assert (entry.status, entry.entrypoint, entry.traceback) == ("queued", "shop.admin_read", None)
    assert QueueResult.objects.filter(job_id=job_id).count() == 0


def test_writes_through_the_orm_are_refused() -> None:
    [job_id] = enqueue("shop.admin_readonly")
    job = QueueJob.objects.get(id=job_id)
    job.priority = 5
    refusals = [
        job.save,
        job.delete,
        lambda: QueueJob.objects.filter(id=job_id).update(priority=9),
        lambda: QueueJob.objects.filter(id=job_id).delete(),
        lambda: QueueJob.objects.create(id=10**9, entrypoint="x"),
        lambda: QueueJob.objects.bulk_create([QueueJob(id=10**9, entrypoint="x")]),
        lambda: QueueJob.objects.bulk_update([job], ["priority"]),
        lambda: QueueJob.objects.get_or_create(id=job_id),
        lambda: QueueJob.objects.update_or_create(id=job_id, defaults={"priority": 1}),
        lambda: QueueLog.objects.all().delete(),
        lambda: QueueResult(job_id=1, entrypoint="x", status="successful").save(),
    ]
    for refuse in refusals:
        with pytest.raises(ReadOnlyModelError, match="read-only view of the job queue"):
            refuse()
    # Nothing changed behind the refusals.
    assert QueueJob.objects.get(id=job_id).priority == 0


def test_schema_qualified_names_work_through_the_orm() -> None:
    # A queue in its own PostgreSQL schema (rolled back with the test's transaction).
    names = DBSettings(db_schema="pgqs_admin_schema", prefix="adm_")
    ensure_schema("default", names)
    table = db_table("queue_table", names)
    assert table == '"pgqs_admin_schema"."adm_pgqueuer"'

    with isolate_apps("pgqueue_sync"):

        class SchemaJob(ReadOnlyModel):
            id = models.BigIntegerField(primary_key=True)
            entrypoint = models.TextField()
            status = models.CharField(max_length=32, choices=STATUS_CHOICES)

            class Meta:
                app_label = "pgqueue_sync"
                managed = False
                db_table = table

        Queries(DjangoDriver("default"), settings=names).enqueue(["a.one", "b.two"],
                                                                 [None, None])
        found = SchemaJob.objects.filter(status="queued", entrypoint__icontains="TWO")
        assert list(found.values_list("entrypoint", flat=True)) == ["b.two"]
        assert SchemaJob.objects.order_by("-id").first().entrypoint == "b.two"


# -- rendering ---------------------------------------------------------------------------------


def test_payload_text_is_bounded_and_safe() -> None:
    assert payload_text(None) == "-"
    assert payload_text(b"hello") == "'hello'"
    assert payload_text(memoryview(b"\xff\x00")) == "hex ff 00"
    long = payload_text(b"x" * 1000, limit=10)
    assert long == "'xxxxxxxxxx' ... (1000 bytes)"
    assert json_text({"b": 1, "a": [1]}) == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}'
    assert json_text(None) == "-"


# -- pages -------------------------------------------------------------------------------------


def test_changelists_load(admin_client: Any) -> None:
    [job_id] = enqueue("shop.admin_page", b"payload-text")
    for model in (QueueJob, QueueLog, QueueResult):
        response = admin_client.get(_changelist(model))
        assert response.status_code == 200, model
    body = admin_client.get(_changelist(QueueJob)).content.decode()
    assert "shop.admin_page" in body
    assert "Requeue held jobs" in body and "Cancel jobs" in body
    assert "Delete selected" not in body
    assert f'value="{job_id}"' in body


def _listed(response: Any) -> list[str]:
    """The entrypoints on a change-list page (its result rows, not its filter sidebar)."""
    assert response.status_code == 200
    return sorted(obj.entrypoint for obj in response.context["cl"].result_list)


def test_changelist_filters_and_search(admin_client: Any) -> None:
    enqueue(["shop.admin_alpha", "shop.admin_beta"], [None, None])
    url = _changelist(QueueJob)
    assert _listed(admin_client.get(url, {"q": "ALPHA"})) == ["shop.admin_alpha"]
    assert _listed(admin_client.get(url, {"entrypoint": "shop.admin_beta"})) == ["shop.admin_beta"]
    assert _listed(admin_client.get(url, {"status__exact": "failed"})) == []
    both = _listed(admin_client.get(url, {"status__exact": "queued", "q": "admin_"}))
    assert both == ["shop.admin_alpha", "shop.admin_beta"]
    log = admin_client.get(_changelist(QueueLog), {"status__exact": "queued", "q": "beta"})
    assert _listed(log) == ["shop.admin_beta"]


def test_detail_page_is_read_only_and_escapes_the_payload(admin_client: Any) -> None:
    [job_id] = enqueue("shop.admin_detail", b"<script>x</script>", headers={"trace": "t-1"})
    url = reverse("admin:pgqueue_sync_queuejob_change", args=[job_id])
    response = admin_client.get(url)
    assert response.status_code == 200
    body = response.content.decode()
    assert "&lt;script&gt;x&lt;/script&gt;" in body and "<script>x</script>" not in body
    assert "&quot;trace&quot;: &quot;t-1&quot;" in body
    assert 'name="_save"' not in body  # no save button: view only
    assert admin_client.post(url, {"priority": "9"}).status_code == 403
    assert admin_client.get(reverse("admin:pgqueue_sync_queuejob_add")).status_code == 403
    delete = reverse("admin:pgqueue_sync_queuejob_delete", args=[job_id])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert QueueJob.objects.filter(id=job_id).exists()


def test_log_detail_shows_the_traceback(admin_client: Any) -> None:
    [job_id] = enqueue("shop.admin_tb")
    _hold_as_failed(job_id)
    entry = QueueLog.objects.get(job_id=job_id, status="failed")
    url = reverse("admin:pgqueue_sync_queuelog_change", args=[entry.id])
    body = admin_client.get(url).content.decode()
    assert "&quot;exception_type&quot;: &quot;ValueError&quot;" in body


# -- actions -----------------------------------------------------------------------------------


def test_requeue_action_requeues_held_jobs_only(admin_client: Any) -> None:
    held, queued = enqueue(["shop.admin_held", "shop.admin_queued"], [None, None])
    _hold_as_failed(held)
    assert QueueJob.objects.get(id=held).status == "failed"
    response = admin_client.post(
        _changelist(QueueJob),
        {"action": "requeue_held_jobs", "_selected_action": [str(held), str(queued)]},
        follow=True,
    )
    assert response.status_code == 200
    assert _messages(response) == [
        "Requeued 1 held job.",
        "1 selected job was not held (status 'failed') and was left alone.",
    ]
    job = QueueJob.objects.get(id=held)
    assert (job.status, job.attempts) == ("queued", 0)
    assert QueueJob.objects.get(id=queued).status == "queued"
    statuses = list(QueueLog.objects.filter(job_id=held).order_by("id")
                    .values_list("status", flat=True))
    assert statuses == ["queued", "failed", "queued"]


def test_cancel_action_deletes_and_logs_canceled(admin_client: Any) -> None:
    first, second = enqueue(["shop.admin_cancel", "shop.admin_cancel"], [None, None])
    response = admin_client.post(
        _changelist(QueueJob),
        {"action": "cancel_jobs", "_selected_action": [str(first), str(second)]},
        follow=True,
    )
    assert _messages(response) == ["Cancelled 2 jobs."]
    assert not QueueJob.objects.filter(id__in=[first, second]).exists()
    canceled = QueueLog.objects.filter(job_id__in=[first, second], status="canceled")
    assert sorted(canceled.values_list("job_id", flat=True)) == [first, second]


def test_actions_need_the_change_permission(client: Any) -> None:
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_queuejob"))
    client.force_login(viewer)
    [job_id] = enqueue("shop.admin_viewer")
    url = _changelist(QueueJob)
    body = client.get(url).content.decode()
    assert "shop.admin_viewer" in body and "Cancel jobs" not in body
    client.post(url, {"action": "cancel_jobs", "_selected_action": [str(job_id)]})
    assert QueueJob.objects.filter(id=job_id).exists()

    request = RequestFactory().get(url)
    request.user = User.objects.get(username="viewer")
    from django.contrib import admin

    model_admin = admin.site._registry[QueueJob]
    assert isinstance(model_admin, QueueJobAdmin)
    assert "cancel_jobs" not in model_admin.get_actions(request)
    viewer.user_permissions.add(Permission.objects.get(codename="change_queuejob"))
    request.user = User.objects.get(username="viewer")  # fresh permission cache
    assert {"cancel_jobs", "requeue_held_jobs"} <= set(model_admin.get_actions(request))
    assert not model_admin.has_change_permission(request)
