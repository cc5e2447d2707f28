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
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.utils.html import format_html
from django.utils.translation import ngettext

from .models import QueueJob, QueueLog, QueueResult
from .producer import get_queries

#: Payload bytes shown in the detail page before truncating.
PAYLOAD_PREVIEW_BYTES = 256
#: Characters of a payload repr shown in the change list.
PAYLOAD_LIST_CHARS = 40
_EMPTY = "-"


def payload_text(payload: bytes | memoryview | None, limit: int = PAYLOAD_PREVIEW_BYTES) -> str:
    """A safe, bounded rendering of a payload: ``repr`` of UTF-8 text, else hex.

    Beyond ``limit`` bytes the text is cut and the total size appended. The
    result is plain text; callers escape it (``format_html``) when rendering.
    """
    if payload is None:
        return _EMPTY
    data = bytes(payload)
    head = data[:limit]
    try:
        shown = repr(head.decode("utf-8"))
    except UnicodeDecodeError:
        shown = "hex " + head.hex(" ")
    if len(data) > limit:
        shown += f" ... ({len(data)} bytes)"
    return shown


def json_text(value: Any) -> str:
    """``value`` as indented, key-sorted JSON (``-`` for ``None``)."""
    if value is None:
        return _EMPTY
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _pre(text: str) -> str:
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>', text)


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

    list_display = (
        "id", "entrypoint", "status", "priority", "attempts", "execute_after", "created",
        "updated", "payload_short",
    )
    list_filter = ("status", "entrypoint")
    search_fields = ("entrypoint",)
    ordering = ("-id",)
    actions = ("requeue_held_jobs", "cancel_jobs")
    fields = (
        "id", "entrypoint", "status", "priority", "attempts", "dedupe_key", "created",
        "updated", "execute_after", "heartbeat", "queue_manager_id", "slot",
        "payload_preview", "headers_pretty",
    )

    @admin.display(description="payload")
    def payload_short(self, obj: QueueJob) -> str:
        return payload_text(obj.payload, PAYLOAD_LIST_CHARS)

    @admin.display(description="payload")
    def payload_preview(self, obj: QueueJob) -> str:
        return _pre(payload_text(obj.payload))

    @admin.display(description="headers")
    def headers_pretty(self, obj: QueueJob) -> str:
        return _pre(json_text(obj.headers))

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
    """The status history of every job."""

    list_display = ("id", "created", "job_id", "entrypoint", "status", "priority")
    list_filter = ("status", "entrypoint")
    search_fields = ("entrypoint",)
    ordering = ("-id",)
    fields = (
        "id", "created", "job_id", "entrypoint", "status", "priority", "aggregated",
        "traceback_pretty",
    )

    @admin.display(description="traceback")
    def traceback_pretty(self, obj: QueueLog) -> str:
        return _pre(json_text(obj.traceback))


@admin.register(QueueResult)
class QueueResultAdmin(ReadOnlyAdmin):
    """Stored outcomes (the opt-in results table; the Tasks backend always writes it)."""

    list_display = ("job_id", "entrypoint", "status", "finished", "attempts", "error")
    list_filter = ("status", "entrypoint")
    search_fields = ("entrypoint",)
    ordering = ("-finished",)
    fields = (
        "job_id", "entrypoint", "status", "created", "finished", "attempts",
        "queue_manager_id", "error", "result_pretty",
    )

    @admin.display(description="result")
    def result_pretty(self, obj: QueueResult) -> str:
        return _pre(json_text(obj.result))
