"""Console page for system settings (Admins edit; everyone else reads)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from unfold.admin import ModelAdmin

from audit.models import AuditLogEntry
from system.models import SystemSetting


@admin.register(SystemSetting)
class SystemSettingAdmin(ModelAdmin):
    list_display = ("key", "value", "description", "updated_at", "updated_by")
    search_fields = ("key", "description")
    readonly_fields = ("updated_at", "updated_by")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return (*self.readonly_fields, "key") if obj else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: SystemSetting, form: Any, change: bool) -> None:
        obj.updated_by = request.user.get_username()
        super().save_model(request, obj, form, change)
        AuditLogEntry.objects.record(
            entity_type="system_setting",
            entity_id=obj.key,
            operation="changed" if change else "created",
            performed_by=request.user,
            details={"key": obj.key, "value": obj.value},
        )
