"""Opening sessions for a connection, and the per-execution pool that shares them between steps."""

from __future__ import annotations

import logging
import time
from typing import Any

from audit.models import AuditLogEntry
from connections.errors import AuthenticationFailed, ConnectionPolicyRefused, HostKeyRejected
from connections.models import Connection
from connections.transfer.ftp import FtpSession
from connections.transfer.sftp import SftpSession
from courier_site.envelope import keyring
from courier_site.errors import CourierError
from system.values import setting_bool

logger = logging.getLogger(__name__)


def open_session(connection: Any, *, by: Any = "system") -> Any:
    """An authenticated session for connection, audited (success and failure alike)."""

    if connection.status != "active":
        raise ConnectionPolicyRefused(f"connection '{connection.name}' is disabled")
    ring = keyring()
    password = ring.open_text(connection.password_encrypted) if connection.password_encrypted else None
    private_key = None
    if connection.ssh_key_id:
        private_key = ring.open_text(connection.ssh_key.private_key_data)
    fips = setting_bool("security.fips_mode_enabled", True)
    details = {
        "host": connection.host,
        "port": connection.port,
        "protocol": connection.protocol,
        "username": connection.username,
    }
    started = time.monotonic()
    try:
        if connection.protocol == "sftp":
            session = SftpSession(connection, password=password, private_key=private_key, fips=fips)
        else:
            session = FtpSession(connection, password=password, fips=fips)
    except CourierError as error:
        operation = {
            AuthenticationFailed: "auth_failed",
            HostKeyRejected: "host_key_refused",
            ConnectionPolicyRefused: "insecure_trust_refused",
        }.get(type(error), "connect_failed")
        AuditLogEntry.objects.record(
            entity_type="connection",
            entity_id=connection.pk,
            operation=operation,
            performed_by=by,
            details={**details, "error": str(error)},
        )
        raise
    AuditLogEntry.objects.record(
        entity_type="connection",
        entity_id=connection.pk,
        operation="connected",
        performed_by=by,
        details={**details, "latency_ms": round((time.monotonic() - started) * 1000, 1)},
    )
    # What the session noted while connecting (an insecure TLS policy in use) is audited now,
    # also for callers that hold no pool, such as "test connection".
    audit_events(session, by)
    return session


def audit_events(session: Any, by: Any) -> None:
    """Write the audit records a session queued (it may run in a thread without the database)."""
    while session.events:
        operation, details = session.events.pop(0)
        AuditLogEntry.objects.record(
            entity_type="connection",
            entity_id=session.connection.pk,
            operation=operation,
            performed_by=by,
            details=details,
        )


class SessionPool:
    """One session per connection per execution, shared by its steps and closed when it ends."""

    def __init__(self, by: Any = "system") -> None:
        self.by = by
        self.sessions: dict[str, Any] = {}

    def ensure(self, connection_id: Any) -> Any:
        """Open (in the runner's thread, which may use the database) the session a step will need."""

        key = str(connection_id)
        session = self.sessions.get(key)
        if session is None:
            connection = Connection.objects.select_related("ssh_key").filter(pk=connection_id).first()
            if connection is None:
                raise ConnectionPolicyRefused(f"connection {connection_id} does not exist or was deleted")
            session = self.sessions[key] = open_session(connection, by=self.by)
        return session

    def get(self, connection_id: Any) -> Any:
        return self.sessions[str(connection_id)]

    def flush_events(self) -> None:
        """Audit what sessions noted while a step ran (reconnects), from the runner's thread."""
        for session in self.sessions.values():
            audit_events(session, self.by)

    def close(self) -> None:
        for session in self.sessions.values():
            try:
                session.close()
            except Exception:
                logger.exception("closing a session failed")
        self.sessions.clear()
