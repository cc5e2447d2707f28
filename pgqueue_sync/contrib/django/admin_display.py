"""How the admin pages show values: bounded plain text and escaped HTML fragments.

Everything is bounded: payloads, error messages, tracebacks and JSON documents
are cut at fixed sizes, so one huge row cannot blow up a page. The ``*_text``
functions return plain text (callers escape it); the ``*_html`` ones and the
links escape what they show (``format_html``). Times show seconds, in the
current time zone.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape, format_html
from django.utils.safestring import mark_safe

from .models import QueueJob, QueueLog

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
#: What an empty value shows.
EMPTY = "-"
_NOWRAP = "white-space: nowrap"
_NAME_BREAKS = re.compile(r"(?<=[./:_-])")


def payload_text(payload: bytes | memoryview | None, limit: int = PAYLOAD_PREVIEW_BYTES) -> str:
    """A safe, bounded rendering of a payload: ``repr`` of UTF-8 text, else hex.

    Beyond ``limit`` bytes the text is cut and the total size appended. The
    result is plain text; callers escape it (``format_html``) when rendering.
    """
    if payload is None:
        return EMPTY
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
        return EMPTY
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
        return EMPTY
    if timezone.is_aware(value):
        value = timezone.localtime(value)
    return value.strftime(TIME_FORMAT)


def time_html(value: datetime | None) -> str:
    """A ``<time>`` element: seconds shown, the exact value (with offset) as its tooltip.

    The date and the time of day each stay on one line, so a narrow column
    shows them as two lines rather than breaking inside them.
    """
    if value is None:
        return EMPTY
    if timezone.is_aware(value):
        value = timezone.localtime(value)
    exact = value.isoformat()
    day, clock = time_text(value).split(" ")
    return format_html(
        '<time datetime="{}" title="{}"><span style="{}">{}</span> <span style="{}">{}</span>'
        "</time>", exact, exact, _NOWRAP, day, _NOWRAP, clock,
    )


def pre_html(text: str, css_class: str = "pgqs-pre") -> str:
    """Preformatted text: its own line breaks, long lines wrapped to the page."""
    return format_html(
        '<pre class="{}" style="white-space: pre-wrap; overflow-wrap: anywhere; '
        'margin: 0">{}</pre>', css_class, text,
    )


def name_html(name: str) -> str:
    """An entrypoint that may break after ``.``, ``_``, ``:``, ``-`` and ``/`` (and inside a
    run of more than ``NAME_CHUNK_CHARS`` without them), but nowhere else."""
    pieces: list[str] = []
    for part in _NAME_BREAKS.split(name):
        pieces.extend(part[i:i + NAME_CHUNK_CHARS] for i in range(0, len(part), NAME_CHUNK_CHARS))
    breakable = mark_safe("<wbr>".join(escape(piece) for piece in pieces))
    return format_html('<span class="pgqs-name">{}</span>', breakable)


def wrapping_html(text: str, title: str | None = None) -> str:
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


def log_rows_link(job_id: int, text: str) -> str:
    """A link to the log rows of ``job_id`` (the log list filtered by job)."""
    return format_html(
        '<a class="pgqs-log-rows" href="{}?job_id={}" title="every log row of job {}">{}</a>',
        _changelist_url(QueueLog), job_id, job_id, text,
    )


def job_links(job_id: int, in_queue: bool) -> str:
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
                       log_rows_link(job_id, "log rows"))
