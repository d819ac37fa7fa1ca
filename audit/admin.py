"""Console pages of the audit log and domain events: read-only, newest first, never fully counted."""

from __future__ import annotations

from django.contrib import admin

from audit.models import AuditLogEntry, DomainEvent
from courier_site.admin_base import ReadOnlyAdmin


@admin.register(AuditLogEntry)
class AuditLogEntryAdmin(ReadOnlyAdmin):
    list_display = ("performed_at", "performed_by", "operation", "entity_type", "entity_id")
    list_filter = ("entity_type", "performed_at")
    search_fields = ("=entity_id", "operation", "performed_by")
    ordering = ("-performed_at",)


@admin.register(DomainEvent)
class DomainEventAdmin(ReadOnlyAdmin):
    list_display = ("occurred_at", "event_type", "entity_type", "entity_id", "processed_at")
    list_filter = ("event_type", "entity_type", "occurred_at")
    search_fields = ("=entity_id", "event_type")
    ordering = ("-occurred_at",)
