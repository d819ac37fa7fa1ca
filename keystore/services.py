"""Key store operations: SSH keys generated or imported, sealed, audited."""

from __future__ import annotations

import json
from typing import Any

from django.db import transaction

from audit.models import AuditLogEntry
from audit.querysets import actor_name
from courier_site.envelope import keyring
from keystore import pgp, ssh
from keystore.errors import DuplicateKey, KeyNotUsable
from keystore.models import PgpKey, SshKey


@transaction.atomic
def save_ssh_key(name: str, material: ssh.SshKeyMaterial, *, by: Any, operation: str, notes: str = "") -> Any:
    """Store an SSH key with its private half sealed; a fingerprint already stored is refused [E4002]."""

    existing = SshKey.objects.filter(fingerprint=material.fingerprint).first()
    if existing is not None:
        raise DuplicateKey(f"this key is already stored as '{existing.name}' ({material.fingerprint})")
    key = SshKey(
        name=name,
        key_type=material.key_type,
        public_key_data=material.public_openssh,
        fingerprint=material.fingerprint,
        created_by=actor_name(by),
        notes=notes or None,
    )
    key.set_private_key(material.private_openssh)
    key.save()
    AuditLogEntry.objects.record(
        entity_type="ssh_key",
        entity_id=key.pk,
        operation=operation,
        performed_by=by,
        details={"name": name, "key_type": material.key_type, "fingerprint": material.fingerprint},
        event_type="SshKeyCreated",
    )
    return key


def generate_ssh_key(name: str, key_type: str, *, by: Any) -> Any:
    return save_ssh_key(name, ssh.generate(key_type), by=by, operation="generated")


def import_ssh_key(name: str, private_text: str, passphrase: str | None, *, by: Any) -> Any:
    return save_ssh_key(name, ssh.load(private_text, passphrase), by=by, operation="imported")


@transaction.atomic
def save_pgp_key(name: str, material: pgp.PgpKeyMaterial, *, by: Any, operation: str, purpose: str = "") -> Any:
    """Store a PGP key (private half and passphrase sealed together); a stored fingerprint is refused [E4002]."""

    existing = PgpKey.objects.filter(fingerprint=material.fingerprint).first()
    if existing is not None:
        raise DuplicateKey(f"this key is already stored as '{existing.name}' ({material.fingerprint})")
    key = PgpKey(
        name=name,
        fingerprint=material.fingerprint,
        short_key_id=material.short_key_id,
        algorithm=material.algorithm,
        key_type="key_pair" if material.secret_bundle else "public_only",
        purpose=purpose or None,
        public_key_data=material.public_armored,
        expires_at=material.expires_at,
        created_by=actor_name(by),
    )
    if material.secret_bundle:
        key.private_key_data = keyring().seal(material.secret_bundle)
    key.save()
    AuditLogEntry.objects.record(
        entity_type="pgp_key",
        entity_id=key.pk,
        operation=operation,
        performed_by=by,
        details={
            "name": name,
            "algorithm": material.algorithm,
            "fingerprint": material.fingerprint,
            "key_type": key.key_type,
            "user_id": material.user_id,
        },
        event_type="PgpKeyCreated",
    )
    return key


def generate_pgp_key(
    name: str,
    algorithm: str,
    *,
    by: Any,
    email: str = "",
    expire_days: int | None = None,
    purpose: str = "",
    passphrase: str | None = None,
) -> Any:
    """A new key pair; with a passphrase its private key is protected by it (kept sealed beside it)."""
    material = pgp.generate(algorithm, name, email, expire_days, passphrase)
    return save_pgp_key(name, material, by=by, operation="generated", purpose=purpose)


def import_pgp_key(name: str, data: str | bytes, passphrase: str | None, *, by: Any, purpose: str = "") -> Any:
    return save_pgp_key(name, pgp.load(data, passphrase), by=by, operation="imported", purpose=purpose)


def export_private_pgp_key(key: Any, *, by: Any) -> str:
    """The armored private key, for an Admin who confirmed it; audited. Refused for public-only keys."""

    if not key.private_key_data:
        raise KeyNotUsable(f"key '{key.name}' has no private half")
    armored = json.loads(keyring().open_text(key.private_key_data))["armored"]
    AuditLogEntry.objects.record(
        entity_type="pgp_key",
        entity_id=key.pk,
        operation="private_key_exported",
        performed_by=by,
        details={"fingerprint": key.fingerprint},
    )
    return armored
