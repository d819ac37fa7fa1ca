"""Console pages of the audit log and domain events: read-only, bounded by time, searchable, exportable as CSV."""

from __future__ import annotations

import csv
import json
from abc import ABCMeta, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import SEARCH_VAR
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from unfold.contrib.filters.admin import DropdownFilter, TextFilter
from unfold.paginator import InfinitePaginator
from unfold.widgets import UnfoldAdminTextInputWidget

from audit.models import AuditLogEntry, DomainEvent
from audit.querysets import entity_uuid
from courier_site.admin_base import ReadOnlyAdmin
from courier_site.badges import badge
from jobs.redaction import redact

# Stable code of every refused console filter value (bad JSON, bad date, unknown type).
FILTER_ERROR_CODE = "E6001"
# Without a "from" the lists show this much history: both tables are partitioned by
# month, so a bounded query reads one or two partitions instead of every one kept.
DEFAULT_WINDOW = timedelta(days=7)
# Cells a spreadsheet would run as a formula; exported with a leading apostrophe.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class FilterProblem(ValueError):
    """A filter value the console refuses, with the operator-facing reason."""


@dataclass(frozen=True)
class TimeRange:
    """start <= time < end; either side open; defaulted when the start came from DEFAULT_WINDOW."""

    start: datetime | None
    end: datetime | None
    defaulted: bool = False


def parse_moment(value: str, *, end: bool = False) -> datetime:
    """A filter box's date (a whole day; an end date includes its day) or ISO timestamp, made aware."""
    text = value.strip()
    zone = timezone.get_current_timezone()
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        return datetime.combine(day + timedelta(days=1) if end else day, time.min, tzinfo=zone)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise FilterProblem(f"'{text}' is not a date (YYYY-MM-DD) or an ISO time (YYYY-MM-DDTHH:MM)") from None
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment, zone)


def resolve_time_range(
    raw_start: str | None, raw_end: str | None, *, whole_history: bool, now: datetime | None = None
) -> TimeRange:
    """The range a list shows: as given, else DEFAULT_WINDOW back from its end (or now).

    whole_history: one entity is picked, so its full history may be shown (ix_audit_entity
    and ix_domain_events_entity find it with one index probe per partition).
    """
    start = parse_moment(raw_start) if raw_start else None
    end = parse_moment(raw_end, end=True) if raw_end else None
    if start is not None and end is not None and start >= end:
        raise FilterProblem("the time range ends before it starts")
    if start is None and not whole_history:
        return TimeRange((end or now or timezone.now()) - DEFAULT_WINDOW, end, defaulted=True)
    return TimeRange(start, end)


# ----------------------------------------------------------------- filters


class CheckedFilter:
    """A filter whose value is checked first: a refused value empties the list and says why."""

    problem: str | None = None


class CheckedTextFilter(CheckedFilter, TextFilter, metaclass=ABCMeta):
    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = (self.value() or "").strip()
        if not value:
            return queryset
        try:
            return self.apply(queryset, value)
        except FilterProblem as problem:
            self.problem = str(problem)
            return queryset.none()

    @abstractmethod
    def apply(self, queryset: QuerySet, value: str) -> QuerySet:
        """queryset narrowed by the checked value, or FilterProblem naming what is wrong."""


class EntityTypeFilter(CheckedFilter, DropdownFilter):
    title = "entity type"
    parameter_name = "entity_type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(AuditLogEntry.EntityType.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if not value:
            return queryset
        if value not in AuditLogEntry.EntityType.values:
            self.problem = f"unknown entity type '{value}'"
            return queryset.none()
        return queryset.filter(entity_type=value)


class EntityIdFilter(CheckedTextFilter):
    title = "entity id (or setting key)"
    parameter_name = "entity_id"

    def apply(self, queryset: QuerySet, value: str) -> QuerySet:
        # Setting keys and other non-UUID names are recorded under their name-based UUID.
        return queryset.filter(entity_id=entity_uuid(value))


class OperationFilter(CheckedTextFilter):
    title = "operation"
    parameter_name = "operation"

    def apply(self, queryset: QuerySet, value: str) -> QuerySet:
        return queryset.filter(operation=value)


class PerformedByFilter(CheckedTextFilter):
    title = "user"
    parameter_name = "performed_by"

    def apply(self, queryset: QuerySet, value: str) -> QuerySet:
        # Served by ix_audit_performed_by (performed_by, performed_at DESC).
        return queryset.filter(performed_by=value)


class DetailsContainFilter(CheckedTextFilter):
    title = 'details contain (JSON, e.g. {"key": "value"})'
    parameter_name = "details_contains"

    def apply(self, queryset: QuerySet, value: str) -> QuerySet:
        try:
            fragment = json.loads(value)
        except json.JSONDecodeError as error:
            raise FilterProblem(
                f"details filter is not valid JSON ({error.msg} at character {error.pos + 1});"
                ' write an object such as {"operation": "run"}'
            ) from None
        if not isinstance(fragment, dict):
            raise FilterProblem('details filter must be a JSON object such as {"key": "value"}')
        return queryset.details_containing(fragment)


