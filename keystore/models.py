"""PGP and SSH keys, and share links for their public halves."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models.functions import Now

from courier_site.envelope import keyring
from courier_site.softdelete import SoftDeleteModel


class SshKey(SoftDeleteModel):
    class KeyType(models.TextChoices):
        RSA_2048 = "rsa_2048", "RSA 2048"
        RSA_4096 = "rsa_4096", "RSA 4096"
        ED25519 = "ed25519", "Ed25519"
        ECDSA_256 = "ecdsa_256", "ECDSA P-256"

    class Status(models.TextChoices):
        ACTIVE = "active"
        RETIRED = "retired"
        DELETED = "deleted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.TextField(help_text="Name of the key, e.g. 'acme-sftp-2026'.")
    key_type = models.TextField(choices=KeyType.choices, help_text="Algorithm and size.")
    public_key_data = models.TextField(help_text="Public key in OpenSSH format, safe to share.")
    private_key_data = models.BinaryField(editable=False)
    passphrase_hash = models.TextField(null=True, blank=True, editable=False)
    fingerprint = models.TextField(help_text="SHA256:<base64> fingerprint.")
    status = models.TextField(choices=Status.choices, default=Status.ACTIVE)
    notes = models.TextField(null=True, blank=True)
    created_by = models.TextField(help_text="Operator who generated or imported it.")
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        managed = False
        db_table = "ssh_keys"
        verbose_name = "SSH key"
        ordering = ("name",)

    def __str__(self) -> str:
        return f"{self.name} ({self.key_type})"

    def set_private_key(self, text: str) -> None:
        """Seal the private key (OpenSSH or PEM text) with the master key."""

        self.private_key_data = keyring().seal(text)


class PgpKey(SoftDeleteModel):
    class Algorithm(models.TextChoices):
        RSA_2048 = "rsa_2048", "RSA 2048"
        RSA_3072 = "rsa_3072", "RSA 3072"
        RSA_4096 = "rsa_4096", "RSA 4096"
        ECC_CURVE25519 = "ecc_curve25519", "Curve25519"
        ECC_P256 = "ecc_p256", "NIST P-256"
        ECC_P384 = "ecc_p384", "NIST P-384"

    class KeyType(models.TextChoices):
        PUBLIC_ONLY = "public_only", "Public key only"
        KEY_PAIR = "key_pair", "Key pair"

    class Status(models.TextChoices):
        ACTIVE = "active"
        EXPIRING = "expiring"
        RETIRED = "retired"
        REVOKED = "revoked"
        DELETED = "deleted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.TextField(help_text="Name of the key, e.g. 'ACME invoices 2026'.")
    fingerprint = models.TextField(help_text="40-hex-digit fingerprint.")
    short_key_id = models.TextField(help_text="16-hex-digit key id.")
    algorithm = models.TextField(choices=Algorithm.choices)
    key_type = models.TextField(choices=KeyType.choices)
    purpose = models.TextField(null=True, blank=True, help_text="What the key is used for, e.g. 'encrypt to ACME'.")
    status = models.TextField(
        choices=Status.choices,
        default=Status.ACTIVE,
        help_text="Retired keys only decrypt and verify; revoked keys do nothing.",
    )
    public_key_data = models.TextField(help_text="ASCII-armored public key.")
    private_key_data = models.BinaryField(null=True, blank=True, editable=False)
    passphrase_hash = models.TextField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="When the key expires, if ever.")
    successor_key = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        db_column="successor_key_id",
        related_name="predecessors",
        help_text="Replacement key used when this one is retired.",
    )
    created_by = models.TextField()
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        managed = False
        db_table = "pgp_keys"
        verbose_name = "PGP key"
        ordering = ("name",)

    def __str__(self) -> str:
        return f"{self.name} ({self.short_key_id})"


class PublicKeyShareToken(models.Model):
    class KeyKind(models.TextChoices):
        PGP = "pgp", "PGP"
        SSH = "ssh", "SSH"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    token_hash = models.TextField(
        editable=False, help_text="SHA-256 of the link token; the token itself is never stored."
    )
    key_type = models.TextField(choices=KeyKind.choices)
    key_id = models.UUIDField(help_text="The shared PGP or SSH key.")
    expires_at = models.DateTimeField(help_text="The link stops working at this time.")
    created_by = models.TextField()
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    download_count = models.IntegerField(default=0, editable=False)

    class Meta:
        managed = False
        db_table = "public_key_share_tokens"
        verbose_name = "public key share link"
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.key_type} key {str(self.key_id)[:8]} link"
