"""Console pages for jobs: definitions with versions, run now, executions with their step timeline."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from unfold.admin import ModelAdmin, TabularInline

from audit.models import AuditLogEntry
from courier_site.admin_base import ReadOnlyAdmin, SoftDeleteAdmin
from courier_site.errors import CourierError
from jobs import console
from jobs.definitions import record_version, snapshot
from jobs.engine import control
from jobs.models import (
    ChainExecution,
    ChainSchedule,
    Job,
    JobChain,
    JobChainMember,
    JobDependency,
    JobExecution,
    JobSchedule,
    JobStep,
    JobVersion,
    StepExecution,
)
from jobs.redaction import redact
from jobs.secrets import seal_config


class JobStepInline(TabularInline):
    model = JobStep
    form = console.JobStepForm
    formset = console.JobStepFormSet
    extra = 0
    ordering = ("step_order",)
    fields = ("step_order", "name", "type_key", "alias", "configuration", "timeout_seconds")
    show_change_link = True


class JobVersionInline(TabularInline):
    model = JobVersion
    extra = 0
    can_delete = False
    fields = ("version_number", "created_at", "created_by", "diff_link")
    readonly_fields = fields
    ordering = ("-version_number",)
    max_num = 0

    @admin.display(description="changes")
    def diff_link(self, obj: JobVersion) -> str:
        if obj.version_number <= 1:
            return "first version"
        url = reverse("admin:jobs_job_diff", args=[obj.job_id])
        return format_html(
            '<a href="{}?a={}&b={}">diff with v{}</a>',
            url,
            obj.version_number - 1,
            obj.version_number,
            obj.version_number - 1,
        )


@admin.register(Job)
class JobAdmin(SoftDeleteAdmin):
    form = console.JobForm
    list_display = ("name", "is_enabled", "current_version", "policy_type", "step_count", "updated_at", "run_link")
    list_filter = ("is_enabled", "updated_at")
    search_fields = ("name", "description")
    ordering = ("name",)
    inlines = [JobStepInline, JobVersionInline]
    readonly_fields = ("current_version", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "description", "is_enabled", "current_version")}),
        ("Failure policy", {"fields": ("policy_type", "max_retries", "backoff_base_seconds", "backoff_max_seconds")}),
        ("History", {"fields": ("created_at", "updated_at")}),
    )
    actions = ["run_selected"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        from django.db.models import Count

        return super().get_queryset(request).annotate(step_total=Count("steps"))

    @admin.display(description="steps", ordering="step_total")
    def step_count(self, obj: Job) -> int:
        return getattr(obj, "step_total", 0)

    @admin.display(description="")
    def run_link(self, obj: Job) -> str:
        return format_html('<a href="{}">Run now…</a>', reverse("admin:jobs_job_run", args=[obj.pk]))

    def get_urls(self) -> list[Any]:
        own = [
            path("<uuid:job_id>/run/", self.admin_site.admin_view(self.run_view), name="jobs_job_run"),
            path("<uuid:job_id>/diff/", self.admin_site.admin_view(self.diff_view), name="jobs_job_diff"),
        ]
        return own + super().get_urls()

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("jobs.run_job")

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        job = form.instance
        latest = job.versions.order_by("-version_number").first()
        if latest is None or latest.config_snapshot != snapshot(job):
            version = record_version(job, created_by=request.user)
            messages.info(request, f"Saved as version {version.version_number}.")

    def run_view(self, request: HttpRequest, job_id: Any) -> HttpResponse:
        """Confirmation page naming the version that will run; POST queues the execution."""
        job = get_object_or_404(Job, pk=job_id)
        if not self.has_run_permission(request):
            AuditLogEntry.objects.record(
                entity_type="job",
                entity_id=job.pk,
                operation="run_refused",
                performed_by=request.user,
                details={"reason": "permission"},
            )
            raise PermissionDenied
        if request.method == "POST":
            try:
                execution = control.enqueue(
                    job, triggered_by=f"manual:{request.user.get_username()}", requested_by=request.user
                )
            except CourierError as error:
                messages.error(request, str(error))
                return HttpResponseRedirect(reverse("admin:jobs_job_change", args=[job.pk]))
            messages.success(request, f"Queued execution of '{job.name}' (version {execution.job_version_number}).")
            return HttpResponseRedirect(reverse("admin:jobs_jobexecution_change", args=[execution.pk]))
        version = job.versions.filter(version_number=job.current_version).first()
        definition = version.config_snapshot if version else snapshot(job)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Run '{job.name}' now?",
            "job": job,
            "version_number": job.current_version,
            "steps": definition.get("steps", []),
            "policy": definition.get("failure_policy", {}),
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/jobs/job/run_confirm.html", context)

    def diff_view(self, request: HttpRequest, job_id: Any) -> HttpResponse:
        job = get_object_or_404(Job.all_objects, pk=job_id)
        if not self.has_view_permission(request, job):
            raise PermissionDenied
        numbers = list(job.versions.order_by("version_number").values_list("version_number", flat=True))
        try:
            first = int(request.GET.get("a") or (numbers[-2] if len(numbers) > 1 else numbers[0]))
            second = int(request.GET.get("b") or numbers[-1])
        except (ValueError, IndexError):
            first = second = 0
        old = job.versions.filter(version_number=first).first()
        new = job.versions.filter(version_number=second).first()
        lines = (
            console.version_diff(redact(old.config_snapshot), redact(new.config_snapshot), f"v{first}", f"v{second}")
            if old and new
            else []
        )
        context = {
            **self.admin_site.each_context(request),
            "title": f"{job.name}: changes from v{first} to v{second}",
            "job": job,
            "numbers": numbers,
            "first": first,
            "second": second,
            "lines": lines,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/jobs/job/diff.html", context)

    @admin.action(description="Run selected jobs now", permissions=["run"])
    def run_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        queued, refused = 0, []
        for job in queryset:
            try:
                control.enqueue(job, triggered_by=f"manual:{request.user.get_username()}", requested_by=request.user)
                queued += 1
            except CourierError as error:
                refused.append(str(error))
        if queued:
            messages.success(request, f"Queued {queued} execution{'s' if queued != 1 else ''}.")
        for message in refused:
            messages.error(request, message)


@admin.register(JobStep)
class JobStepAdmin(ModelAdmin):
    """A step on its own page: its configuration edited through a form built from the step type's schema."""

    list_display = ("job", "step_order", "name", "type_key", "timeout_seconds")
    list_filter = ("type_key",)
    search_fields = ("name", "job__name", "type_key")
    list_select_related = ("job",)
    ordering = ("job__name", "step_order")

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        type_key = obj.type_key if obj else request.GET.get("type_key")
        kwargs["fields"] = ("job", "step_order", "name", "type_key", "alias", "timeout_seconds")
        base = super().get_form(request, obj, change, **kwargs)
        if not type_key:
            return base
        try:
            config_form = console.config_form_class(type_key)
        except CourierError:
            return base
        attrs = {f"config__{name}": field for name, field in config_form.base_fields.items()}

        def clean(form: Any) -> dict[str, Any]:
            cleaned = base.clean(form)
            configuration = {
                name[len("config__") :]: value
                for name, value in cleaned.items()
                if name.startswith("config__") and value not in (None, "")
            }
            secret_names = {field.name for field in console.get_step_type(type_key).fields if field.secret}
            for name in secret_names:  # write-only: an empty secret field keeps the stored value
                if name not in configuration and form.instance.pk and name in (form.instance.configuration or {}):
                    configuration[name] = form.instance.configuration[name]
            problems = console.get_step_type(type_key).validate(configuration, f"step {cleaned.get('step_order')}")
            for problem in problems:
                key = next((name for name in config_form.base_fields if f"'{name}'" in problem), None)
                form.add_error(f"config__{key}" if key else None, f"[E2002] {problem}")
            form.instance.configuration = seal_config(type_key, configuration)
            return cleaned

        attrs["clean"] = clean
        form_class = type("StepConfigurationForm", (base,), attrs)
        if obj is not None:
            for name in config_form.base_fields:
                field = form_class.base_fields[f"config__{name}"]
                if not console.is_secret_field(type_key, name):
                    field.initial = (obj.configuration or {}).get(name, field.initial)
        return form_class

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        form = self.get_form(request, obj)
        config_fields = [name for name in form.base_fields if name.startswith("config__")]
        sets = [(None, {"fields": ("job", "step_order", "name", "type_key", "alias", "timeout_seconds")})]
        if config_fields:
            sets.append(("Configuration", {"fields": config_fields}))
        return sets

    def save_model(self, request: HttpRequest, obj: JobStep, form: Any, change: bool) -> None:
        obj.alias = (obj.alias or "").strip() or None
        super().save_model(request, obj, form, change)
        record_version(obj.job, created_by=request.user)


