"""Read-only admin pages for the queue, the log and stored results, with two queue actions.

Nothing can be added, edited or deleted here. Operators change jobs only
through the actions, which call :class:`~pgqueue_sync.Queries` (the same
SQL as ``pgq-sync requeue``/``cancel``), never the ORM:

* **Requeue held jobs** puts selected ``failed`` (held) jobs back to
  ``queued`` with their attempts reset;
* **Cancel jobs** deletes selected queued or running jobs, logs them as
  ``canceled`` and notifies the workers running them.

The actions need the model's "change" permission (superusers have it);
viewing needs "view".

Everything shown is escaped (``format_html``) and bounded: payloads, error
messages, tracebacks and JSON documents are cut at fixed sizes, so one huge
row cannot blow up a page. Times show seconds, in the current time zone.

Django's admin autodiscovery imports this module, which registers the three
admin classes; how values are shown lives in :mod:`.admin_display`, the list
filters in :mod:`.admin_filters`.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db.models import Exists, OuterRef
from django.utils.translation import ngettext

from .admin_display import (
    DEDUPE_KEY_CHARS,
    EMPTY,
    ERROR_DETAIL_CHARS,
    ERROR_LIST_CHARS,
    JSON_DETAIL_CHARS,
    PAYLOAD_LIST_CHARS,
    cut_text,
    error_text,
    job_links,
    json_text,
    log_rows_link,
    name_html,
    payload_text,
    pre_html,
    time_html,
    traceback_text,
    wrapping_html,
)
from .admin_filters import JobIdFilter, LogStatusFilter, QueueStatusFilter, ResultStatusFilter
from .models import QueueJob, QueueLog, QueueResult
from .producer import get_queries


class ReadOnlyAdmin(admin.ModelAdmin):
    """Every field read-only; no add, change or delete; big tables paginate cheaply."""

    show_full_result_count = False
    list_per_page = 50

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: Any, obj: Any = None) -> list[str]:
        return list(self.get_fields(request, obj))

    def has_operate_permission(self, request: Any) -> bool:
        """May run the queue actions: the auth "change" permission of the model."""
        opts = self.opts
        codename = get_permission_codename("change", opts)
        return bool(request.user.has_perm(f"{opts.app_label}.{codename}"))


@admin.register(QueueJob)
class QueueJobAdmin(ReadOnlyAdmin):
    """Jobs waiting, running or held, with the requeue and cancel actions."""

    # Sized for a 1400 px window with the admin's navigation sidebar open;
    # "updated", "heartbeat" and the rest are on each job's page.
    list_display = (
        "id", "entrypoint_text", "status", "priority", "attempts", "execute_after_time",
        "created_time", "payload_short",
    )
    list_display_links = ("id",)
    list_filter = (("status", QueueStatusFilter), "entrypoint")
    search_fields = ("entrypoint",)
    ordering = ("-id",)
    actions = ("requeue_held_jobs", "cancel_jobs")
    fields = (
        "id", "entrypoint", "status", "priority", "attempts", "dedupe_key_text", "created_time",
        "updated_time", "execute_after_time", "heartbeat_time", "queue_manager_id", "slot",
        "log_rows", "payload_preview", "headers_pretty",
    )

    @admin.display(description="entrypoint", ordering="entrypoint")
    def entrypoint_text(self, obj: QueueJob) -> str:
        return name_html(obj.entrypoint)

    @admin.display(description="execute after", ordering="execute_after")
    def execute_after_time(self, obj: QueueJob) -> str:
        return time_html(obj.execute_after)

    @admin.display(description="created", ordering="created")
    def created_time(self, obj: QueueJob) -> str:
        return time_html(obj.created)

    @admin.display(description="updated", ordering="updated")
    def updated_time(self, obj: QueueJob) -> str:
        return time_html(obj.updated)

    @admin.display(description="dedupe key")
    def dedupe_key_text(self, obj: QueueJob) -> str:
        return EMPTY if obj.dedupe_key is None else cut_text(obj.dedupe_key, DEDUPE_KEY_CHARS)

    @admin.display(description="heartbeat")
    def heartbeat_time(self, obj: QueueJob) -> str:
        return time_html(obj.heartbeat)

    @admin.display(description="log")
    def log_rows(self, obj: QueueJob) -> str:
        return log_rows_link(obj.id, f"every log row of job {obj.id}")

    @admin.display(description="payload")
    def payload_short(self, obj: QueueJob) -> str:
        return wrapping_html(payload_text(obj.payload, PAYLOAD_LIST_CHARS))

    @admin.display(description="payload")
    def payload_preview(self, obj: QueueJob) -> str:
        return pre_html(payload_text(obj.payload))

    @admin.display(description="headers")
    def headers_pretty(self, obj: QueueJob) -> str:
        return pre_html(cut_text(json_text(obj.headers), JSON_DETAIL_CHARS))

    @admin.action(description="Requeue held jobs", permissions=["operate"])
    def requeue_held_jobs(self, request: Any, queryset: Any) -> None:
        """Requeue the selected held (``failed``) jobs; others are left alone."""
        selected = list(queryset.values_list("id", flat=True))
        done = get_queries().requeue_jobs(selected)
        self.message_user(request, ngettext(
            "Requeued %(count)d held job.", "Requeued %(count)d held jobs.", len(done),
        ) % {"count": len(done)}, messages.SUCCESS)
        self._report_skipped(request, len(selected) - len(done), "not held (status 'failed')")

    @admin.action(description="Cancel jobs", permissions=["operate"])
    def cancel_jobs(self, request: Any, queryset: Any) -> None:
        """Cancel the selected jobs (queued, running or held): deleted, logged ``canceled``."""
        selected = list(queryset.values_list("id", flat=True))
        done = get_queries().mark_job_as_cancelled(selected)
        self.message_user(request, ngettext(
            "Cancelled %(count)d job.", "Cancelled %(count)d jobs.", len(done),
        ) % {"count": len(done)}, messages.SUCCESS)
        self._report_skipped(request, len(selected) - len(done), "already gone")

    def _report_skipped(self, request: Any, count: int, why: str) -> None:
        if count > 0:
            self.message_user(request, ngettext(
                "%(count)d selected job was %(why)s and was left alone.",
                "%(count)d selected jobs were %(why)s and were left alone.", count,
            ) % {"count": count, "why": why}, messages.WARNING)


@admin.register(QueueLog)
class QueueLogAdmin(ReadOnlyAdmin):
    """The status history of every job, with each failure's error and traceback."""

    list_display = (
        "id", "created_time", "job", "entrypoint_text", "status", "priority", "error_short",
    )
    list_display_links = ("id",)
    list_filter = (JobIdFilter, ("status", LogStatusFilter), "entrypoint")
    search_fields = ("entrypoint",)
    ordering = ("-id",)
    fields = (
        "id", "created_time", "job", "entrypoint", "status", "priority", "aggregated",
        "error_message", "traceback_text", "error_context",
    )

    def get_queryset(self, request: Any) -> Any:
        # Whether each row's job is still in the queue table (so its id can link to it).
        in_queue = QueueJob.objects.filter(id=OuterRef("job_id"))
        return super().get_queryset(request).annotate(job_in_queue=Exists(in_queue))

    @admin.display(description="created", ordering="created")
    def created_time(self, obj: QueueLog) -> str:
        return time_html(obj.created)

    @admin.display(description="job", ordering="job_id")
    def job(self, obj: QueueLog) -> str:
        return job_links(obj.job_id, bool(getattr(obj, "job_in_queue", False)))

    @admin.display(description="entrypoint", ordering="entrypoint")
    def entrypoint_text(self, obj: QueueLog) -> str:
        return name_html(obj.entrypoint)

    @admin.display(description="error")
    def error_short(self, obj: QueueLog) -> str:
        text = error_text(obj.traceback)
        if not text:
            return EMPTY
        return wrapping_html(
            cut_text(" ".join(text.split()), ERROR_LIST_CHARS),
            title=cut_text(text, ERROR_DETAIL_CHARS),
        )

    @admin.display(description="error")
    def error_message(self, obj: QueueLog) -> str:
        return pre_html(cut_text(error_text(obj.traceback), ERROR_DETAIL_CHARS) or EMPTY)

    @admin.display(description="traceback")
    def traceback_text(self, obj: QueueLog) -> str:
        record = obj.traceback
        text = record.get("traceback") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text:
            return EMPTY
        return pre_html(traceback_text(text), "pgqs-traceback")

    @admin.display(description="error record")
    def error_context(self, obj: QueueLog) -> str:
        """The record's other keys (job id, timestamp, additional context), as JSON."""
        record = obj.traceback
        if not isinstance(record, dict):
            return EMPTY if record is None else pre_html(cut_text(json_text(record),
                                                               JSON_DETAIL_CHARS))
        rest = {key: value for key, value in record.items()
                if key not in ("exception_type", "exception_message", "traceback")}
        return pre_html(cut_text(json_text(rest), JSON_DETAIL_CHARS)) if rest else EMPTY


