"""Key store operations: SSH keys generated or imported, sealed, audited."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from audit.models import AuditLogEntry
from audit.querysets import actor_name
from keystore import ssh
from keystore.errors import DuplicateKey


@transaction.atomic
def save_ssh_key(name: str, material: ssh.SshKeyMaterial, *, by: Any, operation: str, notes: str = "") -> Any:
    """Store an SSH key with its private half sealed; a fingerprint already stored is refused [E4002]."""
    from keystore.models import SshKey

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