class EventTypeFilter(CheckedTextFilter):
    title = "event type"
    parameter_name = "event_type"

    def apply(self, queryset: QuerySet, value: str) -> QuerySet:
        return queryset.filter(event_type=value)


class TimeRangeForm(forms.Form):
    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for suffix, label in (("from", "From"), ("to", "To (a date includes that day)")):
            self.fields[f"{name}_{suffix}"] = forms.CharField(
                label=label,
                required=False,
                widget=UnfoldAdminTextInputWidget(attrs={"placeholder": "YYYY-MM-DD or YYYY-MM-DDTHH:MM"}),
            )


class TimeRangeFilter(CheckedFilter, admin.ListFilter):
    """From/to on the table's partition key; without "from" the list is bounded to DEFAULT_WINDOW."""

    title = "time"
    template = "unfold/filters/filters_field.html"
    field_name = ""
    parameter_prefix = ""

    def __init__(self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any) -> None:
        super().__init__(request, params, model, model_admin)
        for name in self.expected_parameters():
            if name in params:
                value = params.pop(name)
                value = (value[-1] if isinstance(value, list) else value).strip()
                if value:
                    self.used_parameters[name] = value
        whole_history = bool(request.GET.get("entity_id", "").strip())
        try:
            self.time_range: TimeRange | None = resolve_time_range(
                self.used_parameters.get(f"{self.parameter_prefix}_from"),
                self.used_parameters.get(f"{self.parameter_prefix}_to"),
                whole_history=whole_history,
            )
        except FilterProblem as problem:
            self.problem = str(problem)
            self.time_range = None

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str]:
        return [f"{self.parameter_prefix}_from", f"{self.parameter_prefix}_to"]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.time_range is None:
            return queryset.none()
        bounds = {}
        if self.time_range.start is not None:
            bounds[f"{self.field_name}__gte"] = self.time_range.start
        if self.time_range.end is not None:
            bounds[f"{self.field_name}__lt"] = self.time_range.end
        return queryset.filter(**bounds)

    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:
        yield {"form": TimeRangeForm(self.parameter_prefix, data=self.used_parameters)}


class PerformedAtFilter(TimeRangeFilter):
    title = "performed"
    field_name = "performed_at"
    parameter_prefix = "performed"


class OccurredAtFilter(TimeRangeFilter):
    title = "occurred"
    field_name = "occurred_at"
    parameter_prefix = "occurred"


# ----------------------------------------------------------------- admins


class TimeBoundedAdmin(ReadOnlyAdmin):
    """A partitioned history list: every filter is a checked class, the default view is time-bounded."""

    # Never count these tables, not even the filtered range: next/previous only.
    paginator = InfinitePaginator
    list_filter_submit = True
    list_before_template = "admin/audit/time_range_note.html"
    export_url_name: str | None = None

    def filtered_queryset(self, request: HttpRequest) -> tuple[QuerySet, list[str], TimeRange | None]:
        """The list's rows without paging: the same filters and search, checked the same way."""
        params = dict(request.GET.lists())
        queryset = self.get_queryset(request)
        problems: list[str] = []
        time_range = None
        for filter_class in self.list_filter:
            spec = filter_class(request, params, self.model, self)
            queryset = spec.queryset(request, queryset)
            if spec.problem:
                problems.append(spec.problem)
            if isinstance(spec, TimeRangeFilter):
                time_range = spec.time_range
        queryset, _ = self.get_search_results(request, queryset, request.GET.get(SEARCH_VAR, ""))
        return queryset, problems, time_range

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        changelist = context.get("cl") if context else None
        if changelist is None:
            return response
        for spec in changelist.filter_specs:
            if getattr(spec, "problem", None):
                messages.error(request, f"[{FILTER_ERROR_CODE}] {spec.problem}")
            if isinstance(spec, TimeRangeFilter):
                context["time_range"] = spec.time_range
                context["entity_history"] = spec.time_range is not None and spec.time_range.start is None
        context["default_window_days"] = DEFAULT_WINDOW.days
        if self.export_url_name:
            export_url, query = reverse(self.export_url_name), request.GET.urlencode()
            context["export_url"] = f"{export_url}?{query}" if query else export_url
        return response


