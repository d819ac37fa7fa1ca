"""Console pages for file monitors: target and events as form fields, bindings, state actions, file log."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from unfold.admin import TabularInline

from audit.models import AuditLogEntry
from connections.models import Connection
from courier_site.admin_base import (
    AuditHistoryMixin,
    ReadOnlyAdmin,
    RefusalAuditMixin,
    SoftDeleteAdmin,
    TolerantAutocompleteMixin,
)
from courier_site.badges import state_badge
from courier_site.errors import CourierError
from monitors import detection, services
from monitors.models import FileMonitor, MonitorDirectoryState, MonitorFileLog, MonitorJobBinding
from monitors.tasks import poll_monitor
from tags.admin_mixins import TaggableAdminMixin

# Verb -> what the confirmation says; which verbs each state offers (services.change_state decides).
ACTION_NAMES = {
    "pause": "paused",
    "resume": "resumed",
    "acknowledge": "acknowledged",
    "disable": "disabled",
    "enable": "enabled",
}
STATE_ACTIONS = {
    "active": ("pause", "disable"),
    "degraded": ("pause", "disable"),
    "paused": ("resume", "disable"),
    "error": ("acknowledge", "disable"),
    "disabled": ("enable",),
}
EVENT_CHOICES = [
    (str(detection.FILE_CREATED), "File created (once per appearance)"),
    (str(detection.FILE_MODIFIED), "File modified (size or time changed)"),
    (str(detection.FILE_EXISTS), "File exists (every poll)"),
]


class FileMonitorForm(forms.ModelForm):
    """The watch target, events and patterns as fields; the whole definition checked with its codes."""

    target_type = forms.ChoiceField(
        choices=[("local", "Local directory"), ("remote", "Remote directory on a connection")],
        label="watch",
        help_text="A folder on the Courier hosts (inside COURIER_DATA_DIR or an allowed root), or on a partner server.",
    )
    target_path = forms.CharField(
        label="directory", help_text="Absolute local path, or the remote path, e.g. /outbound/invoices."
    )
    target_connection = forms.ModelChoiceField(
        queryset=None,
        required=False,
        label="connection",
        help_text="For a remote directory: the SFTP, FTP or FTPS connection to list it through.",
    )
    events = forms.MultipleChoiceField(
        choices=EVENT_CHOICES,
        widget=forms.CheckboxSelectMultiple,
        label="trigger on",
        help_text="A file triggers only once it is stable (unchanged for the stability window locally, "
        "across two polls remotely).",
    )
    patterns = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        label="file patterns",
        help_text="Globs on the file name, one per line or comma-separated (any may match); empty for all files.",
    )

    class Meta:
        model = FileMonitor
        fields = (
            "name",
            "description",
            "polling_interval_sec",
            "stability_window_sec",
            "batch_mode",
            "max_consecutive_failures",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["target_connection"].queryset = Connection.objects.order_by("name")
        monitor = self.instance
        if monitor.pk:
            try:
                target = services.parse_target(monitor.watch_target)
            except CourierError:
                target = None
            if target is not None:
                self.fields["target_type"].initial = target.kind
                self.fields["target_path"].initial = target.path
                self.fields["target_connection"].initial = target.connection_id
            self.fields["events"].initial = [
                value for value, _ in EVENT_CHOICES if (monitor.trigger_events or 0) & int(value)
            ]
            self.fields["patterns"].initial = "\n".join(monitor.file_patterns or [])
        else:
            self.fields["events"].initial = [str(detection.FILE_CREATED)]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        monitor: FileMonitor = self.instance
        kind = cleaned.get("target_type")
        connection = cleaned.get("target_connection")
        target: dict[str, Any] = {"type": kind, "path": (cleaned.get("target_path") or "").strip()}
        if kind == "remote":
            if connection is None:
                self.add_error("target_connection", "[E5000] a remote directory needs a connection")
                return cleaned
            target["connection_id"] = str(connection.pk)
        monitor.watch_target = target
        monitor.trigger_events = sum(int(value) for value in cleaned.get("events") or [])
        raw = cleaned.get("patterns") or ""
        monitor.file_patterns = [part.strip() for part in raw.replace(",", "\n").splitlines() if part.strip()]
        for name in ("polling_interval_sec", "stability_window_sec", "max_consecutive_failures"):
            if cleaned.get(name) is not None:
                setattr(monitor, name, cleaned[name])
        try:
            services.check_definition(monitor)
        except CourierError as error:
            self.add_error(self._field_for(str(error)), str(error))
        return cleaned

    @staticmethod
    def _field_for(message: str) -> str | None:
        for needle, field in (
            ("polling interval", "polling_interval_sec"),
            ("stability window", "stability_window_sec"),
            ("trigger event", "events"),
            ("file patterns", "patterns"),
            ("connection", "target_connection"),
            ("path", "target_path"),
            ("directory", "target_path"),
            ("max consecutive", "max_consecutive_failures"),
        ):
            if needle in message:
                return field
        return None


class BindingForm(forms.ModelForm):
    class Meta:
        model = MonitorJobBinding
        fields = ("job", "chain")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("DELETE"):
            return cleaned
        if bool(cleaned.get("job")) == bool(cleaned.get("chain")):
            raise forms.ValidationError("[E5000] bind each row to either a job or a chain")
        return cleaned


class BindingInline(TolerantAutocompleteMixin, TabularInline):
    model = MonitorJobBinding
    form = BindingForm
    extra = 0
    autocomplete_fields = ("job", "chain")
    verbose_name = "run when files arrive"
    verbose_name_plural = "runs when files arrive (a job or a chain per row)"


@admin.register(FileMonitor)
class FileMonitorAdmin(TaggableAdminMixin, AuditHistoryMixin, RefusalAuditMixin, SoftDeleteAdmin):
    tag_entity_type = "file_monitor"
    audit_entity_type = "file_monitor"
    form = FileMonitorForm
    list_display = (
        "name",
        "state_badge",
        "target_display",
        "events_display",
        "polling_interval_sec",
        "stability_window_sec",
        "batch_mode",
        "consecutive_failure_count",
        "last_polled_at",
        "error_excerpt",
    )
    list_filter = ("state", "batch_mode")
    search_fields = ("name", "description")
    readonly_fields = (
        "state",
        "consecutive_failure_count",
        "last_error",
        "last_polled_at",
        "next_poll_at",
        "created_at",
        "updated_at",
        "file_log_link",
    )
    fieldsets = (
        (None, {"fields": ("name", "description", "state")}),
        ("What to watch", {"fields": ("target_type", "target_path", "target_connection", "patterns")}),
        (
            "When to trigger",
            {"fields": ("events", "polling_interval_sec", "stability_window_sec", "batch_mode")},
        ),
        (
            "Health",
            {
                "fields": (
                    "max_consecutive_failures",
                    "consecutive_failure_count",
                    "last_error",
                    "last_polled_at",
                    "next_poll_at",
                    "file_log_link",
                )
            },
        ),
    )
    inlines = [BindingInline]
    change_form_after_template = "admin/monitors/filemonitor/state_actions.html"
    actions = [
        "poll_selected",
        "pause_selected",
        "resume_selected",
        "acknowledge_selected",
        "disable_selected",
        "enable_selected",
    ]

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: FileMonitor) -> str:
        return state_badge(obj.state)

    @admin.display(description="target")
    def target_display(self, obj: FileMonitor) -> str:
        try:
            target = services.parse_target(obj.watch_target)
        except CourierError:
            return "invalid"
        return f"{target.path} (remote)" if target.remote else target.path

    @admin.display(description="events")
    def events_display(self, obj: FileMonitor) -> str:
        return ", ".join(detection.event_names(obj.trigger_events or 0))

    @admin.display(description="last error")
    def error_excerpt(self, obj: FileMonitor) -> str:
        return (obj.last_error or "")[:100]

    @admin.display(description="file log")
    def file_log_link(self, obj: FileMonitor) -> str:
        if not obj.pk:
            return "-"
        url = reverse("admin:monitors_monitorfilelog_changelist") + f"?monitor__id__exact={obj.pk}"
        return format_html('<a href="{}">Files this monitor triggered</a>', url)

    def save_model(self, request: HttpRequest, obj: FileMonitor, form: Any, change: bool) -> None:
        if not change:
            obj.state = FileMonitor.State.ACTIVE
        super().save_model(request, obj, form, change)
        AuditLogEntry.objects.record(
            entity_type="file_monitor",
            entity_id=obj.pk,
            operation="changed" if change else "created",
            performed_by=request.user,
            details={
                "watch_target": obj.watch_target,
                "trigger_events": obj.trigger_events,
                "file_patterns": obj.file_patterns,
                "changed": form.changed_data,
            },
        )

    def get_urls(self) -> list[Any]:
        own = [
            path(
                "<uuid:monitor_id>/state/<str:action>/",
                self.admin_site.admin_view(self.state_view),
                name="monitors_filemonitor_state",
            )
        ]
        return own + super().get_urls()

    def state_view(self, request: HttpRequest, monitor_id: Any, action: str) -> HttpResponse:
        """Pause, resume, acknowledge …: a confirmation page on GET, the change on POST."""
        monitor = get_object_or_404(FileMonitor, pk=monitor_id)
        if action not in ACTION_NAMES:
            raise PermissionDenied
        if not self.has_change_permission(request, monitor):
            self._refuse(request, monitor, action)
        if request.method != "POST":
            context = {
                **self.admin_site.each_context(request),
                "title": f"{action.capitalize()} monitor '{monitor.name}'?",
                "monitor": monitor,
                "action": action,
                "label": action.capitalize(),
                "opts": self.model._meta,
            }
            return TemplateResponse(request, "admin/monitors/filemonitor/state_confirm.html", context)
        try:
            services.change_state(monitor.pk, action, by=request.user)
            messages.success(request, f"Monitor '{monitor.name}': {ACTION_NAMES[action]}.")
        except CourierError as error:
            messages.error(request, str(error))
        return HttpResponseRedirect(reverse("admin:monitors_filemonitor_change", args=[monitor.pk]))

    def _refuse(self, request: HttpRequest, monitor: FileMonitor, action: str) -> None:
        AuditLogEntry.objects.record(
            entity_type="file_monitor",
            entity_id=monitor.pk,
            operation=f"{action}_refused",
            performed_by=request.user,
            details={"reason": "permission"},
        )
        raise PermissionDenied

    def render_change_form(self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        obj = context.get("original")
        if obj is not None and self.has_change_permission(request, obj):
            context["state_actions"] = [(action, action.capitalize()) for action in STATE_ACTIONS.get(obj.state, ())]
        return super().render_change_form(request, context, *args, **kwargs)

    def _change_states(self, request: HttpRequest, queryset: QuerySet, action: str) -> None:
        done, refused = 0, []
        for monitor in queryset:
            try:
                services.change_state(monitor.pk, action, by=request.user)
                done += 1
            except CourierError as error:
                refused.append(str(error))
        messages.success(request, f"{ACTION_NAMES[action].capitalize()} {done} monitor(s).")
        for message in refused:
            messages.warning(request, message)

    @admin.action(description="Poll selected monitors now", permissions=["change"])
    def poll_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = 0
        for monitor in queryset.filter(state__in=services.POLLING_STATES):
            poll_monitor.delay(str(monitor.pk))
            count += 1
        messages.success(request, f"Queued a poll of {count} monitor(s).")

    @admin.action(description="Pause selected monitors", permissions=["change"])
    def pause_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._change_states(request, queryset, "pause")

    @admin.action(description="Resume selected monitors", permissions=["change"])
    def resume_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._change_states(request, queryset, "resume")

    @admin.action(description="Acknowledge errors of selected monitors", permissions=["change"])
    def acknowledge_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._change_states(request, queryset, "acknowledge")

    @admin.action(description="Disable selected monitors", permissions=["change"])
    def disable_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._change_states(request, queryset, "disable")

    @admin.action(description="Enable selected monitors", permissions=["change"])
    def enable_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._change_states(request, queryset, "enable")


@admin.register(MonitorJobBinding)
class MonitorJobBindingAdmin(ReadOnlyAdmin):
    list_display = ("monitor", "job", "chain")
    list_select_related = ("monitor", "job", "chain")
    search_fields = ("monitor__name", "job__name", "chain__name")


@admin.register(MonitorDirectoryState)
class MonitorDirectoryStateAdmin(ReadOnlyAdmin):
    list_display = ("monitor", "captured_at", "file_count")
    list_select_related = ("monitor",)

    @admin.display(description="files")
    def file_count(self, obj: MonitorDirectoryState) -> int:
        return len(obj.directory_listing or {})


@admin.register(MonitorFileLog)
class MonitorFileLogAdmin(ReadOnlyAdmin):
    list_display = (
        "file_path",
        "monitor",
        "trigger_event",
        "file_size",
        "last_modified",
        "triggered_at",
        "execution_id",
    )
    list_select_related = ("monitor",)
    search_fields = ("file_path", "=execution_id")
    list_filter = ("trigger_event", "triggered_at", "monitor")
