"""Console pages for tags and their assignments."""

from __future__ import annotations

from django.contrib import admin
from unfold.admin import ModelAdmin

from courier_site.admin_base import SoftDeleteAdmin
from tags.models import EntityTag, Tag


@admin.register(Tag)
class TagAdmin(SoftDeleteAdmin):
    list_display = ("name", "category", "color", "created_at")
    list_filter = ("category",)
    search_fields = ("name", "description")


@admin.register(EntityTag)
class EntityTagAdmin(ModelAdmin):
    list_display = ("tag", "entity_type", "entity_id")
    list_filter = ("entity_type", "tag")
    list_select_related = ("tag",)
    search_fields = ("tag__name", "=entity_id")
