"""Console pages for schedules (jobs and chains) and job dependencies, with their inlines."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from unfold.admin import ModelAdmin, TabularInline

from audit.models import AuditLogEntry
from courier_site.admin_base import RefusalAuditMixin, TolerantAutocompleteMixin
from courier_site.errors import CourierError
from jobs import cron, dependencies, scheduling
from jobs.models import ChainSchedule, JobDependency, JobSchedule, Schedule


class ScheduleForm(forms.ModelForm):
    """Cron or one-shot schedule; the expression, zone and time are checked with their error codes."""

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        schedule: Schedule = self.instance
        for name in ("schedule_type", "cron_expression", "run_at", "time_zone", "is_enabled"):
            if name in cleaned:
                setattr(schedule, name, cleaned[name])
        run_at_changed = "run_at" in self.changed_data or not schedule.pk
        try:
            scheduling.check(schedule, run_at_changed=run_at_changed)
        except cron.InvalidCronExpression as error:
            field = "time_zone" if "time zone" in error.detail else "cron_expression"
            self.add_error(field if field in self.fields else None, str(error))
        except scheduling.PastOneShot as error:
            self.add_error("run_at" if "run_at" in self.fields else None, str(error))
        else:
            cleaned["cron_expression"] = schedule.cron_expression
            cleaned["run_at"] = schedule.run_at
            cleaned["time_zone"] = schedule.time_zone or None
        return cleaned

    def save(self, commit: bool = True) -> Any:
        scheduling.refresh(self.instance)
        return super().save(commit)


SCHEDULE_FIELDS = ("schedule_type", "cron_expression", "run_at", "time_zone", "is_enabled")


def record_schedule_change(schedule: Schedule, *, by: Any, operation: str) -> None:
    AuditLogEntry.objects.record(
        entity_type=scheduling.entity_type(schedule),
        entity_id=schedule.pk,
        operation=operation,
        performed_by=by,
        details={
            "schedule_type": schedule.schedule_type,
            "cron_expression": schedule.cron_expression,
            "run_at": schedule.run_at,
            "time_zone": schedule.time_zone,
            "is_enabled": schedule.is_enabled,
            "next_fire_at": schedule.next_fire_at,
        },
    )


class ScheduleDisplay:
    """Columns and read-only fields shared by the schedule lists and inlines."""

    @admin.display(description="when")
    def description(self, obj: Schedule) -> str:
        return scheduling.describe(obj) if obj.pk or obj.cron_expression or obj.run_at else "-"

    @admin.display(description="next five fire times")
    def upcoming_times(self, obj: Schedule) -> str:
        if not obj.pk:
            return "shown after saving"
        if not obj.is_enabled:
            return "disabled"
        try:
            times = scheduling.upcoming(obj)
        except CourierError as error:
            return str(error)
        if not times:
            return "none"
        zone = obj.time_zone
        rows = [
            (
                f"{moment:%Y-%m-%d %H:%M:%S} UTC",
                f" — {timezone.localtime(moment, _zone(zone)):%H:%M:%S %Z}" if zone else "",
            )
            for moment in times
        ]
        return format_html_join("", "<div>{}{}</div>", rows)


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


class ScheduleAdminBase(TolerantAutocompleteMixin, ScheduleDisplay, RefusalAuditMixin, ModelAdmin):
    form = ScheduleForm
    list_filter = ("schedule_type", "is_enabled", "next_fire_at")
    readonly_fields = ("description", "upcoming_times", "last_fired_at", "next_fire_at")
    actions = ["enable_selected", "disable_selected"]
    ordering = ("next_fire_at",)

    def save_model(self, request: HttpRequest, obj: Schedule, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        record_schedule_change(obj, by=request.user, operation="changed" if change else "created")

    def delete_model(self, request: HttpRequest, obj: Schedule) -> None:
        record_schedule_change(obj, by=request.user, operation="deleted")
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for schedule in queryset:
            record_schedule_change(schedule, by=request.user, operation="deleted")
        super().delete_queryset(request, queryset)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet, enabled: bool) -> None:
        changed, refused = 0, []
        for schedule in queryset:
            was = schedule.is_enabled
            try:
                scheduling.set_enabled(schedule, enabled, by=request.user)
            except CourierError as error:
                refused.append(f"{schedule}: {error}")
                continue
            changed += was != enabled
        verb = "Enabled" if enabled else "Disabled"
        messages.success(request, f"{verb} {changed} schedule{'s' if changed != 1 else ''}.")
        for message in refused:
            messages.error(request, message)

    @admin.action(description="Enable selected schedules", permissions=["change"])
    def enable_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable selected schedules", permissions=["change"])
    def disable_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_enabled(request, queryset, False)


@admin.register(JobSchedule)
class JobScheduleAdmin(ScheduleAdminBase):
    audit_entity_type = "job_schedule"
    list_display = (
        "job",
        "schedule_type",
        "cron_expression",
        "description",
        "time_zone",
        "is_enabled",
        "next_fire_at",
        "last_fired_at",
    )
    list_select_related = ("job",)
    search_fields = ("job__name", "cron_expression")
    autocomplete_fields = ("job",)
    fields = ("job", *SCHEDULE_FIELDS, "description", "upcoming_times", "next_fire_at", "last_fired_at")


@admin.register(ChainSchedule)
class ChainScheduleAdmin(ScheduleAdminBase):
    audit_entity_type = "chain_schedule"
    list_display = (
        "chain",
        "schedule_type",
        "cron_expression",
        "description",
        "time_zone",
        "is_enabled",
        "next_fire_at",
        "last_fired_at",
    )
    list_select_related = ("chain",)
    search_fields = ("chain__name", "cron_expression")
    autocomplete_fields = ("chain",)
    fields = ("chain", *SCHEDULE_FIELDS, "description", "upcoming_times", "next_fire_at", "last_fired_at")


class ScheduleInline(ScheduleDisplay, TabularInline):
    form = ScheduleForm
    extra = 0
    fields = (*SCHEDULE_FIELDS, "description", "next_fire_at", "last_fired_at")
    readonly_fields = ("description", "next_fire_at", "last_fired_at")
    show_change_link = True


class JobScheduleInline(ScheduleInline):
    model = JobSchedule


class ChainScheduleInline(ScheduleInline):
    model = ChainSchedule


def save_schedule_formset(request: HttpRequest, formset: Any) -> None:
    """Save a schedule inline of a job or chain page, auditing each change."""
    for obj in formset.deleted_objects if hasattr(formset, "deleted_objects") else []:
        record_schedule_change(obj, by=request.user, operation="deleted")
    instances = formset.save()
    created = {form.instance.pk for form in formset.extra_forms if form.has_changed()}
    for schedule in instances:
        record_schedule_change(schedule, by=request.user, operation="created" if schedule.pk in created else "changed")


# ---------------------------------------------------------------- dependencies


class DependencyForm(forms.ModelForm):
    """An edge upstream → downstream, refused when it is a self edge, a duplicate or closes a cycle."""

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        upstream = cleaned.get("upstream_job") or getattr(self.instance, "upstream_job", None)
        downstream = cleaned.get("downstream_job")
        if downstream is None and self.instance.downstream_job_id:
            downstream = self.instance.downstream_job
        if upstream is None or downstream is None or cleaned.get("DELETE"):
            return cleaned
        try:
            dependencies.check_edge(upstream.pk, downstream.pk, exclude_edge_id=self.instance.pk)
        except CourierError as error:
            self.add_error("upstream_job" if "upstream_job" in self.fields else None, str(error))
        return cleaned


class DependencyFormSet(forms.BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        seen = set()
        for form in self.forms:
            if not hasattr(form, "cleaned_data") or form.cleaned_data.get("DELETE"):
                continue
            upstream = form.cleaned_data.get("upstream_job")
            if upstream is None:
                continue
            if upstream.pk in seen:
                raise forms.ValidationError(f"[E2007] '{upstream.name}' is listed twice as an upstream job")
            seen.add(upstream.pk)


def record_dependency_change(edge: JobDependency, *, by: Any, operation: str) -> None:
    AuditLogEntry.objects.record(
        entity_type="job_dependency",
        entity_id=edge.pk,
        operation=operation,
        performed_by=by,
        details={
            "upstream_job_id": str(edge.upstream_job_id),
            "downstream_job_id": str(edge.downstream_job_id),
            "run_on_failure": edge.run_on_failure,
        },
    )


class UpstreamDependencyInline(TolerantAutocompleteMixin, TabularInline):
    """On a job's page: the jobs it waits for."""

    model = JobDependency
    fk_name = "downstream_job"
    form = DependencyForm
    formset = DependencyFormSet
    extra = 0
    fields = ("upstream_job", "run_on_failure")
    autocomplete_fields = ("upstream_job",)
    verbose_name = "upstream job (this job runs after it)"
    verbose_name_plural = "upstream jobs (this job runs after they complete)"


