"""Console pages for connections and known hosts (secrets are never shown)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from unfold.admin import ModelAdmin, TabularInline

from audit.models import AuditLogEntry
from connections import hostkeys
from connections.diagnostics import test_connection
from connections.forms import ConnectionForm, is_admin
from connections.models import Connection, KnownHost
from courier_site.admin_base import AuditHistoryMixin, RefusalAuditMixin, SoftDeleteAdmin, yes_no
from tags.admin_mixins import TaggableAdminMixin


class KnownHostInline(TabularInline):
    model = KnownHost
    extra = 0
    fields = ("fingerprint", "key_type", "first_seen", "last_seen", "approved_by")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(Connection)
class ConnectionAdmin(TaggableAdminMixin, AuditHistoryMixin, RefusalAuditMixin, SoftDeleteAdmin):
    tag_entity_type = "connection"
    audit_entity_type = "connection"
    form = ConnectionForm
    list_display = (
        "name",
        "group",
        "protocol",
        "host",
        "port",
        "username",
        "auth_method",
        "status",
        "password_state",
        "host_key_state",
        "test_link",
    )
    list_filter = ("protocol", "status", "auth_method", "host_key_policy", "tls_cert_policy", "group")
    search_fields = ("name", "host", "username", "group")
    list_select_related = ("ssh_key",)
    ordering = ("name",)
    inlines = [KnownHostInline]
    readonly_fields = ("password_state", "stored_host_fingerprint", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "group", "protocol", "host", "port", "status", "notes")}),
        (
            "Authentication",
            {"fields": ("auth_method", "username", "password_state", "new_password", "clear_password", "ssh_key")},
        ),
        ("SSH", {"fields": ("host_key_policy", "stored_host_fingerprint", "ssh_algorithms", "keepalive_interval_sec")}),
        ("FTP / FTPS", {"fields": ("passive_mode", "tls_version_floor", "tls_cert_policy", "tls_pinned_thumbprint")}),
        (
            "Limits",
            {
                "fields": (
                    "connect_timeout_sec",
                    "operation_timeout_sec",
                    "transport_retries",
                    "transfer_segments",
                    "fips_override",
                )
            },
        ),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    @admin.display(description="password")
    def password_state(self, obj: Connection) -> str:
        return yes_no(obj.password_encrypted)

    @admin.display(description="host key")
    def host_key_state(self, obj: Connection) -> str:
        if obj.protocol != "sftp":
            return "-"
        if obj.pending_host_keys.exists():
            return format_html('<strong style="color:#b91c1c">{}</strong>', "changed: approval needed [E3002]")
        return "trusted" if obj.stored_host_fingerprint else "not seen yet"

    @admin.display(description="")
    def test_link(self, obj: Connection) -> str:
        return format_html('<a href="{}">Test</a>', reverse("admin:connections_connection_test", args=[obj.pk]))

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form_class = super().get_form(request, obj, change, **kwargs)

        class WithUser(form_class):
            def __init__(self, *args: Any, **inner: Any) -> None:
                super().__init__(*args, user=request.user, **inner)

        return WithUser

    def save_model(self, request: HttpRequest, obj: Connection, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        changed = [name for name in form.changed_data if name not in ("new_password", "clear_password")]
        if form.cleaned_data.get("new_password"):
            changed.append("password")
        AuditLogEntry.objects.record(
            entity_type="connection",
            entity_id=obj.pk,
            operation="changed" if change else "created",
            performed_by=request.user,
            details={"name": obj.name, "fields": changed},
        )

    def _changeform_view(self, request: HttpRequest, object_id: Any, form_url: str, extra_context: Any) -> Any:
        response = super()._changeform_view(request, object_id, form_url, extra_context)
        form = getattr(response, "context_data", {}).get("adminform")
        refusals = getattr(getattr(form, "form", None), "refusals", [])
        for refusal in refusals:
            AuditLogEntry.objects.record(
                entity_type="connection",
                entity_id=object_id or "new-connection",
                operation="setting_refused",
                performed_by=request.user,
                details=refusal,
            )
        return response

    def refusal_details(self, request: HttpRequest) -> dict[str, Any]:
        # Name the Admin-only settings the refused save asked for (SPEC 5), never the password.
        asked = {
            name: request.POST[name]
            for name, insecure in (("host_key_policy", "always_trust"), ("tls_cert_policy", "insecure"))
            if request.POST.get(name) == insecure
        }
        if request.POST.get("fips_override"):
            asked["fips_override"] = True
        return {**super().refusal_details(request), **({"admin_only_settings": asked} if asked else {})}

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<uuid:connection_id>/test/",
                self.admin_site.admin_view(self.test_view),
                name="connections_connection_test",
            ),
            *super().get_urls(),
        ]

    def test_view(self, request: HttpRequest, connection_id: Any) -> HttpResponse:
        """Run "test connection" now (operators and admins) and show what it found."""
        connection = get_object_or_404(Connection.objects.select_related("ssh_key"), pk=connection_id)
        if not request.user.has_perm("connections.test_connection"):
            AuditLogEntry.objects.record(
                entity_type="connection",
                entity_id=connection.pk,
                operation="test_refused",
                performed_by=request.user,
                details={"reason": "permission"},
            )
            raise PermissionDenied
        result = test_connection(connection, by=request.user)
        rows = [(key, value) for key, value in result.items() if key not in ("ok", "error", "hint")]
        context = {
            **self.admin_site.each_context(request),
            "title": f"Test of {connection.name}",
            "result": result,
            "rows": rows,
            "connection": connection,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/connections/connection/test_result.html", context)


@admin.register(KnownHost)
class KnownHostAdmin(RefusalAuditMixin, ModelAdmin):
    audit_entity_type = "known_host"
    list_display = ("connection", "key_type", "fingerprint", "state", "first_seen", "last_seen", "approved_by")
    list_filter = ("key_type",)
    search_fields = ("fingerprint", "connection__name")
    list_select_related = ("connection",)
    readonly_fields = ("connection", "fingerprint", "key_type", "first_seen", "last_seen", "approved_by")
    actions = ["approve_keys"]

    @admin.display(description="state")
    def state(self, obj: KnownHost) -> str:
        return "waiting for approval" if obj.approved_by == hostkeys.PENDING else "trusted"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Approve selected host keys (replaces the trusted key)")
    def approve_keys(self, request: HttpRequest, queryset: QuerySet) -> None:
        if not is_admin(request.user):
            for known_host in queryset:
                AuditLogEntry.objects.record(
                    entity_type="connection",
                    entity_id=known_host.connection_id,
                    operation="host_key_approval_refused",
                    performed_by=request.user,
                    details={"fingerprint": known_host.fingerprint},
                )
            messages.error(request, "[E3004] Only an Admin may approve host keys.")
            return
        approved = 0
        for known_host in queryset.filter(approved_by=hostkeys.PENDING):
            hostkeys.approve(known_host, by=request.user)
            approved += 1
        messages.success(request, f"Approved {approved} host key(s).")
