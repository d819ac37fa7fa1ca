"""Console pages for file monitors, their bindings, snapshots and file log."""

from __future__ import annotations

from django.contrib import admin
from unfold.admin import TabularInline

from courier_site.admin_base import ReadOnlyAdmin, SoftDeleteAdmin
from monitors.models import FileMonitor, MonitorDirectoryState, MonitorFileLog, MonitorJobBinding


class BindingInline(TabularInline):
    model = MonitorJobBinding
    extra = 0
    autocomplete_fields = ("job", "chain")


@admin.register(FileMonitor)
class FileMonitorAdmin(SoftDeleteAdmin):
    list_display = (
        "name",
        "state",
        "trigger_events",
        "polling_interval_sec",
        "stability_window_sec",
        "batch_mode",
        "consecutive_failure_count",
        "updated_at",
    )
    list_filter = ("state", "batch_mode")
    search_fields = ("name", "description")
    readonly_fields = ("consecutive_failure_count", "created_at", "updated_at")
    inlines = [BindingInline]


@admin.register(MonitorJobBinding)
class MonitorJobBindingAdmin(ReadOnlyAdmin):
    list_display = ("monitor", "job", "chain")
    list_select_related = ("monitor", "job", "chain")
    search_fields = ("monitor__name", "job__name", "chain__name")


@admin.register(MonitorDirectoryState)
class MonitorDirectoryStateAdmin(ReadOnlyAdmin):
    list_display = ("monitor", "captured_at")
    list_select_related = ("monitor",)


@admin.register(MonitorFileLog)
class MonitorFileLogAdmin(ReadOnlyAdmin):
    list_display = ("file_path", "monitor", "file_size", "last_modified", "triggered_at", "execution_id")
    list_select_related = ("monitor",)
    search_fields = ("file_path",)
    list_filter = ("triggered_at",)
