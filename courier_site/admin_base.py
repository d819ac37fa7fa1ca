"""Shared console building blocks: read-only admins for history tables and soft-delete aware admins."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.db.models import QuerySet
from django.http import HttpRequest
from unfold.admin import ModelAdmin


class ReadOnlyAdmin(ModelAdmin):
    """Rows written by the engine or the audit writer: viewable, never added, changed or deleted here."""

    # History tables are partitioned and large: never count them whole.
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SoftDeleteAdmin(ModelAdmin):
    """Deleting from the console flags rows deleted (kept for history) instead of removing them."""

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return self.model.objects.get_queryset()

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        obj.delete()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        count, _ = queryset.delete()
        messages.info(request, f"Deleted {count} {self.model._meta.verbose_name_plural} (kept in history).")


def yes_no(value: Any) -> str:
    return "set" if value else "not set"
