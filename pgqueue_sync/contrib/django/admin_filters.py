"""The admin's list filters: status (only the statuses each table can hold) and job id."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import Count, Q
from django.utils.translation import gettext_lazy

from ...types import JOB_STATUSES

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
