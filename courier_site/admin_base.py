"""Shared console building blocks: read-only and soft-delete aware admins, audited refusals, the audit history link,
autocomplete fields that survive garbage input."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.text import capfirst
from unfold.admin import ModelAdmin

from audit.models import AuditLogEntry
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
    """Deleting from the console flags rows deleted (kept for history) instead of removing them, and
    records who deleted what in the audit log (under audit_entity_type, when the admin names one)."""

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return self.model.objects.get_queryset()

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        obj.delete()
        self.audit_deleted(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        rows = list(queryset)
        count, _ = queryset.delete()
        for obj in rows:
            self.audit_deleted(request, obj)
        messages.info(request, f"Deleted {count} {self.model._meta.verbose_name_plural} (kept in history).")

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[list[str], dict[str, int], set, list]:
        """What the confirmation page lists, and what permissions it needs: a soft delete flags these rows
        only and removes nothing related, so Django's cascade (steps, versions, history) does not apply."""
        rows = list(objs)
        opts = self.model._meta
        listed = [f"{capfirst(opts.verbose_name)}: {row}" for row in rows]
        return listed, {opts.verbose_name_plural: len(rows)}, set(), []

    def audit_deleted(self, request: HttpRequest, obj: Any) -> None:
        entity_type = getattr(self, "audit_entity_type", "")
        if entity_type:
            AuditLogEntry.objects.record(
                entity_type=entity_type,
                entity_id=obj.pk,
                operation="deleted",
                performed_by=request.user,
                details={"name": getattr(obj, "name", None) or str(obj)},
            )


class RefusalAuditMixin:
    """A save or delete the user's role does not allow is refused (403) and audited (SPEC 8).

    Django refuses such a POST before reading any form, so nothing else would record it:
    this writes <add|change|delete>_refused on the entity (audit_entity_type) before the
    403 goes out. Put it before the ModelAdmin class in the bases.
    """

    audit_entity_type = ""

    def changeform_view(
        self, request: HttpRequest, object_id: Any = None, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except PermissionDenied:
            # Outside the view's transaction, which the refusal rolled back.
            self.record_refusal(request, "change" if object_id else "add", object_id)
            raise

    def delete_view(self, request: HttpRequest, object_id: Any, extra_context: Any = None) -> HttpResponse:
        try:
            return super().delete_view(request, object_id, extra_context)
        except PermissionDenied:
            self.record_refusal(request, "delete", object_id)
            raise

    def refusal_details(self, request: HttpRequest) -> dict[str, Any]:
        """What the refused request asked for; never posted values that may be secrets."""
        return {"reason": "permission"}

    def record_refusal(self, request: HttpRequest, verb: str, object_id: Any) -> None:
        if request.method != "POST":
            return  # opening a page the role may not use changes nothing; trying to save does
        AuditLogEntry.objects.record(
            entity_type=self.audit_entity_type,
            entity_id=object_id or f"new-{self.model._meta.model_name}",
            operation=f"{verb}_refused",
            performed_by=request.user,
            details=self.refusal_details(request),
        )


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


class TolerantAutocompleteSelect(AutocompleteSelect):
    """An autocomplete select that redisplays a posted value which is no key at all (not a UUID) as unselected.

    Django's own widget looks the posted value up while drawing the form again and fails
    with a server error on a value that is no valid key, hiding the form's own error.
    """

    def optgroups(self, name: str, value: list[Any], attr: dict[str, Any] | None = None) -> Any:
        target = self.field.target_field
        usable = []
        for item in value:
            try:
                target.to_python(item)
            except ValidationError:
                continue
            usable.append(item)
        return super().optgroups(name, usable, attr)


class TolerantAutocompleteMixin:
    """Uses TolerantAutocompleteSelect for the autocomplete_fields of a ModelAdmin or inline."""

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if "widget" not in kwargs and db_field.name in self.get_autocomplete_fields(request):
            kwargs["widget"] = TolerantAutocompleteSelect(db_field, self.admin_site, using=kwargs.get("using"))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


def yes_no(value: Any) -> str:
    return "set" if value else "not set"
