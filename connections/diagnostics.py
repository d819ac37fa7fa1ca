""" "Test connection": connect, authenticate, list the base path and report what an operator needs."""

from __future__ import annotations

import time
from typing import Any

from audit.models import AuditLogEntry
from connections.transfer.sessions import open_session
from courier_site.errors import CourierError

HINTS = {
    "E3001": "Check the user name, the password or key, and that the partner enabled this account.",
    "E3002": "The server identity changed or is not approved: verify the fingerprint with the partner, "
    "then approve it under Known hosts (Admin).",
    "E3003": "Check host name, port, DNS and firewall rules between Courier and the partner.",
    "E3000": "The server answered but the session failed; the message names the protocol step.",
    "E3004": "The connection's settings are refused here: choose a policy that verifies the server, "
    "or ask an Admin about the system setting the message names.",
}


def test_connection(connection: Any, *, by: Any, path: str = ".") -> dict[str, Any]:
    """Connect, authenticate and list path; the result is a dict for the console and the command."""
    started = time.monotonic()
    result: dict[str, Any] = {
        "connection": connection.name,
        "protocol": connection.protocol,
        "endpoint": f"{connection.host}:{connection.port}",
    }
    try:
        session = open_session(connection, by=by)
    except CourierError as error:
        result.update(ok=False, error=str(error), code=error.code, hint=HINTS.get(error.code, ""))
    else:
        try:
            listing = session.listdir(path)
            result.update(
                ok=True,
                latency_ms=session.info.latency_ms,
                banner=session.info.banner,
                entries_in_base_path=len(listing),
                **session.info.details,
            )
        except CourierError as error:
            result.update(ok=False, error=str(error), code=error.code, hint="Check the base path and permissions.")
        finally:
            session.close()
    result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
    AuditLogEntry.objects.record(
        entity_type="connection",
        entity_id=connection.pk,
        operation="tested",
        performed_by=by,
        details={key: value for key, value in result.items() if key in ("ok", "code", "latency_ms", "endpoint")},
    )
    return result
