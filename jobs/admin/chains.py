"""Console pages for chains: members with their dependencies, trigger now, chain executions and cancel."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Max, OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from unfold.admin import TabularInline

from audit.models import AuditLogEntry
from courier_site.admin_base import (
    AuditHistoryMixin,
    ReadOnlyAdmin,
    RefusalAuditMixin,
    SoftDeleteAdmin,
    TolerantAutocompleteMixin,
)
from courier_site.badges import state_badge
from courier_site.errors import CourierError
from jobs import chains
from jobs.admin.executions import elapsed_seconds, value_rows
from jobs.admin.schedules import ChainScheduleInline, save_schedule_formset
from jobs.models import ChainExecution, ChainExecutionMember, ChainSchedule, JobChain, JobChainMember
from tags.admin_mixins import TaggableAdminMixin

# A chain execution in these states may still change; its page keeps itself current.
LIVE_STATES = ("pending", "running")


class ChainMemberForm(forms.ModelForm):
    """A member names the member it waits for by that member's order, so new members can refer to each other."""

    depends_on_order = forms.IntegerField(
        required=False,
        label="runs after member",
        help_text="Order of the member that must finish first; empty for an entry point (starts with the chain).",
    )

    class Meta:
        model = JobChainMember
        fields = ("execution_order", "job", "depends_on_order", "run_on_upstream_failure")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        upstream = self.instance.depends_on_member if self.instance.pk else None
        if upstream is not None:
            self.fields["depends_on_order"].initial = upstream.execution_order


class ChainMemberFormSet(forms.BaseInlineFormSet):
    """The whole member list is checked together: unique orders, known upstreams, no cycle [E2024]."""

    def clean(self) -> None:
        super().clean()
        specs = []
        for form in self.forms:
            data = getattr(form, "cleaned_data", None)
            if not data or data.get("DELETE") or data.get("execution_order") is None or data.get("job") is None:
                continue
            specs.append(
                chains.MemberSpec(
                    execution_order=data["execution_order"],
                    job_id=data["job"].pk,
                    depends_on_order=data.get("depends_on_order"),
                    run_on_upstream_failure=bool(data.get("run_on_upstream_failure")),
                )
            )
            if data["job"].is_deleted:
                raise forms.ValidationError(f"[E2021] member {data['execution_order']}: job '{data['job']}' is deleted")
        try:
            chains.check_members(specs)
        except CourierError as error:
            raise forms.ValidationError(str(error)) from error


class JobChainMemberInline(TolerantAutocompleteMixin, TabularInline):
    model = JobChainMember
    fk_name = "chain"
    form = ChainMemberForm
    formset = ChainMemberFormSet
    extra = 0
    autocomplete_fields = ("job",)
    fields = ("execution_order", "job", "depends_on_order", "run_on_upstream_failure")
    ordering = ("execution_order",)


def _link_members(chain: JobChain, formset: Any) -> None:
    """Point each member at the member named by its 'runs after' order."""
    by_order = {member.execution_order: member for member in chain.members.all()}
    for form in formset.forms:
        data = getattr(form, "cleaned_data", None)
        if not data or data.get("DELETE") or form.instance.pk is None:
            continue
        member = by_order.get(data.get("execution_order"))
        if member is None:
            continue
        wanted = by_order.get(data.get("depends_on_order")) if data.get("depends_on_order") is not None else None
        if member.depends_on_member_id != (wanted.pk if wanted else None):
            member.depends_on_member = wanted
            member.save(update_fields=["depends_on_member"])


