"""SSH host key decisions: trust on first use, manual approval, always trust (SPEC 5)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.models import AuditLogEntry
from audit.querysets import actor_name
from connections.errors import HostKeyRejected
from connections.models import Connection, KnownHost
from connections.policy import refuse_insecure_trust_in_production

# known_hosts.approved_by of a key that was offered but not (yet) approved by an Admin.
PENDING = ""


def fingerprint(key_bytes: bytes) -> str:
    """OpenSSH-style SHA-256 fingerprint: SHA256:<unpadded base64>."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key_bytes).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class HostKeyDecision:
    accepted: bool
    reason: str


def verify(connection: Any, key_type: str, offered: str) -> HostKeyDecision:
    """Accept or refuse the host key a server offered; records and audits the decision.

    Refusals raise HostKeyRejected [E3002] and leave the offered key pending for an Admin;
    always_trust where production forbids it raises ConnectionPolicyRefused [E3004].
    """

    with transaction.atomic():
        locked = Connection.all_objects.select_for_update().get(pk=connection.pk)
        rows = list(KnownHost.objects.filter(connection=locked))
        approved = {row.fingerprint: row for row in rows if row.approved_by != PENDING}
        details = {
            "host": locked.host,
            "port": locked.port,
            "fingerprint": offered,
            "key_type": key_type,
            "policy": locked.host_key_policy,
        }
        if locked.host_key_policy == Connection.HostKeyPolicy.ALWAYS_TRUST:
            # Before any trust is granted (and before authentication): [E3004], audited by open_session.
            refuse_insecure_trust_in_production(locked, "host key policy always_trust")
            AuditLogEntry.objects.record(
                entity_type="connection",
                entity_id=locked.pk,
                operation="insecure_host_key_trust_used",
                performed_by="system",
                details=details,
            )
            return HostKeyDecision(True, "always_trust")
        if offered in approved:
            KnownHost.objects.filter(pk=approved[offered].pk).update(last_seen=timezone.now())
            return HostKeyDecision(True, "known")
        if locked.host_key_policy == Connection.HostKeyPolicy.TRUST_ON_FIRST_USE and not rows:
            KnownHost.objects.create(connection=locked, fingerprint=offered, key_type=key_type, approved_by="system")
            Connection.all_objects.filter(pk=locked.pk).update(stored_host_fingerprint=offered)
            AuditLogEntry.objects.record(
                entity_type="connection",
                entity_id=locked.pk,
                operation="host_key_trusted_on_first_use",
                performed_by="system",
                details=details,
                event_type="HostKeyTrusted",
            )
            return HostKeyDecision(True, "trusted_on_first_use")
        pending = next((row for row in rows if row.fingerprint == offered), None)
        if pending is None:
            KnownHost.objects.create(connection=locked, fingerprint=offered, key_type=key_type, approved_by=PENDING)
        else:
            KnownHost.objects.filter(pk=pending.pk).update(last_seen=timezone.now())
        trusted = ", ".join(approved) or "none yet"
        AuditLogEntry.objects.record(
            entity_type="connection",
            entity_id=locked.pk,
            operation="host_key_rejected",
            performed_by="system",
            details={**details, "trusted": list(approved)},
            event_type="HostKeyRejected",
        )
    # Raised after the commit, so the pending key and the audit record stay.
    changed = "changed" if approved else "is not approved"
    raise HostKeyRejected(
        f"host key of {connection.host}:{connection.port} {changed}: offered {offered} ({key_type}), "
        f"trusted {trusted}; an Admin must approve the new key in the console before Courier connects again"
    )


def approve(known_host: Any, *, by: Any) -> None:
    """An Admin accepts a pending key: it becomes the only trusted key of its connection."""

    with transaction.atomic():
        KnownHost.objects.filter(connection_id=known_host.connection_id).exclude(pk=known_host.pk).delete()
        KnownHost.objects.filter(pk=known_host.pk).update(approved_by=actor_name(by), last_seen=timezone.now())
        Connection.all_objects.filter(pk=known_host.connection_id).update(
            stored_host_fingerprint=known_host.fingerprint
        )
        AuditLogEntry.objects.record(
            entity_type="connection",
            entity_id=known_host.connection_id,
            operation="host_key_approved",
            performed_by=by,
            details={"fingerprint": known_host.fingerprint, "key_type": known_host.key_type},
            event_type="HostKeyApproved",
        )
