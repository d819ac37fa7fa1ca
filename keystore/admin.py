"""Console pages for PGP and SSH keys and public-key share links (private material never shown)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.text import slugify
from unfold.admin import ModelAdmin

from audit.models import AuditLogEntry
from connections.forms import is_admin
from courier_site.admin_base import AuditHistoryMixin, RefusalAuditMixin, SoftDeleteAdmin, yes_no
from courier_site.badges import state_badge
from courier_site.errors import CourierError
from keystore import lifecycle
from keystore.forms import PgpKeyAddForm, PgpKeyChangeForm, SshKeyAddForm
from keystore.models import PgpKey, PublicKeyShareToken, SshKey
from keystore.services import export_private_pgp_key, save_pgp_key, save_ssh_key
from keystore.sharing import create_link, revoke_link
from system.values import setting_bool, setting_int
from tags.admin_mixins import TaggableAdminMixin


class KeyCreationMixin:
    """Keys are generated or imported on the add page (its own form); later edits are audited.

    Subclasses define store(request, obj, form, operation), which saves through keystore.services.
    """

    add_form: Any = None
    change_form: Any = None
    add_fields: tuple[str, ...] = ()
    audit_entity_type = ""

    @admin.display(description="private key")
    def private_state(self, obj: Any) -> str:
        return yes_no(obj.private_key_data)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Any) -> str:
        return state_badge(obj.status)

    @admin.display(description="")
    def public_link(self, obj: Any) -> str:
        url = reverse(f"admin:keystore_{obj._meta.model_name}_public", args=[obj.pk])
        return format_html('<a href="{}">Public key</a>', url)

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = self.add_form
            kwargs["fields"] = self.add_fields
        elif self.change_form is not None:
            kwargs["form"] = self.change_form
        return super().get_form(request, obj, change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return [(None, {"fields": self.add_fields})]
        return super().get_fieldsets(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            AuditLogEntry.objects.record(
                entity_type=self.audit_entity_type,
                entity_id=obj.pk,
                operation="changed",
                performed_by=request.user,
                details={"fields": form.changed_data},
            )
            return
        operation = "imported" if form.cleaned_data.get("mode") == "import" else "generated"
        key = self.store(request, obj, form, operation)
        # The admin goes on with this object (messages, redirect): make it the stored key.
        obj.__dict__.update({name: value for name, value in key.__dict__.items() if not name.startswith("_")})


@admin.register(PgpKey)
class PgpKeyAdmin(TaggableAdminMixin, KeyCreationMixin, AuditHistoryMixin, RefusalAuditMixin, SoftDeleteAdmin):
    tag_entity_type = "pgp_key"
    add_form = PgpKeyAddForm
    change_form = PgpKeyChangeForm
    audit_entity_type = "pgp_key"

    def store(self, request: HttpRequest, obj: Any, form: Any, operation: str) -> Any:
        return save_pgp_key(obj.name, form.material, by=request.user, operation=operation, purpose=obj.purpose or "")

    list_display = (
        "name",
        "short_key_id",
        "algorithm",
        "key_type",
        "status_badge",
        "expires_at",
        "private_state",
        "created_by",
        "public_link",
    )
    list_filter = ("status", "algorithm", "key_type", "expires_at")
    search_fields = ("name", "fingerprint", "short_key_id", "purpose")
    list_select_related = ("successor_key",)
    # The status changes only through the lifecycle actions, which check the transition and audit it.
    readonly_fields = (
        "status",
        "fingerprint",
        "short_key_id",
        "algorithm",
        "key_type",
        "public_key_data",
        "private_state",
        "expires_at",
        "created_by",
        "created_at",
        "updated_at",
    )
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
    add_fields = (
        "name",
        "purpose",
        "mode",
        "algorithm_choice",
        "email",
        "expire_days",
        "key_data",
        "key_file",
        "passphrase",
        "passphrase_again",
    )

    actions = ["retire_keys", "revoke_keys"]

    @admin.action(description="Retire selected keys (decrypt and verify only)", permissions=["change"])
    def retire_keys(self, request: HttpRequest, queryset: Any) -> None:
        done = 0
        for key in queryset:
            try:
                lifecycle.retire(key, by=request.user)
                done += 1
            except CourierError as error:
                messages.error(request, str(error))
        messages.success(request, f"Retired {done} key(s).")

    @admin.action(description="Revoke selected keys (no further use)", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: Any) -> None:
        done = 0
        for key in queryset:
            try:
                lifecycle.revoke(key, by=request.user)
                done += 1
            except CourierError as error:
                messages.error(request, str(error))
        messages.success(request, f"Revoked {done} key(s).")

    def delete_model(self, request: HttpRequest, obj: PgpKey) -> None:
        lifecycle.delete(obj, by=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for key in queryset:
            lifecycle.delete(key, by=request.user)
        messages.info(request, "Deleted keys keep their public half for history; private material was wiped.")

    def get_urls(self) -> list[Any]:
        return [
            path("<uuid:key_id>/public/", self.admin_site.admin_view(self.public_view), name="keystore_pgpkey_public"),
            path(
                "<uuid:key_id>/private/", self.admin_site.admin_view(self.private_view), name="keystore_pgpkey_private"
            ),
            *super().get_urls(),
        ]

    def public_view(self, request: HttpRequest, key_id: Any) -> HttpResponse:
        key = get_object_or_404(PgpKey, pk=key_id)
        if not self.has_view_permission(request, key):
            raise PermissionDenied
        AuditLogEntry.objects.record(
            entity_type="pgp_key",
            entity_id=key.pk,
            operation="public_key_exported",
            performed_by=request.user,
            details={"fingerprint": key.fingerprint},
        )
        response = HttpResponse(key.public_key_data, content_type="application/pgp-keys")
        response["Content-Disposition"] = f'attachment; filename="{slugify(key.name) or "key"}-{key.short_key_id}.asc"'
        return response

    def private_view(self, request: HttpRequest, key_id: Any) -> HttpResponse:
        """Admins only, after an explicit confirmation (POST); every export and refusal is audited."""
        key = get_object_or_404(PgpKey, pk=key_id)
        if not is_admin(request.user):
            AuditLogEntry.objects.record(
                entity_type="pgp_key",
                entity_id=key.pk,
                operation="private_export_refused",
                performed_by=request.user,
                details={"reason": "not an Admin"},
            )
            raise PermissionDenied
        if request.method != "POST" or request.POST.get("confirm") != key.short_key_id:
            context = {
                **self.admin_site.each_context(request),
                "title": f"Export the private key of {key.name}?",
                "key": key,
                "opts": self.model._meta,
            }
            return TemplateResponse(request, "admin/keystore/pgpkey/private_confirm.html", context)
        armored = export_private_pgp_key(key, by=request.user)
        response = HttpResponse(armored, content_type="application/pgp-keys")
        response["Content-Disposition"] = (
            f'attachment; filename="{slugify(key.name) or "key"}-{key.short_key_id}-PRIVATE.asc"'
        )
        return response


@admin.register(SshKey)
class SshKeyAdmin(TaggableAdminMixin, KeyCreationMixin, AuditHistoryMixin, RefusalAuditMixin, SoftDeleteAdmin):
    tag_entity_type = "ssh_key"
    add_form = SshKeyAddForm
    add_fields = ("name", "mode", "key_type", "private_key", "passphrase", "notes")
    audit_entity_type = "ssh_key"

    def store(self, request: HttpRequest, obj: Any, form: Any, operation: str) -> Any:
        return save_ssh_key(obj.name, form.material, by=request.user, operation=operation, notes=obj.notes or "")

    list_display = ("name", "key_type", "fingerprint", "status_badge", "created_by", "created_at", "public_link")
    list_filter = ("status", "key_type")
    search_fields = ("name", "fingerprint")
    readonly_fields = (
        "key_type",
        "fingerprint",
        "public_key_data",
        "private_state",
        "created_by",
        "created_at",
        "updated_at",
    )
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

    def get_urls(self) -> list[Any]:
        return [
            path("<uuid:key_id>/public/", self.admin_site.admin_view(self.public_view), name="keystore_sshkey_public"),
            *super().get_urls(),
        ]

    def public_view(self, request: HttpRequest, key_id: Any) -> HttpResponse:
        """The public half in OpenSSH format, as a download (the private half is never exported)."""
        key = get_object_or_404(SshKey, pk=key_id)
        if not self.has_view_permission(request, key):
            raise PermissionDenied
        AuditLogEntry.objects.record(
            entity_type="ssh_key",
            entity_id=key.pk,
            operation="public_key_exported",
            performed_by=request.user,
            details={"fingerprint": key.fingerprint},
        )
        response = HttpResponse(key.public_key_data.strip() + "\n", content_type="text/plain")
        response["Content-Disposition"] = f'attachment; filename="{slugify(key.name) or "key"}.pub"'
        return response


class ShareLinkForm(forms.ModelForm):
    key_choice = forms.ChoiceField(label="Key", help_text="The public key to share.")
    days = forms.IntegerField(min_value=1, initial=7, help_text="The link stops working after this many days.")

    class Meta:
        model = PublicKeyShareToken
        fields = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [
            (f"pgp:{key.pk}", f"PGP {key.name} ({key.short_key_id})")
            for key in PgpKey.objects.exclude(status__in=("revoked", "deleted"))
        ]
        choices += [(f"ssh:{key.pk}", f"SSH {key.name}") for key in SshKey.objects.all()]
        self.fields["key_choice"].choices = choices

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not setting_bool("security.public_key_share_links_enabled", False):
            raise forms.ValidationError(
                "[E4004] share links are disabled (system setting security.public_key_share_links_enabled)"
            )
        longest = setting_int("security.max_share_link_days", 30)
        if data.get("days") and data["days"] > longest:
            self.add_error("days", f"[E4004] a share link lasts at most {longest} days")
        return data


@admin.register(PublicKeyShareToken)
class PublicKeyShareTokenAdmin(RefusalAuditMixin, ModelAdmin):
    audit_entity_type = "share_token"
    form = ShareLinkForm
    list_display = ("key_type", "key_id", "expires_at", "revoked_at", "download_count", "created_by", "created_at")
    list_filter = ("key_type", "expires_at", "revoked_at")
    search_fields = ("=key_id", "created_by")
    actions = ["revoke_links"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return (
            ("key_choice", "days")
            if obj is None
            else ("key_type", "key_id", "expires_at", "revoked_at", "download_count", "created_by", "created_at")
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else self.get_fields(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False if obj is not None else super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: PublicKeyShareToken, form: Any, change: bool) -> None:
        kind, _, key_id = form.cleaned_data["key_choice"].partition(":")
        key = (PgpKey if kind == "pgp" else SshKey).objects.get(pk=key_id)
        try:
            link, token = create_link(kind, key, days=form.cleaned_data["days"], by=request.user)
        except CourierError as error:
            raise PermissionDenied(str(error)) from error
        obj.__dict__.update({name: value for name, value in link.__dict__.items() if not name.startswith("_")})
        url = request.build_absolute_uri(reverse("shared-public-key", args=[token]))
        messages.warning(request, f"Share link (shown once, copy it now): {url}")

    # Admins only: without permissions an action is offered to everyone who can see the list.
    @admin.action(description="Revoke selected share links", permissions=["change"])
    def revoke_links(self, request: HttpRequest, queryset: Any) -> None:
        for link in queryset.filter(revoked_at__isnull=True):
            revoke_link(link, by=request.user)
        messages.success(request, "Revoked the selected share links.")
