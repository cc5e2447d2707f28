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
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any, ClassVar

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.auth import get_permission_codename
from django.db.models import Count, Exists, OuterRef, Q
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape, format_html
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy, ngettext

from ...types import JOB_STATUSES
from .models import QueueJob, QueueLog, QueueResult
from .producer import get_queries

#: Payload bytes shown in the detail page before truncating.
PAYLOAD_PREVIEW_BYTES = 256
#: Characters of a payload repr shown in the change list.
PAYLOAD_LIST_CHARS = 40
#: Characters of an error (``Type: message``) shown in the log's change list.
ERROR_LIST_CHARS = 120
#: Characters of an error message shown on a detail page.
ERROR_DETAIL_CHARS = 4_000
#: A longer traceback keeps its first and last characters (the innermost frames
#: and the exception are at the end).
TRACEBACK_HEAD_CHARS = 4_000
TRACEBACK_TAIL_CHARS = 16_000
#: Characters of a dedupe key shown on a job's page.
DEDUPE_KEY_CHARS = 1_000
#: Characters of a JSON document (headers, result, error context) on a detail page.
JSON_DETAIL_CHARS = 20_000
#: An entrypoint may also break inside a run this long without ``.``, ``_``, ``:``, ``-``, ``/``.
NAME_CHUNK_CHARS = 16
#: How times are shown: to the second, in the current time zone.
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_EMPTY = "-"
_NOWRAP = "white-space: nowrap"
_NAME_BREAKS = re.compile(r"(?<=[./:_-])")

#: The statuses each table can hold, for its status filter. The queue table
#: holds waiting (``queued``, also while a retry waits), running (``picked``)
#: and held (``failed``) jobs: every other outcome deletes the row. The log
#: records every transition. The results table gets ``queued`` from the Tasks
#: backend at enqueue and then the worker's outcome; retries are not stored
#: there and ``deleted`` (a purge) writes no result.
QUEUE_TABLE_STATUSES: tuple[str, ...] = ("queued", "picked", "failed")
LOG_TABLE_STATUSES: tuple[str, ...] = tuple(JOB_STATUSES)
RESULTS_TABLE_STATUSES: tuple[str, ...] = (
    "queued", "successful", "exception", "canceled", "failed",
)


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


def cut_text(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and how many there were in all."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} ... ({len(text)} characters)"


def traceback_text(text: str, head: int = TRACEBACK_HEAD_CHARS,
                   tail: int = TRACEBACK_TAIL_CHARS) -> str:
    """A traceback kept whole up to ``head + tail`` characters, else its two ends."""
    if len(text) <= head + tail:
        return text
    omitted = len(text) - head - tail
    return f"{text[:head]}\n... ({omitted} characters omitted) ...\n{text[-tail:]}"


def error_text(record: Any) -> str:
    """``Type: message`` of a traceback record (the log's ``traceback`` jsonb), unbounded.

    ``""`` when there is no record; a value that is not a record (not written
    by pgqueue_sync or PgQueuer) is shown as JSON.
    """
    if record is None:
        return ""
    if not isinstance(record, dict):
        return json.dumps(record, ensure_ascii=False, default=str)
    kind = str(record.get("exception_type") or "")
    message = str(record.get("exception_message") or "")
    return ": ".join(part for part in (kind, message) if part)


def time_text(value: datetime | None) -> str:
    """``value`` to the second, in the current time zone when it is aware (``-`` for None)."""
    if value is None:
        return _EMPTY
    if timezone.is_aware(value):
        value = timezone.localtime(value)
    return value.strftime(TIME_FORMAT)


def _time(value: datetime | None) -> str:
    """A ``<time>`` element: seconds shown, the exact value (with offset) as its tooltip.

    The date and the time of day each stay on one line, so a narrow column
    shows them as two lines rather than breaking inside them.
    """
    if value is None:
        return _EMPTY
    if timezone.is_aware(value):
        value = timezone.localtime(value)
    exact = value.isoformat()
    day, clock = time_text(value).split(" ")
    return format_html(
        '<time datetime="{}" title="{}"><span style="{}">{}</span> <span style="{}">{}</span>'
        "</time>", exact, exact, _NOWRAP, day, _NOWRAP, clock,
    )


def _pre(text: str, css_class: str = "pgqs-pre") -> str:
    """Preformatted text: its own line breaks, long lines wrapped to the page."""
    return format_html(
        '<pre class="{}" style="white-space: pre-wrap; overflow-wrap: anywhere; '
        'margin: 0">{}</pre>', css_class, text,
    )


def _name(name: str) -> str:
    """An entrypoint that may break after ``.``, ``_``, ``:``, ``-`` and ``/`` (and inside a
    run of more than ``NAME_CHUNK_CHARS`` without them), but nowhere else."""
    pieces: list[str] = []
    for part in _NAME_BREAKS.split(name):
        pieces.extend(part[i:i + NAME_CHUNK_CHARS] for i in range(0, len(part), NAME_CHUNK_CHARS))
    breakable = mark_safe("<wbr>".join(escape(piece) for piece in pieces))
    return format_html('<span class="pgqs-name">{}</span>', breakable)


def _wrapping(text: str, title: str | None = None) -> str:
    """Text that may break anywhere (payload reprs, error messages), so columns stay narrow;
    ``title``: a tooltip (the longer text)."""
    style = "overflow-wrap: anywhere; word-break: break-word"
    if title is None:
        return format_html('<span class="pgqs-wrap" style="{}">{}</span>', style, text)
    return format_html(
        '<span class="pgqs-wrap" style="{}" title="{}">{}</span>', style, title, text,
    )


def _changelist_url(model: type[Any]) -> str:
    opts = model._meta
    return str(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))