@admin.register(JobChain)
class JobChainAdmin(TaggableAdminMixin, AuditHistoryMixin, RefusalAuditMixin, SoftDeleteAdmin):
    tag_entity_type = "job_chain"
    audit_entity_type = "chain"
    list_display = ("name", "is_enabled", "member_count", "last_run", "updated_at", "run_link")
    list_filter = ("is_enabled", "updated_at")
    search_fields = ("name", "description")
    inlines = [JobChainMemberInline, ChainScheduleInline]
    readonly_fields = ("created_at", "updated_at")
    fields = ("name", "description", "is_enabled", "created_at", "updated_at")
    actions = ["trigger_selected"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        latest = ChainExecution.objects.filter(chain=OuterRef("pk")).order_by("-created_at")
        return (
            super()
            .get_queryset(request)
            .annotate(
                member_total=Count("members", distinct=True),
                last_started=Max("executions__created_at"),
                last_execution_id=Subquery(latest.values("pk")[:1]),
                last_state=Subquery(latest.values("state")[:1]),
            )
        )

    @admin.display(description="members", ordering="member_total")
    def member_count(self, obj: JobChain) -> int:
        return getattr(obj, "member_total", 0)

    @admin.display(description="last run", ordering="last_started")
    def last_run(self, obj: JobChain) -> str:
        """When the latest chain execution was triggered and how it went, linked to its page."""
        started = getattr(obj, "last_started", None)
        if started is None or getattr(obj, "last_execution_id", None) is None:
            return "-"
        url = reverse("admin:jobs_chainexecution_change", args=[obj.last_execution_id])
        when = timezone.localtime(started).strftime("%Y-%m-%d %H:%M")
        return format_html('{} <a href="{}">{}</a>', state_badge(obj.last_state), url, when)

    @admin.display(description="")
    def run_link(self, obj: JobChain) -> str:
        return format_html('<a href="{}">Run now…</a>', reverse("admin:jobs_jobchain_run", args=[obj.pk]))

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("jobs.run_jobchain")

    def get_urls(self) -> list[Any]:
        own = [path("<uuid:chain_id>/run/", self.admin_site.admin_view(self.run_view), name="jobs_jobchain_run")]
        return own + super().get_urls()

    def save_model(self, request: HttpRequest, obj: JobChain, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        AuditLogEntry.objects.record(
            entity_type="chain",
            entity_id=obj.pk,
            operation="changed" if change else "created",
            performed_by=request.user,
            details={"name": obj.name, "is_enabled": obj.is_enabled, "changed": form.changed_data},
        )

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is ChainSchedule:
            save_schedule_formset(request, formset)
            return
        super().save_formset(request, form, formset, change)
        if formset.model is JobChainMember:
            _link_members(form.instance, formset)
            AuditLogEntry.objects.record(
                entity_type="chain",
                entity_id=form.instance.pk,
                operation="members_changed",
                performed_by=request.user,
                details={
                    "members": [
                        {
                            "order": spec.execution_order,
                            "job_id": str(spec.job_id),
                            "after": spec.depends_on_order,
                            "run_on_upstream_failure": spec.run_on_upstream_failure,
                        }
                        for spec in chains.member_specs(form.instance)
                    ]
                },
            )

    def _refuse(self, request: HttpRequest, chain: JobChain) -> None:
        AuditLogEntry.objects.record(
            entity_type="chain",
            entity_id=chain.pk,
            operation="run_refused",
            performed_by=request.user,
            details={"reason": "permission"},
        )
        raise PermissionDenied

    def run_view(self, request: HttpRequest, chain_id: Any) -> HttpResponse:
        """Confirmation page listing the members; POST starts a chain execution."""
        chain = get_object_or_404(JobChain, pk=chain_id)
        if not self.has_run_permission(request):
            self._refuse(request, chain)
        if request.method == "POST":
            try:
                execution = chains.trigger(chain, triggered_by=f"manual:{request.user.get_username()}", by=request.user)
            except CourierError as error:
                messages.error(request, str(error))
                return HttpResponseRedirect(reverse("admin:jobs_jobchain_change", args=[chain.pk]))
            messages.success(request, f"Started chain '{chain.name}' (execution {str(execution.pk)[:8]}).")
            return HttpResponseRedirect(reverse("admin:jobs_chainexecution_change", args=[execution.pk]))
        problem = ""
        try:
            chains.check_runnable(chain)
        except CourierError as error:
            problem = str(error)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Run chain '{chain.name}' now?",
            "chain": chain,
            "members": chain.members.select_related("job", "depends_on_member").order_by("execution_order"),
            "problem": problem,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/jobs/jobchain/run_confirm.html", context)

    @admin.action(description="Run selected chains now", permissions=["run"])
    def trigger_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        started, refused = 0, []
        for chain in queryset:
            try:
                chains.trigger(chain, triggered_by=f"manual:{request.user.get_username()}", by=request.user)
                started += 1
            except CourierError as error:
                refused.append(str(error))
        if started:
            messages.success(request, f"Started {started} chain execution{'s' if started != 1 else ''}.")
        for message in refused:
            messages.error(request, message)


@admin.register(ChainExecution)
class ChainExecutionAdmin(AuditHistoryMixin, ReadOnlyAdmin):
    audit_entity_type = "chain_execution"
    list_display = ("short_id", "chain", "state_badge", "triggered_by", "started_at", "completed_at", "error_message")
    list_filter = ("state", "created_at")
    list_select_related = ("chain",)
    search_fields = ("chain__name", "=id", "triggered_by")
    ordering = ("-created_at",)
    fields = ("chain", "state", "triggered_by", "started_at", "completed_at", "error_message")
    readonly_fields = fields
    # The page draws its own header and member table (refreshed while the chain runs) and the
    # trigger values instead of the generic read-only fieldset.
    change_form_template = "admin/jobs/chainexecution/change_form.html"
    actions = ["cancel_selected"]

    @admin.display(description="chain execution")
    def short_id(self, obj: ChainExecution) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: ChainExecution) -> str:
        return state_badge(obj.state)

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("jobs.run_jobchain")

    def get_urls(self) -> list[Any]:
        own = [
            path(
                "<uuid:execution_id>/cancel/",
                self.admin_site.admin_view(self.cancel_view),
                name="jobs_chainexecution_cancel",
            ),
            path(
                "<uuid:execution_id>/live/",
                self.admin_site.admin_view(self.live_view),
                name="jobs_chainexecution_live",
            ),
        ]
        return own + super().get_urls()

    def live_context(self, request: HttpRequest, execution: ChainExecution) -> dict[str, Any]:
        """What the live part of the page shows: the chain's state and timing, and each member's run."""
        member_runs = list(execution.member_runs.select_related("job", "job_execution").order_by("execution_order"))
        for run in member_runs:
            run.elapsed = elapsed_seconds(run.job_execution) if run.job_execution_id else None
        states = Counter(run.state for run in member_runs)
        tally = f"{states['completed']} of {len(member_runs)} members completed" + "".join(
            f", {states[state]} {state}" for state in ("failed", "skipped", "cancelled") if states[state]
        )
        return {
            "execution": execution,
            "member_runs": member_runs,
            "tally": tally,
            "live": execution.state in LIVE_STATES,
            "can_cancel": self.has_cancel_permission(request) and not execution.is_finished,
            "elapsed_seconds": elapsed_seconds(execution),
        }

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        obj = context.get("original")
        if obj is not None:
            context.update(self.live_context(request, obj))
            context["context_rows"] = value_rows(obj.context or {})
        return super().render_change_form(request, context, *args, **kwargs)

    def live_view(self, request: HttpRequest, execution_id: Any) -> HttpResponse:
        execution = get_object_or_404(ChainExecution.objects.select_related("chain"), pk=execution_id)
        if not self.has_view_permission(request, execution):
            raise PermissionDenied
        return TemplateResponse(
            request, "admin/jobs/chainexecution/live_rows.html", self.live_context(request, execution)
        )

    def cancel_view(self, request: HttpRequest, execution_id: Any) -> HttpResponse:
        execution = get_object_or_404(ChainExecution.objects.select_related("chain"), pk=execution_id)
        change_url = reverse("admin:jobs_chainexecution_change", args=[execution.pk])
        if not self.has_cancel_permission(request):
            AuditLogEntry.objects.record(
                entity_type="chain_execution",
                entity_id=execution.pk,
                operation="cancel_refused",
                performed_by=request.user,
                details={"reason": "permission"},
            )
            raise PermissionDenied
        if request.method == "POST":
            try:
                chains.cancel(execution.pk, by=request.user)
            except CourierError as error:
                messages.error(request, str(error))
            else:
                messages.success(request, f"Cancelled chain execution {str(execution.pk)[:8]} of '{execution.chain}'.")
            return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Cancel chain execution {str(execution.pk)[:8]} of '{execution.chain}'?",
            "execution": execution,
            "change_url": change_url,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/jobs/chainexecution/cancel_confirm.html", context)

    @admin.action(description="Cancel selected chain executions", permissions=["cancel"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        cancelled = 0
        for execution in queryset.filter(state__in=("pending", "running")):
            try:
                chains.cancel(execution.pk, by=request.user)
                cancelled += 1
            except CourierError as error:
                messages.error(request, str(error))
        messages.success(request, f"Cancelled {cancelled} chain execution{'s' if cancelled != 1 else ''}.")


@admin.register(JobChainMember)
class JobChainMemberAdmin(ReadOnlyAdmin):
    """Members across chains, for searching; they are edited on their chain's page."""

    list_display = ("chain", "execution_order", "job", "depends_on_member", "run_on_upstream_failure")
    list_select_related = ("chain", "job", "depends_on_member__job")
    search_fields = ("chain__name", "job__name")


@admin.register(ChainExecutionMember)
class ChainExecutionMemberAdmin(ReadOnlyAdmin):
    list_display = (
        "chain_execution",
        "execution_order",
        "job",
        "state_badge",
        "job_execution_id",
        "note",
        "updated_at",
    )
    list_filter = ("state",)
    list_select_related = ("chain_execution__chain", "job")
    search_fields = ("=chain_execution__id", "job__name")

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: ChainExecutionMember) -> str:
        return state_badge(obj.state)
