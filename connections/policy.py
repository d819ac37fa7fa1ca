"""The production rule for insecure trust policies, shared by the console form and the connect path."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from connections.errors import ConnectionPolicyRefused
from system.values import setting_bool

ALLOW_IN_PRODUCTION = "security.insecure_trust_allow_production"


def insecure_trust_allowed() -> bool:
    """always_trust (SFTP) and insecure TLS (FTPS) are refused in production unless the system setting allows them."""
    return not settings.IS_PRODUCTION or setting_bool(ALLOW_IN_PRODUCTION, False)


def refuse_insecure_trust_in_production(connection: Any, policy: str) -> None:
    """Raise [E3004] when a connection relies on an insecure trust policy where production forbids it.

    The console form refuses the policy already; this catches connections imported from a file or
    edited in SQL, which never passed through the form.
    """
    if insecure_trust_allowed():
        return
    raise ConnectionPolicyRefused(
        f"connection '{connection.name}' uses the {policy}, which is not allowed in production: an Admin must "
        f"choose a policy that verifies the server, or set the system setting {ALLOW_IN_PRODUCTION} to true"
    )