def save_dependency_formset(request: HttpRequest, formset: Any) -> None:
    for obj in formset.deleted_objects if hasattr(formset, "deleted_objects") else []:
        record_dependency_change(obj, by=request.user, operation="deleted")
    created = {id(form.instance) for form in formset.extra_forms if form.has_changed()}
    for edge in formset.save():
        record_dependency_change(edge, by=request.user, operation="created" if id(edge) in created else "changed")


@admin.register(JobDependency)
class JobDependencyAdmin(TolerantAutocompleteMixin, RefusalAuditMixin, ModelAdmin):
    audit_entity_type = "job_dependency"
    form = DependencyForm
    list_display = ("upstream_job", "arrow", "downstream_job", "run_on_failure")
    list_filter = ("run_on_failure",)
    list_select_related = ("upstream_job", "downstream_job")
    search_fields = ("upstream_job__name", "downstream_job__name")
    autocomplete_fields = ("upstream_job", "downstream_job")

    @admin.display(description="")
    def arrow(self, obj: JobDependency) -> str:
        return format_html("{}", "→ then")

    def save_model(self, request: HttpRequest, obj: JobDependency, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        record_dependency_change(obj, by=request.user, operation="changed" if change else "created")

    def delete_model(self, request: HttpRequest, obj: JobDependency) -> None:
        record_dependency_change(obj, by=request.user, operation="deleted")
        super().delete_model(request, obj)
