"""The read-only queue models and their admin: pages, actions, refused writes, names."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.db import models
from django.test import RequestFactory
from django.test.utils import isolate_apps
from django.urls import reverse
from django.utils import timezone as dj_timezone

from pgqueue_sync import DBSettings, Queries
from pgqueue_sync.contrib.django import enqueue, get_queries
from pgqueue_sync.contrib.django.admin import QueueJobAdmin
from pgqueue_sync.contrib.django.admin_display import (
    cut_text,
    error_text,
    json_text,
    name_html,
    payload_text,
    time_text,
    traceback_text,
)
from pgqueue_sync.contrib.django.admin_filters import QUEUE_TABLE_STATUSES, RESULTS_TABLE_STATUSES
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


def _hold_as_failed(job_id: JobId, message: str = "boom",
                    traceback: str = "Traceback ...") -> None:
    """Put a job in the state a worker with ``on_failure='hold'`` leaves it: ``failed``."""
    record = TracebackRecord(
        job_id=job_id, timestamp=datetime.now(timezone.utc),
        exception_type="ValueError", exception_message=message, traceback=traceback,
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
    traceback = 'Traceback (most recent call last):\n  File "x.py", line 1\n<b>ValueError</b>\n'
    _hold_as_failed(job_id, message="bad <input>", traceback=traceback)
    entry = QueueLog.objects.get(job_id=job_id, status="failed")
    url = reverse("admin:pgqueue_sync_queuelog_change", args=[entry.id])
    body = admin_client.get(url).content.decode()
    # Real line breaks in a <pre>, escaped; not the JSON string with its "\n" escapes.
    assert (
        'Traceback (most recent call last):\n  File &quot;x.py&quot;, line 1\n'
        "&lt;b&gt;ValueError&lt;/b&gt;\n</pre>"
    ) in body
    assert '<pre class="pgqs-traceback"' in body
    assert "\\n" not in body
    assert "ValueError: bad &lt;input&gt;</pre>" in body
    assert f"&quot;job_id&quot;: {job_id}" in body  # the record's other keys
    job_page = reverse("admin:pgqueue_sync_queuejob_change", args=[job_id])
    assert f'href="{job_page}"' in body  # the job is still in the queue (held)


def test_log_detail_bounds_a_huge_traceback(admin_client: Any) -> None:
    [job_id] = enqueue("shop.admin_tb_huge")
    frames = "".join(f'  File "deep.py", line {n}, in f\n' for n in range(20_000))
    _hold_as_failed(job_id, message="m" * 50_000,
                    traceback="Traceback (most recent call last):\n" + frames + "RecursionError\n")
    entry = QueueLog.objects.get(job_id=job_id, status="failed")
    body = admin_client.get(
        reverse("admin:pgqueue_sync_queuelog_change", args=[entry.id])).content.decode()
    assert "Traceback (most recent call last):" in body and "RecursionError" in body
    assert "characters omitted) ..." in body
    assert f"({len('ValueError: ') + 50_000} characters)" in body  # the error, cut
    assert len(body) < 100_000
    listing = admin_client.get(_changelist(QueueLog), {"job_id": job_id}).content.decode()
    assert len(listing) < 60_000


def test_rendering_helpers_are_bounded_and_escaped() -> None:
    assert cut_text("abcdef", 3) == "abc ... (6 characters)"
    assert cut_text("abc", 3) == "abc"
    assert traceback_text("x" * 10, head=3, tail=4) == "xxx\n... (3 characters omitted) ...\nxxxx"
    assert traceback_text("short", head=3, tail=4) == "short"
    assert error_text(None) == ""
    assert error_text({"exception_type": "KeyError", "exception_message": ""}) == "KeyError"
    assert error_text({"exception_type": "E", "exception_message": "m"}) == "E: m"
    assert error_text(["not", "a", "record"]) == '["not", "a", "record"]'
    moment = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)
    # (timezone.override, not override_settings: changing TIME_ZONE closes Django's pool.)
    with dj_timezone.override(ZoneInfo("Europe/Oslo")):
        assert time_text(moment) == "2024-05-06 09:08:09"
    assert time_text(moment.replace(tzinfo=None)) == "2024-05-06 07:08:09"
    assert time_text(None) == "-"
    name = str(name_html("<a>.b_c:d"))
    assert name == '<span class="pgqs-name">&lt;a&gt;.<wbr>b_<wbr>c:<wbr>d</span>'
    assert str(name_html("x" * 20)).count("<wbr>") == 1  # a long run breaks too


def test_log_list_shows_errors_seconds_and_job_links(admin_client: Any) -> None:
    held, finished = enqueue(["shop.admin_log_held", "shop.admin_log_done"], [None, None])
    _hold_as_failed(held, message="card <declined>\n  for order 42")
    get_queries().mark_job_as_cancelled([finished])
    response = admin_client.get(_changelist(QueueLog))
    body = response.content.decode()
    assert 'class="column-error_short"' in body
    assert ">ValueError: card &lt;declined&gt; for order 42</span>" in body  # one line
    entry = QueueLog.objects.get(job_id=held, status="failed")
    assert re.search(r"<span[^>]*>\d{4}-\d{2}-\d{2}</span> <span[^>]*>\d{2}:\d{2}:\d{2}</span>",
                     body)
    created = entry.created
    if settings.USE_TZ:
        created = dj_timezone.localtime(created)
    assert f'datetime="{created.isoformat()}"' in body
    job_page = reverse("admin:pgqueue_sync_queuejob_change", args=[held])
    assert f'<a class="pgqs-job" href="{job_page}"' in body
    assert f'href="{_changelist(QueueLog)}?job_id={held}"' in body
    # The cancelled job left the queue: its id is plain text, its log rows are linked.
    gone = reverse("admin:pgqueue_sync_queuejob_change", args=[finished])
    assert f'href="{gone}"' not in body
    assert f'title="job {finished} is no longer in the queue"' in body
    assert f'href="{_changelist(QueueLog)}?job_id={finished}"' in body


def test_log_rows_of_one_job(admin_client: Any) -> None:
    first, other = enqueue(["shop.admin_rows", "shop.admin_rows_other"], [None, None])
    _hold_as_failed(first)
    response = admin_client.get(_changelist(QueueLog), {"job_id": str(first)})
    rows = response.context["cl"].result_list
    assert [(r.job_id, r.status) for r in rows] == [(first, "failed"), (first, "queued")]
    assert f"job {first}" in response.content.decode()  # the active filter is shown
    for bad_id in ("nope", str(2**63)):
        bad = admin_client.get(_changelist(QueueLog), {"job_id": bad_id})
        assert bad.status_code == 302 and bad.url.endswith("?e=1"), bad_id
    job_page = admin_client.get(reverse("admin:pgqueue_sync_queuejob_change", args=[other]))
    assert f'href="{_changelist(QueueLog)}?job_id={other}"' in job_page.content.decode()


def _status_choices(response: Any) -> list[dict[str, Any]]:
    changelist = response.context["cl"]
    [spec] = [s for s in changelist.filter_specs if s.title == "status"]
    return list(spec.choices(changelist))


def _status_options(response: Any) -> list[str]:
    return [str(choice["display"]) for choice in _status_choices(response)]


def test_status_filters_offer_what_each_table_holds(admin_client: Any) -> None:
    held, _ = enqueue(["shop.admin_st_held", "shop.admin_st_queued"], [None, None])
    _hold_as_failed(held)
    assert QUEUE_TABLE_STATUSES == ("queued", "picked", "failed")
    assert set(RESULTS_TABLE_STATUSES) < set(JOB_STATUSES)
    jobs = admin_client.get(_changelist(QueueJob))
    assert _status_options(jobs) == ["All", "queued", "picked", "failed"]
    log = admin_client.get(_changelist(QueueLog))
    assert _status_options(log) == ["All", *JOB_STATUSES]
    results = admin_client.get(_changelist(QueueResult))
    assert _status_options(results) == [
        "All", "queued", "successful", "exception", "canceled", "failed",
    ]
    # The filter keeps Django's parameter, marks the chosen status, counts with facets on.
    failed_only = admin_client.get(_changelist(QueueJob), {"status__exact": "failed"})
    assert _listed(failed_only) == ["shop.admin_st_held"]
    assert [c["display"] for c in _status_choices(failed_only) if c["selected"]] == ["failed"]
    assert "status__exact=picked" in _status_choices(failed_only)[2]["query_string"]
    faceted = admin_client.get(_changelist(QueueJob), {"_facets": "1"})
    if hasattr(faceted.context["cl"], "add_facets"):  # Django 5.0+
        assert _status_options(faceted) == ["All", "queued (1)", "picked (0)", "failed (1)"]


def test_jobs_list_shows_times_with_seconds_and_no_updated_column(admin_client: Any) -> None:
    [job_id] = enqueue("shop.admin_times", b"x" * 1000, headers={"big": "y" * 50_000})
    body = admin_client.get(_changelist(QueueJob)).content.decode()
    for column in ("execute_after_time", "created_time", "payload_short"):
        assert f"column-{column}" in body, column
    assert "column-updated" not in body
    assert "&#x27;xxxxxxxxxx" in body and "... (1000 bytes)" in body
    detail = admin_client.get(reverse("admin:pgqueue_sync_queuejob_change", args=[job_id]))
    page = detail.content.decode()
    assert "characters)</pre>" in page and len(page) < 60_000  # the headers are cut


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