def _change_url(model: type[Any], pk: Any) -> str:
    opts = model._meta
    return str(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[pk]))


def _log_rows_link(job_id: int, text: str) -> str:
    """A link to the log rows of ``job_id`` (the log list filtered by job)."""
    return format_html(
        '<a class="pgqs-log-rows" href="{}?job_id={}" title="every log row of job {}">{}</a>',
        _changelist_url(QueueLog), job_id, job_id, text,
    )


def _job_links(job_id: int, in_queue: bool) -> str:
    """The job id, linked to its page while the job is in the queue, and a link to its log."""
    if in_queue:
        job = format_html(
            '<a class="pgqs-job" href="{}" title="job {} in the queue">{}</a>',
            _change_url(QueueJob, job_id), job_id, job_id,
        )
    else:
        job = format_html(
            '<span class="pgqs-job" title="job {} is no longer in the queue">{}</span>',
            job_id, job_id,
        )
    return format_html('{} <span style="{}">({})</span>', job, _NOWRAP,
                       _log_rows_link(job_id, "log rows"))


class StatusFilter(admin.ChoicesFieldListFilter):
    """The ``status`` filter, offering only the statuses its table can hold.

    It keeps the field filter's query parameter (``status__exact``); a status
    outside ``statuses`` typed into the URL still filters (finding nothing).
    """

    statuses: ClassVar[tuple[str, ...]] = LOG_TABLE_STATUSES

    def _selected(self) -> list[str]:
        value = self.lookup_val
        if value is None:
            return []
        # Django 5.0+ passes the list of values, Django 4.2 a string.
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]

    def get_facet_counts(self, pk_attname: str, filtered_qs: Any) -> dict[str, Any]:
        return {
            f"{index}__c": Count(pk_attname, filter=Q(**{self.lookup_kwarg: status}))
            for index, status in enumerate(self.statuses)
        }

    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:
        counts = self.get_facet_queryset(changelist) if getattr(
            changelist, "add_facets", False) else None
        selected = self._selected()
        yield {
            "selected": not selected,
            "query_string": changelist.get_query_string(
                remove=[self.lookup_kwarg, self.lookup_kwarg_isnull]
            ),
            "display": gettext_lazy("All"),
        }
        for index, status in enumerate(self.statuses):
            title = status if counts is None else f"{status} ({counts[f'{index}__c']})"
            yield {
                "selected": status in selected,
                "query_string": changelist.get_query_string(
                    {self.lookup_kwarg: status}, [self.lookup_kwarg_isnull]
                ),
                "display": title,
            }


class QueueStatusFilter(StatusFilter):
    statuses = QUEUE_TABLE_STATUSES


class LogStatusFilter(StatusFilter):
    statuses = LOG_TABLE_STATUSES


class ResultStatusFilter(StatusFilter):
    statuses = RESULTS_TABLE_STATUSES


