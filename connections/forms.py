"""Console form for connections: per-protocol rules, write-only password, Admin-only insecure settings."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from django import forms
from django.core.validators import MaxValueValidator, MinValueValidator

from connections.models import NUMBER_RANGES, Connection
from connections.policy import ALLOW_IN_PRODUCTION, insecure_trust_allowed
from system.values import setting_bool

DEFAULT_PORTS = {"sftp": 22, "ftp": 21, "ftps": 21}
SSH_ALGORITHM_KEYS = {"kex", "ciphers", "macs", "host_key_types"}
THUMBPRINT = re.compile(r"^[0-9a-f]{64}$")
NO_HOST = "[E3003] A connection needs the host name or IP address of the partner server."
HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def is_host(value: str) -> bool:
    """A DNS name (labels of letters, digits, '-' and '_') or an IPv4 / IPv6 address."""
    try:
        ipaddress.ip_address(value.strip("[]"))
        return True
    except ValueError:
        pass
    return len(value) <= 253 and all(HOST_LABEL.match(label) for label in value.rstrip(".").split("."))


def is_admin(user: Any) -> bool:
    return bool(user and (user.is_superuser or user.groups.filter(name="Admin").exists()))


class ConnectionForm(forms.ModelForm):
    new_password = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Write-only: type a password to set or replace it; leave empty to keep the stored one.",
    )
    clear_password = forms.BooleanField(required=False, help_text="Remove the stored password.")

    class Meta:
        model = Connection
        fields = (
            "name",
            "group",
            "protocol",
            "host",
            "port",
            "status",
            "notes",
            "auth_method",
            "username",
            "ssh_key",
            "host_key_policy",
            "ssh_algorithms",
            "keepalive_interval_sec",
            "passive_mode",
            "tls_version_floor",
            "tls_cert_policy",
            "tls_pinned_thumbprint",
            "connect_timeout_sec",
            "operation_timeout_sec",
            "transport_retries",
            "transfer_segments",
            "fips_override",
        )

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.refusals: list[dict[str, str]] = []  # audited by the admin after validation
        if "port" in self.fields:  # a read-only page (Viewer, Operator) has no form fields
            self.fields["port"].required = False
        if "host" in self.fields:
            self.fields["host"].error_messages["required"] = NO_HOST
        for name, (lowest, highest) in NUMBER_RANGES.items():
            if name in self.fields:
                field = self.fields[name]
                field.validators += [MinValueValidator(lowest), MaxValueValidator(highest)]
                field.widget.attrs.update({"min": lowest, "max": highest})

    def clean_host(self) -> str:
        host = (self.cleaned_data.get("host") or "").strip()
        if not host:
            raise forms.ValidationError(NO_HOST)
        if not is_host(host):
            raise forms.ValidationError(
                f"[E3003] {host!r} is no host name or IP address "
                "(letters, digits, '-' and '.', e.g. sftp.partner.example)."
            )
        return host

    def _refuse(self, field: str, message: str) -> None:
        self.refusals.append({"field": field, "reason": message})
        self.add_error(field, f"[E3004] {message}")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        protocol = data.get("protocol")
        if not protocol:
            return data
        if not data.get("port"):
            data["port"] = DEFAULT_PORTS[protocol]
        initial = self.instance if self.instance.pk else None
        if protocol == "sftp":
            self._clean_sftp(data)
        else:
            self._clean_ftp(data, protocol)
        has_password = bool(data.get("new_password")) or (
            initial is not None and initial.password_encrypted and not data.get("clear_password")
        )
        if data.get("auth_method") in ("password", "password_and_ssh_key") and not has_password:
            self.add_error("new_password", "This authentication method needs a password.")
        self._check_privileged(data, initial)
        return data

    def _clean_sftp(self, data: dict[str, Any]) -> None:
        for field, default in (("tls_cert_policy", "system_trust"),):
            if data.get(field) not in (None, "", default):
                self.add_error(field, "TLS settings apply to FTPS only, not SFTP.")
        for field in ("tls_pinned_thumbprint", "tls_version_floor"):
            if data.get(field):
                self.add_error(field, "TLS settings apply to FTPS only, not SFTP.")
        if data.get("auth_method") in ("ssh_key", "password_and_ssh_key") and not data.get("ssh_key"):
            self.add_error("ssh_key", "Key authentication needs an SSH key from the key store.")
        algorithms = data.get("ssh_algorithms")
        if algorithms and "\\u0000" in json.dumps(algorithms):
            # PostgreSQL's jsonb cannot store a NUL character; refuse it here, not with a server error.
            self.add_error("ssh_algorithms", "Algorithm names cannot hold a NUL character.")
        elif algorithms and (
            not isinstance(algorithms, dict)
            or set(algorithms) - SSH_ALGORITHM_KEYS
            or not all(
                isinstance(names, list) and all(isinstance(name, str) for name in names)
                for names in algorithms.values()
            )
        ):
            self.add_error(
                "ssh_algorithms",
                'Use {"kex": [...], "ciphers": [...], "macs": [...], '
                '"host_key_types": [...]} with lists of algorithm names.',
            )

    def _clean_ftp(self, data: dict[str, Any], protocol: str) -> None:
        if data.get("auth_method") != "password":
            self.add_error("auth_method", f"{protocol.upper()} signs in with a password only; SSH keys are for SFTP.")
        if data.get("ssh_key"):
            self.add_error("ssh_key", f"SSH keys apply to SFTP only, not {protocol.upper()}.")
        if data.get("ssh_algorithms"):
            self.add_error("ssh_algorithms", f"SSH algorithms apply to SFTP only, not {protocol.upper()}.")
        if data.get("host_key_policy") == "always_trust":
            self.add_error("host_key_policy", f"Host key policies apply to SFTP only, not {protocol.upper()}.")
        if protocol == "ftp":
            if data.get("tls_cert_policy") not in (None, "", "system_trust") or data.get("tls_pinned_thumbprint"):
                self.add_error("tls_cert_policy", "Plain FTP has no TLS; choose FTPS for certificate settings.")
            return
        if data.get("tls_cert_policy") == "pinned_thumbprint":
            thumbprint = (data.get("tls_pinned_thumbprint") or "").replace(":", "").lower()
            if not THUMBPRINT.match(thumbprint):
                self.add_error(
                    "tls_pinned_thumbprint", "Give the SHA-256 thumbprint of the certificate (64 hex digits)."
                )
            data["tls_pinned_thumbprint"] = thumbprint
        if data.get("tls_version_floor") not in (None, "", "1.2", "1.3"):
            self.add_error("tls_version_floor", "TLS floor must be 1.2 or 1.3.")

    def _check_privileged(self, data: dict[str, Any], initial: Connection | None) -> None:
        """always_trust, insecure TLS and fips_override: Admins only, and never in production unless allowed."""
        admin = is_admin(self.user)
        insecure = [
            (
                "host_key_policy",
                data.get("host_key_policy") == "always_trust",
                initial is not None and initial.host_key_policy == "always_trust",
            ),
            (
                "tls_cert_policy",
                data.get("tls_cert_policy") == "insecure",
                initial is not None and initial.tls_cert_policy == "insecure",
            ),
        ]
        for field, wanted, already in insecure:
            if not wanted or already:
                continue
            if not insecure_trust_allowed():
                self._refuse(
                    field, f"insecure trust is not allowed in production (system setting {ALLOW_IN_PRODUCTION})"
                )
            elif not admin and setting_bool("security.insecure_trust_require_admin", True):
                self._refuse(field, "only an Admin may choose an insecure trust policy")
        newly_lifted = data.get("fips_override") and not (initial is not None and initial.fips_override)
        if newly_lifted and not admin and setting_bool("security.fips_override_require_admin", True):
            self._refuse("fips_override", "only an Admin may lift FIPS restrictions on a connection")

    def save(self, commit: bool = True) -> Connection:
        connection = super().save(commit=False)
        connection.port = self.cleaned_data["port"]
        if self.cleaned_data.get("new_password"):
            connection.set_password(self.cleaned_data["new_password"])
        elif self.cleaned_data.get("clear_password"):
            connection.password_encrypted = None
        if commit:
            connection.save()
        return connection
