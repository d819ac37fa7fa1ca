"""Console pages for job definitions: steps, versions with diffs, run now."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from unfold.admin import ModelAdmin, TabularInline

from audit.models import AuditLogEntry
from courier_site.admin_base import AuditHistoryMixin, ReadOnlyAdmin, RefusalAuditMixin, SoftDeleteAdmin
from courier_site.badges import state_badge
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
from jobs.models import Job, JobDependency, JobExecution, JobSchedule, JobStep, JobVersion
from jobs.redaction import redact
from jobs.steps.base import registered_types
from tags.admin_mixins import TaggableAdminMixin


class JobStepInline(TabularInline):
    """The job's steps in order; each row links to the step's own page with one field per configuration key."""

    model = JobStep
    form = console.JobStepForm
    formset = console.JobStepFormSet
    extra = 0
    ordering = ("step_order",)
    fields = ("step_order", "name", "type_key", "alias", "configuration", "timeout_seconds", "form_link")
    readonly_fields = ("form_link",)

    @admin.display(description="form")
    def form_link(self, obj: JobStep) -> str:
        if obj is None or obj.pk is None:
            return "-"
        return format_html('<a href="{}">Edit with form…</a>', reverse("admin:jobs_jobstep_change", args=[obj.pk]))


def free_moving_steps(formset: Any) -> None:
    """Park the steps whose order or alias changes, or which go, above every order the formset wants.

    ix_job_steps_job_order and ix_job_steps_job_alias are checked row by row, so saving the
    rows of a reordering (0 and 1 swapped) one after the other would meet an order still
    held by a row not saved yet. Parked rows are then written with their new values.
    """
    moving = [
        form.instance.pk
        for form in formset.initial_forms
        if form.instance.pk is not None
        and (form in formset.deleted_forms or {"step_order", "alias"} & set(form.changed_data))
    ]
    if not moving:
        return
    job = formset.instance
    wanted = [form.cleaned_data.get("step_order") or 0 for form in formset.forms if getattr(form, "cleaned_data", None)]
    held = list(JobStep.objects.filter(job=job).values_list("step_order", flat=True))
    parking = max([*wanted, *held, 0]) + 1
    for offset, pk in enumerate(moving):
        JobStep.objects.filter(pk=pk).update(step_order=parking + offset, alias=None)


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
        if not obj.version_number or obj.version_number <= 1:
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
    list_display = (
        "name",
        "is_enabled",
        "last_run",
        "next_run",
        "current_version",
        "policy_type",
        "step_count",
        "run_link",
    )
    list_filter = ("is_enabled", "updated_at")
    search_fields = ("name", "description")
    ordering = ("name",)
    inlines = [JobStepInline, UpstreamDependencyInline, JobScheduleInline, JobVersionInline]
    readonly_fields = ("current_version", "add_step_link", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "description", "is_enabled", "current_version", "add_step_link")}),
        ("Failure policy", {"fields": ("policy_type", "max_retries", "backoff_base_seconds", "backoff_max_seconds")}),
        ("History", {"fields": ("created_at", "updated_at")}),
    )
    actions = ["run_selected"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # One query for the whole page: each job's newest execution comes from one probe of
        # ix_job_executions_job_id (job_id, created_at DESC) per partition, its next fire time
        # from ix_job_schedules_job_id, never a query per row nor a scan of the history.
        newest = JobExecution.objects.filter(job_id=OuterRef("pk")).order_by("-created_at")
        next_fire = JobSchedule.objects.filter(
            job_id=OuterRef("pk"), is_enabled=True, next_fire_at__isnull=False
        ).order_by("next_fire_at")
        return (
            super()
            .get_queryset(request)
            .annotate(
                step_total=Subquery(
                    JobStep.objects.filter(job_id=OuterRef("pk"))
                    .order_by()
                    .values("job_id")
                    .annotate(total=Count("*"))
                    .values("total")
                ),
                last_run_id=Subquery(newest.values("id")[:1]),
                last_run_state=Subquery(newest.values("state")[:1]),
                last_run_at=Subquery(newest.values("created_at")[:1]),
                next_run_at=Subquery(next_fire.values("next_fire_at")[:1]),
            )
        )

    @admin.display(description="last run", ordering="last_run_at")
    def last_run(self, obj: Job) -> str:
        if not getattr(obj, "last_run_id", None):
            return "never run"
        url = reverse("admin:jobs_jobexecution_change", args=[obj.last_run_id])
        when = timezone.localtime(obj.last_run_at).strftime("%Y-%m-%d %H:%M")
        badge = state_badge(obj.last_run_state)
        return format_html('<a href="{}">{} <span class="whitespace-nowrap">{}</span></a>', url, badge, when)

    @admin.display(description="next run", ordering="next_run_at")
    def next_run(self, obj: Job) -> str:
        next_run_at = getattr(obj, "next_run_at", None)
        if next_run_at is None:
            return "-"
        return timezone.localtime(next_run_at).strftime("%Y-%m-%d %H:%M")

    @admin.display(description="add a step")
    def add_step_link(self, obj: Job | None) -> str:
        if obj is None or obj.pk is None:
            return "Save the job first, or add steps in the table below."
        orders = list(obj.steps.values_list("step_order", flat=True))
        url = reverse("admin:jobs_jobstep_add")
        query = urlencode({"job": obj.pk, "step_order": max(orders, default=-1) + 1})
        return format_html('<a href="{}?{}">Add a step with its type\'s form…</a>', url, query)

    @admin.display(description="steps", ordering="step_total")
    def step_count(self, obj: Job) -> int:
        return getattr(obj, "step_total", None) or 0

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
            if formset.model is JobStep:
                free_moving_steps(formset)
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
    form = console.StepPageForm
    list_display = ("job", "step_order", "name", "type_key", "timeout_seconds")
    list_filter = ("type_key",)
    search_fields = ("name", "job__name", "type_key")
    list_select_related = ("job",)
    ordering = ("job__name", "step_order")

    def step_type_for(self, request: HttpRequest, obj: Any) -> str | None:
        """The type whose configuration fields the page shows: the posted one, else the step's, else ?type_key=."""
        for candidate in (request.POST.get("type_key"), obj.type_key if obj else None, request.GET.get("type_key")):
            if candidate and candidate in registered_types():
                return candidate
        return None

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        kwargs["fields"] = console.STEP_PAGE_FIELDS
        base = super().get_form(request, obj, change, **kwargs)
        type_key = self.step_type_for(request, obj)
        return console.step_page_form(base, type_key, obj) if type_key else base

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        form = self.get_form(request, obj)
        config_fields = [name for name in form.base_fields if name.startswith(console.CONFIG_PREFIX)]
        sets: list[Any] = [(None, {"fields": console.STEP_PAGE_FIELDS})]
        if config_fields:
            sets.append(("Configuration", {"fields": config_fields}))
        return sets

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        if request.method == "GET" and self.step_type_for(request, None) is None and self.has_add_permission(request):
            return self.choose_type_view(request)
        return super().add_view(request, form_url, extra_context)

    def choose_type_view(self, request: HttpRequest) -> HttpResponse:
        """First step of adding a step: pick its type, so the form can show that type's configuration fields."""
        kept = {key: value for key, value in request.GET.items() if key in ("job", "step_order", "name")}
        add_url = reverse("admin:jobs_jobstep_add")
        choices = [
            {"key": key, "label": label, "url": f"{add_url}?{urlencode({**kept, 'type_key': key})}"}
            for key, label in console.step_type_choices()
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Add a step: choose its type",
            "choices": choices,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/jobs/jobstep/choose_type.html", context)

    def save_model(self, request: HttpRequest, obj: JobStep, form: Any, change: bool) -> None:
        obj.alias = (obj.alias or "").strip() or None
        super().save_model(request, obj, form, change)
        record_version(obj.job, created_by=request.user)

    def back_to_job(self, request: HttpRequest, obj: JobStep) -> HttpResponse:
        if request.user.has_perm("jobs.view_job"):
            return HttpResponseRedirect(reverse("admin:jobs_job_change", args=[obj.job_id]))
        return HttpResponseRedirect(reverse("admin:jobs_jobstep_changelist"))

    def response_post_save_add(self, request: HttpRequest, obj: JobStep) -> HttpResponse:
        return self.back_to_job(request, obj)

    def response_post_save_change(self, request: HttpRequest, obj: JobStep) -> HttpResponse:
        return self.back_to_job(request, obj)


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