@admin.register(AuditLogEntry)
class AuditLogEntryAdmin(TimeBoundedAdmin):
    list_display = ("performed_at", "performed_by", "operation", "entity_type", "entity_history", "details_excerpt")
    list_filter = (
        PerformedAtFilter,
        EntityTypeFilter,
        EntityIdFilter,
        OperationFilter,
        PerformedByFilter,
        DetailsContainFilter,
    )
    search_fields = ("=entity_id", "operation", "performed_by")
    ordering = ("-performed_at",)
    export_url_name = "admin:audit_auditlogentry_export"
    csv_columns = ("performed_at", "performed_by", "operation", "entity_type", "entity_id", "details")

    @admin.display(description="entity id")
    def entity_history(self, obj: AuditLogEntry) -> str:
        query = urlencode({"entity_type": obj.entity_type, "entity_id": obj.entity_id})
        url = f"{reverse('admin:audit_auditlogentry_changelist')}?{query}"
        return format_html('<a href="{}" title="The whole history of this entity">{}</a>', url, obj.entity_id)

    @admin.display(description="details")
    def details_excerpt(self, obj: AuditLogEntry) -> str:
        text = json.dumps(redact(obj.details or {}), sort_keys=True, default=str)
        return text if len(text) <= 120 else f"{text[:119]}…"

    def get_urls(self) -> list[Any]:
        own = [
            path("export.csv", self.admin_site.admin_view(self.export_view), name="audit_auditlogentry_export"),
        ]
        return own + super().get_urls()

    def export_view(self, request: HttpRequest) -> HttpResponse:
        """The filtered range as CSV, oldest first, streamed row by row; a refused filter goes back to the list."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        queryset, problems, time_range = self.filtered_queryset(request)
        if problems or time_range is None:
            changelist = reverse("admin:audit_auditlogentry_changelist")
            return HttpResponseRedirect(f"{changelist}?{request.GET.urlencode()}")
        rows = queryset.order_by("performed_at").values_list(*self.csv_columns).iterator(chunk_size=2000)
        response = StreamingHttpResponse(csv_lines(self.csv_columns, rows), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{export_filename(time_range)}"'
        return response


class RelayStateFilter(admin.SimpleListFilter):
    title = "relay"
    parameter_name = "relay"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("waiting", "waiting"), ("retrying", "retrying after an error"), ("failed", "failed (given up)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value == "waiting":
            return queryset.filter(processed_at__isnull=True)
        if value == "retrying":
            return queryset.filter(processed_at__isnull=True, relay_attempts__gt=0)
        if value == "failed":
            return queryset.filter(relay_failed_at__isnull=False)
        return queryset


@admin.register(DomainEvent)
class DomainEventAdmin(TimeBoundedAdmin):
    list_display = ("occurred_at", "event_type", "entity_type", "entity_id", "relay_state", "processed_at")
    list_filter = (OccurredAtFilter, EntityTypeFilter, EntityIdFilter, EventTypeFilter, RelayStateFilter)
    search_fields = ("=entity_id", "event_type")
    ordering = ("-occurred_at",)
    actions = ("relay_again",)

    @admin.display(description="relay")
    def relay_state(self, event: DomainEvent) -> str:
        if event.relay_failed_at:
            return badge(f"failed after {event.relay_attempts} tries", "bad", event.relay_error or "")
        if event.processed_at:
            return badge("handled", "good")
        if event.relay_attempts:
            return badge(f"retrying ({event.relay_attempts} failed)", "wait", event.relay_error or "")
        return badge("waiting", "idle")

    def has_relay_again_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser or request.user.groups.filter(name="Admin").exists()

    @admin.action(description="Relay the selected failed events again", permissions=["relay_again"])
    def relay_again(self, request: HttpRequest, queryset: QuerySet) -> None:
        ids = list(queryset.filter(relay_failed_at__isnull=False).values_list("id", flat=True))
        count = DomainEvent.objects.filter(id__in=ids).update(
            processed_at=None, processed_by=None, relay_failed_at=None, relay_retry_at=None, relay_attempts=0
        )
        for event_id in ids:
            AuditLogEntry.objects.record(
                entity_type="system",
                entity_id="event-relay",
                operation="event_relayed_again",
                performed_by=request.user,
                details={"event_id": str(event_id)},
            )
        messages.info(request, f"{count} failed events queued for the relay again.")


# ----------------------------------------------------------------- CSV


class _Echo:
    """csv.writer target that hands each formatted line back instead of buffering it."""

    def write(self, line: str) -> str:
        return line


def csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        # Details never hold secrets (the writers redact); redacting again keeps it so.
        return json.dumps(redact(value), sort_keys=True, default=str, ensure_ascii=False)
    text = str(value)
    return f"'{text}" if text.startswith(_FORMULA_PREFIXES) else text


def csv_lines(header: Iterable[str], rows: Iterable[tuple[Any, ...]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(list(header))
    for row in rows:
        yield writer.writerow([csv_cell(value) for value in row])


def export_filename(time_range: TimeRange) -> str:
    start = f"{time_range.start:%Y%m%dT%H%M}" if time_range.start else "start"
    end = f"{time_range.end:%Y%m%dT%H%M}" if time_range.end else "now"
    return f"audit-log-{start}-{end}.csv"
