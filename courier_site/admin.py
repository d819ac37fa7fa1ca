"""Console pages of the platform tables: applied SQL scripts and process heartbeats."""

from __future__ import annotations

from django.contrib import admin

from courier_site.admin_base import ReadOnlyAdmin
from courier_site.models import ProcessHeartbeat, SchemaVersion


@admin.register(SchemaVersion)
class SchemaVersionAdmin(ReadOnlyAdmin):
    list_display = ("script_name", "applied_at", "execution_ms", "checksum")
    search_fields = ("script_name",)
    ordering = ("-script_name",)


@admin.register(ProcessHeartbeat)
class ProcessHeartbeatAdmin(ReadOnlyAdmin):
    list_display = (
        "process_name",
        "kind",
        "hostname",
        "pid",
        "started_at",
        "last_seen_at",
        "stopped_at",
        "schema_version",
    )
    list_filter = ("kind",)
    search_fields = ("process_name", "hostname")
