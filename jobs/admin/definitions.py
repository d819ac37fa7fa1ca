"""Console pages for job definitions: steps, versions with diffs, run now."""

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
from courier_site.admin_base import AuditHistoryMixin, ReadOnlyAdmin, RefusalAuditMixin, SoftDeleteAdmin
from courier_site.errors import CourierError
from jobs import console
from jobs.admin.schedules import (
    JobScheduleInline,
    UpstreamDependencyInline,
    save_dependency_formset,
    save_schedule_formset,
)
from jobs.definitions import record_version, snapshot
from jobs.engine import control
from jobs.models import Job, JobDependency, JobSchedule, JobStep, JobVersion
from jobs.redaction import redact
from jobs.secrets import seal_config
from tags.admin_mixins import TaggableAdminMixin


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

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Versions are written by saving the job; without this an Admin (who holds add_jobversion)
        # gets an empty inline row whose "changes" column fails on a version without a number.
        return False

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
class JobAdmin(TaggableAdminMixin, AuditHistoryMixin, RefusalAuditMixin, SoftDeleteAdmin):
    tag_entity_type = "job"
    audit_entity_type = "job"
    form = console.JobForm
    list_display = ("name", "is_enabled", "current_version", "policy_type", "step_count", "updated_at", "run_link")
    list_filter = ("is_enabled", "updated_at")
    search_fields = ("name", "description")
    ordering = ("name",)
    inlines = [JobStepInline, UpstreamDependencyInline, JobScheduleInline, JobVersionInline]
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

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is JobSchedule:
            save_schedule_formset(request, formset)
        elif formset.model is JobDependency:
            save_dependency_formset(request, formset)
        else:
            super().save_formset(request, form, formset, change)

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
class JobStepAdmin(RefusalAuditMixin, ModelAdmin):
    """A step on its own page: its configuration edited through a form built from the step type's schema."""

    audit_entity_type = "job_step"

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
