"""Shared console building blocks: read-only and soft-delete aware admins, and the audit history link."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from unfold.admin import ModelAdmin

from audit.querysets import entity_uuid


class CappedCountPaginator(Paginator):
    """Counts at most COUNT_CAP rows: a history table of millions is paged without a full count(*)."""

    COUNT_CAP = 10_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        # LIMIT inside the count lets PostgreSQL stop early instead of visiting every row.
        return queryset.order_by()[: self.COUNT_CAP + 1].count()


class ReadOnlyAdmin(ModelAdmin):
    """Rows written by the engine or the audit writer: viewable, never added, changed or deleted here."""

    # History tables are partitioned and large: never count them whole, page by capped
    # counts, and keep pages small (rendering a row costs more than finding it).
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_per_page = 50

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


class AuditHistoryMixin:
    """Adds "History in audit log" to an entity's page: the audit list filtered to this entity.

    Set audit_entity_type to the entity_type the audit writer records for the model.
    """

    audit_entity_type = ""
    change_form_template = "admin/audit_history_change_form.html"

    def audit_history_url(self, obj: Any) -> str:
        params = {"entity_type": self.audit_entity_type, "entity_id": str(entity_uuid(obj.pk))}
        created_at = getattr(obj, "created_at", None)
        if created_at is not None:
            # Nothing about an entity predates it: the start lets PostgreSQL skip older partitions.
            params["performed_from"] = timezone.localdate(created_at).isoformat()
        return f"{reverse('admin:audit_auditlogentry_changelist')}?{urlencode(params)}"

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> HttpResponse:
        if obj is not None and self.audit_entity_type and request.user.has_perm("audit.view_auditlogentry"):
            context["audit_history_url"] = self.audit_history_url(obj)
        return super().render_change_form(request, context, add, change, form_url, obj)


def yes_no(value: Any) -> str:
    return "set" if value else "not set"
