"""Console pages for PGP and SSH keys and public-key share links (private material never shown)."""

from __future__ import annotations

from django.contrib import admin
from unfold.admin import ModelAdmin

from courier_site.admin_base import SoftDeleteAdmin, yes_no
from keystore.models import PgpKey, PublicKeyShareToken, SshKey


@admin.register(PgpKey)
class PgpKeyAdmin(SoftDeleteAdmin):
    list_display = (
        "name",
        "short_key_id",
        "algorithm",
        "key_type",
        "status",
        "expires_at",
        "private_state",
        "created_by",
    )
    list_filter = ("status", "algorithm", "key_type", "expires_at")
    search_fields = ("name", "fingerprint", "short_key_id", "purpose")
    list_select_related = ("successor_key",)
    readonly_fields = ("fingerprint", "short_key_id", "private_state", "created_by", "created_at", "updated_at")
    fields = (
        "name",
        "purpose",
        "status",
        "algorithm",
        "key_type",
        "fingerprint",
        "short_key_id",
        "expires_at",
        "successor_key",
        "public_key_data",
        "private_state",
        "created_by",
        "created_at",
        "updated_at",
    )

    @admin.display(description="private key")
    def private_state(self, obj: PgpKey) -> str:
        return yes_no(obj.private_key_data)


@admin.register(SshKey)
class SshKeyAdmin(SoftDeleteAdmin):
    list_display = ("name", "key_type", "fingerprint", "status", "created_by", "created_at")
    list_filter = ("status", "key_type")
    search_fields = ("name", "fingerprint")
    readonly_fields = ("fingerprint", "private_state", "created_by", "created_at", "updated_at")
    fields = (
        "name",
        "key_type",
        "status",
        "fingerprint",
        "public_key_data",
        "private_state",
        "notes",
        "created_by",
        "created_at",
        "updated_at",
    )

    @admin.display(description="private key")
    def private_state(self, obj: SshKey) -> str:
        return yes_no(obj.private_key_data)


@admin.register(PublicKeyShareToken)
class PublicKeyShareTokenAdmin(ModelAdmin):
    list_display = ("key_type", "key_id", "expires_at", "revoked_at", "download_count", "created_by", "created_at")
    list_filter = ("key_type", "expires_at", "revoked_at")
    search_fields = ("key_id", "created_by")
    readonly_fields = ("download_count", "created_at")
    exclude = ("token_hash",)
