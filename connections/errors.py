"""Errors of connections and transfers, with the codes operators search for."""

from __future__ import annotations

from courier_site.errors import CourierError


class ConnectionFailed(CourierError):
    """The session could not be set up or broke (protocol error, refused command, TLS failure)."""

    code = "E3000"


class AuthenticationFailed(CourierError):
    code = "E3001"


class HostKeyRejected(CourierError):
    """The server's SSH host key or TLS certificate is not the one trusted for this connection."""

    code = "E3002"


class HostUnreachable(CourierError):
    code = "E3003"


class ConnectionPolicyRefused(CourierError):
    """An insecure or Admin-only setting was refused for this user or environment."""

    code = "E3004"


class RemoteFileError(CourierError):
    """A remote file operation failed (missing file, permission, size mismatch after transfer)."""

    code = "E3005"
