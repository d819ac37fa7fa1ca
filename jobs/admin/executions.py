"""Console pages for executions: the step timeline with live progress, pause, resume, cancel, retry."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from audit.models import AuditLogEntry
from courier_site.admin_base import AuditHistoryMixin, ReadOnlyAdmin
from courier_site.errors import CourierError
from jobs.engine import control
from jobs.models import JobExecution, StepExecution
from jobs.redaction import redact


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [*list(JobExecution.State.choices), ("active", "active (queued, running, paused)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "active":
            return queryset.filter(state__in=("queued", "running", "paused"))
        if self.value():
            return queryset.filter(state=self.value())
        return queryset


class CreatedWithinFilter(admin.SimpleListFilter):
    """A rolling window on created_at (prunes partitions); the dashboard's figures link here."""

    title = "created within"
    parameter_name = "created_within"
    windows = {
        "24h": ("the last 24 hours", timedelta(hours=24)),
        "7d": ("the last 7 days", timedelta(days=7)),
        "14d": ("the last 14 days", timedelta(days=14)),
        "30d": ("the last 30 days", timedelta(days=30)),
    }

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in self.windows.items()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in self.windows:
            return queryset.filter(created_at__gte=timezone.now() - self.windows[self.value()][1])
        return queryset


@admin.register(JobExecution)
class JobExecutionAdmin(AuditHistoryMixin, ReadOnlyAdmin):
    audit_entity_type = "job_execution"
    list_display = (
        "short_id",
        "job",
        "state",
        "triggered_by",
        "job_version_number",
        "attempt",
        "queued_at",
        "started_at",
        "duration",
        "error_excerpt",
    )
    list_filter = (StateFilter, CreatedWithinFilter, "created_at")
    search_fields = ("=id", "job__name", "triggered_by")
    list_select_related = ("job",)
    ordering = ("-created_at",)
    fields = (
        "job",
        "state",
        "triggered_by",
        "job_version_number",
        "attempt",
        "retry_of_execution_id",
        "chain_link",
        "queued_at",
        "started_at",
        "completed_at",
        "worker_name",
        "heartbeat_at",
        "error_message",
        "context",
    )
    readonly_fields = fields
    change_form_after_template = "admin/jobs/jobexecution/timeline.html"
    actions = ["cancel_selected"]

    @admin.display(description="execution")
    def short_id(self, obj: JobExecution) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="chain execution")
    def chain_link(self, obj: JobExecution) -> str:
        if not obj.chain_execution_id:
            return "-"
        url = reverse("admin:jobs_chainexecution_change", args=[obj.chain_execution_id])
        return format_html('<a href="{}">{}</a>', url, str(obj.chain_execution_id)[:8])

    @admin.display(description="duration")
    def duration(self, obj: JobExecution) -> str:
        seconds = obj.duration_seconds
        return f"{seconds:.1f} s" if seconds is not None else "-"

    @admin.display(description="error")
    def error_excerpt(self, obj: JobExecution) -> str:
        return (obj.error_message or "")[:120]

    @admin.display(description="context (secrets redacted)")
    def context(self, obj: JobExecution) -> str:
        values = (obj.context_snapshot or {}).get("values", {})
        return format_html("<pre>{}</pre>", json.dumps(redact(values), indent=2, default=str))

    def has_control_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("jobs.control_jobexecution")

    def get_urls(self) -> list[Any]:
        own = [
            path(
                "<uuid:execution_id>/control/<str:verb>/",
                self.admin_site.admin_view(self.control_view),
                name="jobs_jobexecution_control",
            ),
            path(
                "<uuid:execution_id>/timeline/",
                self.admin_site.admin_view(self.timeline_view),
                name="jobs_jobexecution_timeline",
            ),
        ]
        return own + super().get_urls()

    def timeline_context(self, execution: JobExecution) -> dict[str, Any]:
        steps = list(StepExecution.objects.for_execution(execution.pk))
        return {
            "execution": execution,
            "steps": steps,
            "live": execution.state in ("queued", "running"),
            "verbs": self.available_verbs(execution),
        }

    @staticmethod
    def available_verbs(execution: JobExecution) -> list[tuple[str, str]]:
        verbs = {
            "running": [("pause", "Pause"), ("cancel", "Cancel")],
            "queued": [("cancel", "Cancel")],
            "paused": [("resume", "Resume"), ("cancel", "Cancel")],
            "failed": [("retry", "Retry from failed step")],
        }
        return verbs.get(execution.state, [])

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        obj = context.get("original")
        if obj is not None:
            context.update(self.timeline_context(obj))
            context["can_control"] = self.has_control_permission(request)
        return super().render_change_form(request, context, *args, **kwargs)

    def timeline_view(self, request: HttpRequest, execution_id: Any) -> HttpResponse:
        execution = get_object_or_404(JobExecution.objects.select_related("job"), pk=execution_id)
        if not self.has_view_permission(request, execution):
            raise PermissionDenied
        context = self.timeline_context(execution)
        context["can_control"] = self.has_control_permission(request)
        return TemplateResponse(request, "admin/jobs/jobexecution/timeline_rows.html", context)

    def control_view(self, request: HttpRequest, execution_id: Any, verb: str) -> HttpResponse:
        """Pause, resume, cancel or retry: a confirmation page on GET, the action on POST."""
        execution = get_object_or_404(JobExecution.objects.select_related("job"), pk=execution_id)
        labels = {"pause": "Pause", "resume": "Resume", "cancel": "Cancel", "retry": "Retry from failed step"}
        if verb not in labels:
            raise PermissionDenied
        if not self.has_control_permission(request):
            AuditLogEntry.objects.record(
                entity_type="job_execution",
                entity_id=execution.pk,
                operation=f"{verb}_refused",
                performed_by=request.user,
                details={"reason": "permission"},
            )
            raise PermissionDenied
        change_url = reverse("admin:jobs_jobexecution_change", args=[execution.pk])
        if request.method == "POST":
            operations = {
                "pause": control.request_pause,
                "resume": control.resume,
                "cancel": control.request_cancel,
                "retry": control.retry_from_failed_step,
            }
            try:
                result = operations[verb](execution.pk, by=request.user)
            except CourierError as error:
                messages.error(request, str(error))
                return HttpResponseRedirect(change_url)
            if verb == "retry":
                messages.success(request, f"Queued retry {str(result.pk)[:8]} from the failed step.")
                return HttpResponseRedirect(reverse("admin:jobs_jobexecution_change", args=[result.pk]))
            done = {"pause": "Pause requested", "resume": "Resumed", "cancel": "Cancel requested"}[verb]
            if verb == "cancel" and result.state == "cancelled":
                done = "Cancelled"
            messages.success(request, f"{done}: execution {str(execution.pk)[:8]} of '{execution.job.name}'.")
            return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "title": f"{labels[verb]} execution {str(execution.pk)[:8]} of '{execution.job.name}'?",
            "execution": execution,
            "verb": verb,
            "label": labels[verb],
            "change_url": change_url,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/jobs/jobexecution/control_confirm.html", context)

    @admin.action(description="Cancel selected executions", permissions=["control"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        cancelled = requested = 0
        for execution in queryset.filter(state__in=("queued", "running", "paused")):
            result = control.request_cancel(execution.pk, by=request.user)
            if result.state == "cancelled":
                cancelled += 1
            else:
                requested += 1
        messages.success(request, f"Cancelled {cancelled} execution(s); cancel requested for {requested} running.")


@admin.register(StepExecution)
class StepExecutionAdmin(ReadOnlyAdmin):
    list_display = (
        "job_execution_id",
        "position",
        "step_name",
        "type_key",
        "state",
        "retry_attempt",
        "iteration_index",
        "duration_ms",
        "bytes_processed",
        "started_at",
    )
    list_filter = ("state", "type_key", "created_at")
    search_fields = ("=job_execution__id", "step_name", "type_key")
    ordering = ("-created_at",)
    exclude = ("job_execution", "job_step")
