"""Console pages for connections and known hosts (secrets are never shown)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from unfold.admin import ModelAdmin, TabularInline

from connections.models import Connection, KnownHost
from courier_site.admin_base import SoftDeleteAdmin, yes_no


class KnownHostInline(TabularInline):
    model = KnownHost
    extra = 0
    fields = ("fingerprint", "key_type", "first_seen", "last_seen", "approved_by")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(Connection)
class ConnectionAdmin(SoftDeleteAdmin):
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
        "updated_at",
    )
    list_filter = ("protocol", "status", "auth_method", "host_key_policy", "tls_cert_policy", "group")
    search_fields = ("name", "host", "username", "group")
    list_select_related = ("ssh_key",)
    ordering = ("name",)
    inlines = [KnownHostInline]
    readonly_fields = ("password_state", "stored_host_fingerprint", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "group", "protocol", "host", "port", "status", "notes")}),
        ("Authentication", {"fields": ("auth_method", "username", "password_state", "ssh_key")}),
        ("SSH", {"fields": ("host_key_policy", "stored_host_fingerprint", "ssh_algorithms", "keepalive_interval_sec")}),
        ("FTP / FTPS", {"fields": ("passive_mode", "tls_version_floor", "tls_cert_policy", "tls_pinned_thumbprint")}),
        ("Limits", {"fields": ("connect_timeout_sec", "operation_timeout_sec", "transport_retries", "fips_override")}),
        ("History", {"fields": ("created_at", "updated_at")}),
    )

    @admin.display(description="password")
    def password_state(self, obj: Connection) -> str:
        return yes_no(obj.password_encrypted)


@admin.register(KnownHost)
class KnownHostAdmin(ModelAdmin):
    list_display = ("connection", "key_type", "fingerprint", "first_seen", "last_seen", "approved_by")
    list_filter = ("key_type",)
    search_fields = ("fingerprint", "connection__name")
    list_select_related = ("connection",)
    readonly_fields = ("first_seen",)