@admin.register(JobVersion)
class JobVersionAdmin(ReadOnlyAdmin):
    list_display = ("job", "version_number", "created_at", "created_by")
    list_select_related = ("job",)
    search_fields = ("job__name", "created_by")
    readonly_fields = ("job", "version_number", "created_at", "created_by", "definition")
    exclude = ("config_snapshot",)

    @admin.display(description="definition")
    def definition(self, obj: JobVersion) -> str:
        return format_html("<pre>{}</pre>", json.dumps(redact(obj.config_snapshot), indent=2))


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


@admin.register(JobExecution)
class JobExecutionAdmin(ReadOnlyAdmin):
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
    list_filter = (StateFilter, "created_at")
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
                "pause": execution.pause,
                "resume": execution.resume,
                "cancel": execution.cancel,
                "retry": execution.retry_from_failed_step,
            }
            try:
                result = operations[verb](by=request.user)
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


class JobChainMemberInline(TabularInline):
    model = JobChainMember
    fk_name = "chain"
    extra = 0
    autocomplete_fields = ("job",)
    fields = ("execution_order", "job", "depends_on_member", "run_on_upstream_failure")


@admin.register(JobChain)
class JobChainAdmin(SoftDeleteAdmin):
    list_display = ("name", "is_enabled", "updated_at")
    list_filter = ("is_enabled",)
    search_fields = ("name", "description")
    inlines = [JobChainMemberInline]


