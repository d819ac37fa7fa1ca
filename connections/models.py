"""Partner connections (SFTP, FTP, FTPS) and the host keys seen on them."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models.functions import Now

from courier_site.envelope import keyring
from courier_site.softdelete import SoftDeleteModel

# Accepted ranges of the numeric settings (transport_retries and transfer_segments mirror their
# ck_connections_* checks): the console form and the definitions import refuse values outside
# them, which would otherwise reach PostgreSQL and fail there.
NUMBER_RANGES = {
    "port": (1, 65535),
    "connect_timeout_sec": (1, 3600),
    "operation_timeout_sec": (1, 86400),
    "keepalive_interval_sec": (0, 3600),
    "transport_retries": (0, 3),
    "transfer_segments": (1, 8),
}


class Connection(SoftDeleteModel):
    class Protocol(models.TextChoices):
        SFTP = "sftp", "SFTP"
        FTP = "ftp", "FTP"
        FTPS = "ftps", "FTPS"

    class AuthMethod(models.TextChoices):
        PASSWORD = "password"
        SSH_KEY = "ssh_key"
        PASSWORD_AND_SSH_KEY = "password_and_ssh_key"

    class HostKeyPolicy(models.TextChoices):
        TRUST_ON_FIRST_USE = "trust_on_first_use"
        ALWAYS_TRUST = "always_trust"
        MANUAL = "manual"

    class TlsCertPolicy(models.TextChoices):
        SYSTEM_TRUST = "system_trust"
        PINNED_THUMBPRINT = "pinned_thumbprint"
        INSECURE = "insecure"

    class Status(models.TextChoices):
        ACTIVE = "active"
        DISABLED = "disabled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.TextField(help_text="Name steps and operators use for this partner endpoint.")
    group = models.TextField(db_column="group", null=True, blank=True, help_text="Optional grouping, e.g. the partner.")
    protocol = models.TextField(
        choices=Protocol.choices, help_text="SFTP (22), FTP (21) or FTPS (21 explicit, 990 implicit)."
    )
    host = models.TextField(help_text="Host name or IP address of the partner server.")
    port = models.IntegerField(help_text="TCP port.")
    auth_method = models.TextField(choices=AuthMethod.choices, help_text="How Courier signs in.")
    username = models.TextField(help_text="Login name at the partner.")
    password_encrypted = models.BinaryField(null=True, blank=True, editable=False)
    ssh_key = models.ForeignKey(
        "keystore.SshKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        db_column="ssh_key_id",
        related_name="connections",
        help_text="SSH key for key authentication (SFTP only).",
    )
    host_key_policy = models.TextField(
        choices=HostKeyPolicy.choices,
        default=HostKeyPolicy.TRUST_ON_FIRST_USE,
        help_text="How the server's SSH host key is checked.",
    )
    stored_host_fingerprint = models.TextField(null=True, blank=True, help_text="Accepted host key, SHA256:<base64>.")
    passive_mode = models.BooleanField(default=True, help_text="FTP passive mode (recommended behind firewalls).")
    tls_version_floor = models.TextField(null=True, blank=True, help_text="Lowest TLS version accepted, e.g. 1.2.")
    tls_cert_policy = models.TextField(
        choices=TlsCertPolicy.choices,
        default=TlsCertPolicy.SYSTEM_TRUST,
        help_text="How the FTPS server certificate is checked.",
    )
    tls_pinned_thumbprint = models.TextField(null=True, blank=True, help_text="SHA-256 of the pinned certificate.")
    ssh_algorithms = models.JSONField(null=True, blank=True, help_text="Allowed kex / ciphers / MACs / host key types.")
    connect_timeout_sec = models.IntegerField(default=30, help_text="Seconds to wait for the connection.")
    operation_timeout_sec = models.IntegerField(default=300, help_text="Seconds one operation may take.")
    keepalive_interval_sec = models.IntegerField(default=60, help_text="Seconds between keepalives on open sessions.")
    transport_retries = models.IntegerField(default=2, help_text="Reconnects (0-3) after a dropped session.")
    transfer_segments = models.SmallIntegerField(
        default=1,
        help_text="SFTP downloads of 128 MiB and more are read over this many connections at once (1-8; "
        "1 = one stream). More fill a long-distance link; the partner must allow that many logins.",
    )
    status = models.TextField(choices=Status.choices, default=Status.ACTIVE)
    fips_override = models.BooleanField(
        default=False, help_text="Lift FIPS restrictions for this connection (Admin only)."
    )
    notes = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        managed = False
        db_table = "connections"
        ordering = ("name",)
        permissions = [("test_connection", "Can test connections")]

    def __str__(self) -> str:
        return f"{self.name} ({self.protocol}://{self.host}:{self.port})"

    @property
    def has_password(self) -> bool:
        return bool(self.password_encrypted)

    def set_password(self, password: str | None) -> None:
        """Seal the password with the master key; it is never stored or shown in clear."""

        self.password_encrypted = keyring().seal(password) if password else None

    @property
    def pending_host_keys(self) -> models.QuerySet:
        """Host keys a server offered that no Admin approved yet: the connection is flagged while any exist."""
        return self.known_hosts.filter(approved_by="")


class KnownHost(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    connection = models.ForeignKey(
        Connection, on_delete=models.CASCADE, db_column="connection_id", related_name="known_hosts"
    )
    fingerprint = models.TextField(help_text="SHA256:<base64> fingerprint of the host key.")
    key_type = models.TextField(help_text="Host key type, e.g. ssh-ed25519.")
    first_seen = models.DateTimeField(db_default=Now(), editable=False)
    last_seen = models.DateTimeField(db_default=Now())
    approved_by = models.TextField(help_text="Operator who approved it, or 'system' for trust on first use.")

    class Meta:
        managed = False
        db_table = "known_hosts"
        ordering = ("connection", "-last_seen")

    def __str__(self) -> str:
        return f"{self.key_type} {self.fingerprint}"
