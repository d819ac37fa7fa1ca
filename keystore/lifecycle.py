"""PGP key lifecycle: active → expiring → retired, revoked (terminal), deleted (private material wiped)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.models import AuditLogEntry
from keystore.errors import KeyNotUsable
from keystore.models import PgpKey
from system.values import setting_int

# What each state still allows (SPEC 6).
ALLOWED_USES = {
    "active": {"encrypt", "sign", "decrypt", "verify"},
    "expiring": {"encrypt", "sign", "decrypt", "verify"},
    "retired": {"decrypt", "verify"},
    "revoked": set(),
    "deleted": set(),
}


def effective_status(key: Any) -> str:
    """The key's status, with a key past its expiry counted as retired before the daily scan gets to it."""
    if key.status in ("active", "expiring") and key.expires_at is not None and key.expires_at <= timezone.now():
        return "retired"
    return key.status


def check_use(key: Any, use: str) -> None:
    """Refuse [E4003] a use the key's state (or its passed expiry) does not allow."""
    status = effective_status(key)
    if use in ALLOWED_USES.get(status, set()):
        return
    if status != key.status:
        raise KeyNotUsable(
            f"key '{key.name}' ({key.short_key_id}) expired at {key.expires_at:%Y-%m-%d %H:%M %Z} and cannot {use}"
        )
    raise KeyNotUsable(f"key '{key.name}' ({key.short_key_id}) is {key.status} and cannot {use}")


def _change(key: Any, status: str, *, by: Any, operation: str, **details: Any) -> None:
    previous = key.status
    PgpKey.all_objects.filter(pk=key.pk).update(status=status, updated_at=timezone.now())
    key.status = status
    AuditLogEntry.objects.record(
        entity_type="pgp_key",
        entity_id=key.pk,
        operation=operation,
        performed_by=by,
        details={"from": previous, "to": status, **details},
        event_type="PgpKeyStatusChanged",
    )


@transaction.atomic
def retire(key: Any, *, by: Any) -> None:
    if key.status in ("revoked", "deleted"):
        raise KeyNotUsable(f"key '{key.name}' is {key.status}; it cannot be retired")
    _change(key, "retired", by=by, operation="retired")


@transaction.atomic
def revoke(key: Any, *, by: Any) -> None:
    if key.status == "deleted":
        raise KeyNotUsable(f"key '{key.name}' is deleted")
    _change(key, "revoked", by=by, operation="revoked")


@transaction.atomic
def delete(key: Any, *, by: Any) -> None:
    """Wipe the private material and mark the key deleted (the public half stays for history)."""

    PgpKey.all_objects.filter(pk=key.pk).update(
        private_key_data=None, passphrase_hash=None, is_deleted=True, deleted_at=timezone.now()
    )
    _change(key, "deleted", by=by, operation="deleted_private_material_wiped")


def scan_expiry(now: Any = None) -> dict[str, list[str]]:
    """Daily: keys inside the warning window become expiring; keys past expiry are retired."""

    now = now or timezone.now()
    warning = timedelta(days=setting_int("key.expiration_warning_days", 30))
    moved: dict[str, list[str]] = {"expiring": [], "retired": []}
    with transaction.atomic():
        # Serves ix_pgp_keys_expires: only active/expiring keys with an expiry are looked at.
        candidates = PgpKey.objects.select_for_update(skip_locked=True).filter(
            status__in=("active", "expiring"), expires_at__isnull=False, expires_at__lte=now + warning
        )
        for key in candidates:
            if key.expires_at <= now:
                _change(key, "retired", by="system", operation="expired", expires_at=key.expires_at.isoformat())
                moved["retired"].append(key.name)
            elif key.status == "active":
                _change(key, "expiring", by="system", operation="expiring", expires_at=key.expires_at.isoformat())
                moved["expiring"].append(key.name)
    return moved


def successor_problem(key: Any, successor: Any) -> str | None:
    """Why successor cannot replace key (itself, or a chain that leads back to key), or None."""
    if successor is None:
        return None
    if successor.pk == key.pk:
        return "a key cannot be its own successor"
    seen = {key.pk}
    current = successor
    while current is not None:
        if current.pk in seen:
            return f"successor chain loops back to '{key.name}'"
        seen.add(current.pk)
        current = current.successor_key
    return None


def encryption_key(key: Any) -> tuple[Any, str | None]:
    """The key to encrypt to: a retired key hands over to its active successor (with a note saying so)."""
    successor = key.successor_key
    if (
        effective_status(key) == "retired"
        and successor is not None
        and effective_status(successor) in ("active", "expiring")
    ):
        return successor, (
            f"key '{key.name}' ({key.short_key_id}) is retired; encrypted to its successor "
            f"'{successor.name}' ({successor.short_key_id})"
        )
    check_use(key, "encrypt")
    return key, None
