"""Share links for public keys: a random token shown once, only its SHA-256 stored, downloads counted."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit.models import AuditLogEntry
from audit.querysets import actor_name
from courier_site.errors import CourierError
from keystore.models import PgpKey, PublicKeyShareToken, SshKey
from system.values import setting_bool, setting_int


class ShareLinkRefused(CourierError):
    code = "E4004"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@transaction.atomic
def create_link(key_kind: str, key: Any, *, days: int, by: Any) -> tuple[Any, str]:
    """A new link (and its token, to show once) for the public half of key."""

    if not setting_bool("security.public_key_share_links_enabled", False):
        raise ShareLinkRefused("share links are disabled (system setting security.public_key_share_links_enabled)")
    longest = setting_int("security.max_share_link_days", 30)
    if not 1 <= days <= longest:
        raise ShareLinkRefused(f"a share link lasts 1 to {longest} days, not {days}")
    token = secrets.token_urlsafe(32)
    link = PublicKeyShareToken.objects.create(
        token_hash=token_hash(token),
        key_type=key_kind,
        key_id=key.pk,
        expires_at=timezone.now() + timedelta(days=days),
        created_by=actor_name(by),
    )
    AuditLogEntry.objects.record(
        entity_type="share_token",
        entity_id=link.pk,
        operation="created",
        performed_by=by,
        details={"key_type": key_kind, "key_id": str(key.pk), "days": days},
    )
    return link, token


def revoke_link(link: Any, *, by: Any) -> None:
    PublicKeyShareToken.objects.filter(pk=link.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    AuditLogEntry.objects.record(
        entity_type="share_token",
        entity_id=link.pk,
        operation="revoked",
        performed_by=by,
        details={"key_id": str(link.key_id)},
    )


def resolve(token: str, client_address: str) -> tuple[str, str] | None:
    """(file name, public key text) for a live token, counting and auditing the download; None otherwise."""

    with transaction.atomic():
        link = (
            PublicKeyShareToken.objects.select_for_update()
            .filter(token_hash=token_hash(token), revoked_at__isnull=True, expires_at__gt=timezone.now())
            .first()
        )
        if link is None:
            return None
        model = PgpKey if link.key_type == "pgp" else SshKey
        key = model.objects.filter(pk=link.key_id).first()
        if key is None or getattr(key, "status", "active") in ("revoked", "deleted"):
            return None
        PublicKeyShareToken.objects.filter(pk=link.pk).update(download_count=F("download_count") + 1)
        AuditLogEntry.objects.record(
            entity_type="share_token",
            entity_id=link.pk,
            operation="downloaded",
            performed_by=f"anonymous@{client_address}",
            details={"key_id": str(key.pk), "client_address": client_address},
        )
    suffix = ".asc" if link.key_type == "pgp" else ".pub"
    return f"{key.name}{suffix}", key.public_key_data