class JobIdFilter(admin.SimpleListFilter):
    """``?job_id=N``: the rows of one job (the log list's "log rows" links).

    Shown in the sidebar only while it is in use, so the operator sees (and
    can clear) it.
    """

    title = "job"
    parameter_name = "job_id"

    def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, str]]:
        value = self.value()
        return [] if value is None else [(value, f"job {value}")]

    def queryset(self, request: Any, queryset: Any) -> Any:
        value = self.value()
        if value is None:
            return queryset
        try:
            job_id = int(value)
        except ValueError as exc:
            raise IncorrectLookupParameters(exc) from exc
        if not -(2**63) <= job_id < 2**63:  # job ids are bigint
            raise IncorrectLookupParameters(f"no job can have the id {value}")
        return queryset.filter(job_id=job_id)


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
        return _name(obj.entrypoint)

    @admin.display(description="execute after", ordering="execute_after")
    def execute_after_time(self, obj: QueueJob) -> str:
        return _time(obj.execute_after)

    @admin.display(description="created", ordering="created")
    def created_time(self, obj: QueueJob) -> str:
        return _time(obj.created)

    @admin.display(description="updated", ordering="updated")
    def updated_time(self, obj: QueueJob) -> str:
        return _time(obj.updated)

    @admin.display(description="dedupe key")
    def dedupe_key_text(self, obj: QueueJob) -> str:
        return _EMPTY if obj.dedupe_key is None else cut_text(obj.dedupe_key, DEDUPE_KEY_CHARS)

    @admin.display(description="heartbeat")
    def heartbeat_time(self, obj: QueueJob) -> str:
        return _time(obj.heartbeat)

    @admin.display(description="log")
    def log_rows(self, obj: QueueJob) -> str:
        return _log_rows_link(obj.id, f"every log row of job {obj.id}")

    @admin.display(description="payload")
    def payload_short(self, obj: QueueJob) -> str:
        return _wrapping(payload_text(obj.payload, PAYLOAD_LIST_CHARS))

    @admin.display(description="payload")
    def payload_preview(self, obj: QueueJob) -> str:
        return _pre(payload_text(obj.payload))

    @admin.display(description="headers")
    def headers_pretty(self, obj: QueueJob) -> str:
        return _pre(cut_text(json_text(obj.headers), JSON_DETAIL_CHARS))

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
        return _time(obj.created)

    @admin.display(description="job", ordering="job_id")
    def job(self, obj: QueueLog) -> str:
        return _job_links(obj.job_id, bool(getattr(obj, "job_in_queue", False)))

    @admin.display(description="entrypoint", ordering="entrypoint")
    def entrypoint_text(self, obj: QueueLog) -> str:
        return _name(obj.entrypoint)

    @admin.display(description="error")
    def error_short(self, obj: QueueLog) -> str:
        text = error_text(obj.traceback)
        if not text:
            return _EMPTY
        return _wrapping(
            cut_text(" ".join(text.split()), ERROR_LIST_CHARS),
            title=cut_text(text, ERROR_DETAIL_CHARS),
        )

    @admin.display(description="error")
    def error_message(self, obj: QueueLog) -> str:
        return _pre(cut_text(error_text(obj.traceback), ERROR_DETAIL_CHARS) or _EMPTY)

    @admin.display(description="traceback")
    def traceback_text(self, obj: QueueLog) -> str:
        record = obj.traceback
        text = record.get("traceback") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text:
            return _EMPTY
        return _pre(traceback_text(text), "pgqs-traceback")

    @admin.display(description="error record")
    def error_context(self, obj: QueueLog) -> str:
        """The record's other keys (job id, timestamp, additional context), as JSON."""
        record = obj.traceback
        if not isinstance(record, dict):
            return _EMPTY if record is None else _pre(cut_text(json_text(record),
                                                               JSON_DETAIL_CHARS))
        rest = {key: value for key, value in record.items()
                if key not in ("exception_type", "exception_message", "traceback")}
        return _pre(cut_text(json_text(rest), JSON_DETAIL_CHARS)) if rest else _EMPTY


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
        return _name(obj.entrypoint)

    @admin.display(description="created", ordering="created")
    def created_time(self, obj: QueueResult) -> str:
        return _time(obj.created)

    @admin.display(description="finished", ordering="finished")
    def finished_time(self, obj: QueueResult) -> str:
        return _time(obj.finished)

    @admin.display(description="error")
    def error_short(self, obj: QueueResult) -> str:
        if not obj.error:
            return _EMPTY
        return _wrapping(cut_text(" ".join(obj.error.split()), ERROR_LIST_CHARS),
                         title=cut_text(obj.error, ERROR_DETAIL_CHARS))

    @admin.display(description="error")
    def error_detail(self, obj: QueueResult) -> str:
        return _pre(cut_text(obj.error, ERROR_DETAIL_CHARS)) if obj.error else _EMPTY

    @admin.display(description="log")
    def log_rows(self, obj: QueueResult) -> str:
        return _log_rows_link(obj.job_id, f"every log row of job {obj.job_id}")

    @admin.display(description="result")
    def result_pretty(self, obj: QueueResult) -> str:
        return _pre(cut_text(json_text(obj.result), JSON_DETAIL_CHARS))
