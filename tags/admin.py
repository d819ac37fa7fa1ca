"""Console pages for tags and their assignments (assignments are made on each entity's own page)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from unfold.admin import ModelAdmin

from audit.models import AuditLogEntry
from courier_site.admin_base import AuditHistoryMixin, RefusalAuditMixin, SoftDeleteAdmin
from tags.models import EntityTag, Tag
from tags.querysets import AUDIT_ENTITY_TYPES


@admin.register(Tag)
class TagAdmin(AuditHistoryMixin, RefusalAuditMixin, SoftDeleteAdmin):
    audit_entity_type = "tag"
    list_display = ("name", "category", "color", "usage", "created_at")
    list_filter = ("category",)
    search_fields = ("name", "description")
    fields = ("name", "category", "color", "description")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(usage_total=Count("assignments"))

    @admin.display(description="assigned to", ordering="usage_total")
    def usage(self, obj: Tag) -> int:
        return getattr(obj, "usage_total", 0)

    def save_model(self, request: HttpRequest, obj: Tag, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        AuditLogEntry.objects.record(
            entity_type="tag",
            entity_id=obj.pk,
            operation="changed" if change else "created",
            performed_by=request.user,
            details={"name": obj.name, "category": obj.category, "color": obj.color, "changed": form.changed_data},
        )


@admin.register(EntityTag)
class EntityTagAdmin(ModelAdmin):
    """Every assignment, for finding what carries a tag; assign and remove tags on the entity's own page."""

    list_display = ("tag", "entity_type", "entity_id")
    list_filter = ("entity_type", "tag")
    list_select_related = ("tag",)
    search_fields = ("tag__name", "=entity_id")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).filter(tag__is_deleted=False)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # An assignment made here could name an entity that does not exist.
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: EntityTag) -> None:
        super().delete_model(request, obj)
        self._audit_removed(request, [obj])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        assignments = list(queryset.select_related("tag"))
        super().delete_queryset(request, queryset)
        self._audit_removed(request, assignments)

    def _audit_removed(self, request: HttpRequest, assignments: list[EntityTag]) -> None:
        for assignment in assignments:
            AuditLogEntry.objects.record(
                entity_type=AUDIT_ENTITY_TYPES.get(assignment.entity_type, assignment.entity_type),
                entity_id=assignment.entity_id,
                operation="tags_changed",
                performed_by=request.user,
                details={"added": [], "removed": [assignment.tag.name]},
            )
