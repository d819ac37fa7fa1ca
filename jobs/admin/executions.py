"""Console pages for executions: the step timeline with live progress, pause, resume, cancel, retry."""

from __future__ import annotations

import json
import re
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
from django.utils.html import format_html, format_html_join

from audit.models import AuditLogEntry
from courier_site.admin_base import AuditHistoryMixin, ReadOnlyAdmin
from courier_site.badges import state_badge
from courier_site.errors import CourierError
from jobs.engine import control
from jobs.models import JobExecution, JobVersion, StepExecution
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


ERROR_CODE = re.compile(r"\[(E\d{4})\]")
LIVE_STATES = ("queued", "running")
ACTIVE_STATES = ("queued", "running", "paused")


def error_code(message: str | None) -> str:
    """The first [Ennnn] code in an error message, or ""."""
    found = ERROR_CODE.search(message or "")
    return found.group(1) if found else ""


def elapsed_seconds(execution: JobExecution, now: Any = None) -> float | None:
    """Run time: start to end, or start to now while it has not ended."""
    if execution.started_at is None:
        return None
    end = execution.completed_at or now or timezone.now()
    return max((end - execution.started_at).total_seconds(), 0.0)


def value_rows(values: dict[str, Any]) -> list[tuple[str, str]]:
    """Values as (key, value) rows sorted by key, secrets redacted; nested values as compact JSON."""
    shown = redact(values or {})
    return [
        (str(key), value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False))
        for key, value in sorted(shown.items(), key=lambda item: str(item[0]))
    ]


def context_rows(execution: JobExecution) -> list[tuple[str, str]]:
    """The run's context values as rows (see value_rows)."""
    return value_rows((execution.context_snapshot or {}).get("values") or {})


def unreached_steps(execution: JobExecution, rows: list[StepExecution]) -> list[dict[str, Any]]:
    """Steps of the run's pinned definition that have no row yet, in order: still to come while the run
    goes on (pending), never reached once it has ended. Flow steps (flow.*) steer and get no rows."""
    snapshot = (
        JobVersion.objects.filter(job_id=execution.job_id, version_number=execution.job_version_number)
        .values_list("config_snapshot", flat=True)
        .first()
    )
    ran = {row.step_order for row in rows}
    label = "pending" if execution.state in ACTIVE_STATES else "not run"
    defined = sorted((snapshot or {}).get("steps") or [], key=lambda step: step.get("step_order") or 0)
    return [
        {"step_order": step.get("step_order"), "name": step.get("name") or "", "type_key": step.get("type_key")}
        | {"label": label}
        for step in defined
        if step.get("step_order") not in ran and not str(step.get("type_key", "")).startswith("flow.")
    ]


def step_progress(step: StepExecution) -> dict[str, Any] | None:
    """The running step's live progress with its percentage, when the step reports one."""
    if step.state != "running" or not step.progress:
        return None
    progress = dict(step.progress)
    total, done = progress.get("bytes_total"), progress.get("bytes_done") or 0
    progress["percent"] = min(100, int(done * 100 / total)) if total else None
    return progress


@admin.register(JobExecution)
class JobExecutionAdmin(AuditHistoryMixin, ReadOnlyAdmin):
    audit_entity_type = "job_execution"
    list_display = (
        "short_id",
        "job",
        "state_badge",
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
    )
    readonly_fields = fields
    # The page draws its own header, step timeline (refreshed while the run goes on) and
    # context table instead of the generic read-only fieldset.
    change_form_template = "admin/jobs/jobexecution/change_form.html"
    actions = ["cancel_selected"]

    @admin.display(description="execution")
    def short_id(self, obj: JobExecution) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: JobExecution) -> str:
        return state_badge(obj.state)

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
        """What the live part of the page shows: header facts, the step timeline and the verbs the state allows."""
        steps = list(StepExecution.objects.for_execution(execution.pk))
        failed_step = next((step for step in reversed(steps) if step.state == "failed"), None)
        error = (failed_step.error_message if failed_step and failed_step.error_message else None) or (
            execution.error_message or ""
        )
        for step in steps:
            step.live_progress = step_progress(step)
            step.output_url = reverse("admin:jobs_stepexecution_change", args=[step.pk])
        retry_of_url = (
            reverse("admin:jobs_jobexecution_change", args=[execution.retry_of_execution_id])
            if execution.retry_of_execution_id
            else ""
        )
        return {
            "execution": execution,
            "steps": steps,
            "unreached": unreached_steps(execution, steps),
            "live": execution.state in LIVE_STATES,
            "verbs": self.available_verbs(execution),
            "elapsed_seconds": elapsed_seconds(execution),
            "failed_step": failed_step,
            # The code is shown on its own, in front of the message without it.
            "error": ERROR_CODE.sub("", error, count=1).strip() if execution.state in ("failed", "cancelled") else "",
            "error_code": error_code(error) if execution.state in ("failed", "cancelled") else "",
            "retry_of_url": retry_of_url,
            "chain_url": (
                reverse("admin:jobs_chainexecution_change", args=[execution.chain_execution_id])
                if execution.chain_execution_id
                else ""
            ),
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
            context["context_rows"] = context_rows(obj)
            context["job_url"] = reverse("admin:jobs_job_change", args=[obj.job_id])
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
    """One step of one run: its outputs (secrets redacted), error and stack trace; opened from the timeline."""

    list_display = (
        "job_execution_id",
        "position",
        "step_name",
        "type_key",
        "state_badge",
        "retry_attempt",
        "iteration_index",
        "duration_ms",
        "bytes_processed",
        "started_at",
    )
    list_filter = ("state", "type_key", "created_at")
    search_fields = ("=job_execution__id", "step_name", "type_key")
    ordering = ("-created_at",)
    fields = (
        "execution_link",
        "position",
        "step_name",
        "type_key",
        "state_badge",
        "retry_attempt",
        "iteration_index",
        "started_at",
        "completed_at",
        "duration_ms",
        "bytes_processed",
        "error_message",
        "outputs",
        "stack_trace",
    )
    readonly_fields = fields

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: StepExecution) -> str:
        return state_badge(obj.state)

    @admin.display(description="execution")
    def execution_link(self, obj: StepExecution) -> str:
        url = reverse("admin:jobs_jobexecution_change", args=[obj.job_execution_id])
        return format_html('<a href="{}">{}</a>', url, str(obj.job_execution_id)[:8])

    @admin.display(description="outputs (secrets redacted)")
    def outputs(self, obj: StepExecution) -> str:
        values = redact(obj.output_data or {})
        if not isinstance(values, dict) or not values:
            return "-" if not values else format_html("<code>{}</code>", json.dumps(values, default=str))
        rows = (
            (key, value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False))
            for key, value in sorted(values.items(), key=lambda item: str(item[0]))
        )
        return format_html(
            '<table class="courier-kv">{}</table>',
            format_html_join(
                "",
                '<tr><th class="text-left pr-4 align-top">{}</th><td style="overflow-wrap:anywhere">{}</td></tr>',
                rows,
            ),
        )

    @admin.display(description="stack trace")
    def stack_trace(self, obj: StepExecution) -> str:
        if not obj.error_stack_trace:
            return "-"
        return format_html('<pre style="white-space:pre-wrap;overflow-wrap:anywhere">{}</pre>', obj.error_stack_trace)