@admin.register(ChainExecution)
class ChainExecutionAdmin(ReadOnlyAdmin):
    list_display = ("chain", "state", "triggered_by", "started_at", "completed_at", "created_at")
    list_filter = ("state", "created_at")
    list_select_related = ("chain",)
    search_fields = ("chain__name", "=id")


@admin.register(JobChainMember)
class JobChainMemberAdmin(ModelAdmin):
    list_display = ("chain", "execution_order", "job", "depends_on_member", "run_on_upstream_failure")
    list_select_related = ("chain", "job")
    search_fields = ("chain__name", "job__name")


@admin.register(JobDependency)
class JobDependencyAdmin(ModelAdmin):
    list_display = ("upstream_job", "downstream_job", "run_on_failure")
    list_select_related = ("upstream_job", "downstream_job")
    search_fields = ("upstream_job__name", "downstream_job__name")
    autocomplete_fields = ("upstream_job", "downstream_job")


@admin.register(JobSchedule)
class JobScheduleAdmin(ModelAdmin):
    list_display = ("job", "schedule_type", "cron_expression", "run_at", "is_enabled", "next_fire_at", "last_fired_at")
    list_filter = ("schedule_type", "is_enabled")
    list_select_related = ("job",)
    search_fields = ("job__name", "cron_expression")
    readonly_fields = ("last_fired_at", "next_fire_at")


@admin.register(ChainSchedule)
class ChainScheduleAdmin(ModelAdmin):
    list_display = (
        "chain",
        "schedule_type",
        "cron_expression",
        "run_at",
        "is_enabled",
        "next_fire_at",
        "last_fired_at",
    )
    list_filter = ("schedule_type", "is_enabled")
    list_select_related = ("chain",)
    search_fields = ("chain__name", "cron_expression")
    readonly_fields = ("last_fired_at", "next_fire_at")