@admin.register(QueueResult)
class QueueResultAdmin(ReadOnlyAdmin):
    """Stored outcomes (the opt-in results table; the Tasks backend always writes it)."""

    list_display = (
        "job_id", "entrypoint_text", "status", "finished_time", "attempts", "error_short",
    )
    list_display_links = ("job_id",)
    list_filter = (("status", ResultStatusFilter), "entrypoint")
    search_fields = ("entrypoint",)
    ordering = ("-finished",)
    fields = (
        "job_id", "entrypoint", "status", "created_time", "finished_time", "attempts",
        "queue_manager_id", "log_rows", "error_detail", "result_pretty",
    )

    @admin.display(description="entrypoint", ordering="entrypoint")
    def entrypoint_text(self, obj: QueueResult) -> str:
        return name_html(obj.entrypoint)

    @admin.display(description="created", ordering="created")
    def created_time(self, obj: QueueResult) -> str:
        return time_html(obj.created)

    @admin.display(description="finished", ordering="finished")
    def finished_time(self, obj: QueueResult) -> str:
        return time_html(obj.finished)

    @admin.display(description="error")
    def error_short(self, obj: QueueResult) -> str:
        if not obj.error:
            return EMPTY
        return wrapping_html(cut_text(" ".join(obj.error.split()), ERROR_LIST_CHARS),
                         title=cut_text(obj.error, ERROR_DETAIL_CHARS))

    @admin.display(description="error")
    def error_detail(self, obj: QueueResult) -> str:
        return pre_html(cut_text(obj.error, ERROR_DETAIL_CHARS)) if obj.error else EMPTY

    @admin.display(description="log")
    def log_rows(self, obj: QueueResult) -> str:
        return log_rows_link(obj.job_id, f"every log row of job {obj.job_id}")

    @admin.display(description="result")
    def result_pretty(self, obj: QueueResult) -> str:
        return pre_html(cut_text(json_text(obj.result), JSON_DETAIL_CHARS))
