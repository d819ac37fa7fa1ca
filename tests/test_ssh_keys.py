"""SSH keys in the key store: generate, import with passphrase, duplicates, public export, sealing."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from audit.models import AuditLogEntry
from courier_site.envelope import keyring
from keystore import ssh
from keystore.errors import CorruptKey, DuplicateKey, WrongPassphrase
from keystore.models import SshKey
from keystore.services import generate_ssh_key, import_ssh_key

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("key_type", ["rsa_2048", "ed25519", "ecdsa_256"])
def test_generated_keys_are_sealed_and_fingerprinted(key_type: str) -> None:
    key = generate_ssh_key(f"k-{key_type}", key_type, by="admin")
    assert key.key_type == key_type and key.fingerprint.startswith("SHA256:")
    assert b"PRIVATE KEY" not in bytes(key.private_key_data)
    assert "OPENSSH PRIVATE KEY" in keyring().open_text(key.private_key_data)
    assert key.public_key_data.startswith(("ssh-rsa", "ssh-ed25519", "ecdsa-sha2-nistp256"))
    assert AuditLogEntry.objects.filter(entity_id=key.pk, operation="generated").exists()


@pytest.mark.parametrize(
    "private_format",
    [
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.PrivateFormat.PKCS8,
        serialization.PrivateFormat.OpenSSH,
    ],
)
def test_import_with_passphrase_in_every_format(private_format) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    text = private.private_bytes(
        serialization.Encoding.PEM, private_format, serialization.BestAvailableEncryption(b"key-pass")
    ).decode()
    key = import_ssh_key("imported", text, "key-pass", by="admin")
    assert key.key_type == "rsa_2048"


def test_wrong_passphrase_and_corrupt_keys_are_told_apart() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    text = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"right")
    ).decode()
    with pytest.raises(WrongPassphrase, match=r"\[E4001\]"):
        ssh.load(text, "wrong")
    with pytest.raises(WrongPassphrase, match="give its passphrase"):
        ssh.load(text)
    with pytest.raises(CorruptKey, match=r"\[E4000\]"):
        ssh.load("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n-----END OPENSSH PRIVATE KEY-----\n")


def test_the_same_key_cannot_be_stored_twice() -> None:
    material = ssh.generate("ed25519")
    import_ssh_key("first", material.private_openssh, None, by="admin")
    with pytest.raises(DuplicateKey, match=r"\[E4002\].*'first'"):
        import_ssh_key("second", material.private_openssh, None, by="admin")


def test_admin_generates_a_key_in_the_console_and_downloads_its_public_half(client: Client, django_user_model) -> None:
    admin_user = django_user_model.objects.create_user(username="keys-admin", password="x" * 16, is_staff=True)
    admin_user.groups.add(Group.objects.get(name="Admin"))
    client.force_login(admin_user)
    response = client.post(
        reverse("admin:keystore_sshkey_add"),
        {"name": "partner", "mode": "generate", "key_type": "ed25519", "notes": ""},
    )
    assert response.status_code == 302, response.content.decode()[:1000]
    key = SshKey.objects.get(name="partner")
    page = client.get(reverse("admin:keystore_sshkey_change", args=[key.pk])).content.decode()
    assert "PRIVATE KEY" not in page
    public = client.get(reverse("admin:keystore_sshkey_public", args=[key.pk]))
    assert public.content.decode().strip() == key.public_key_data.strip()
    assert AuditLogEntry.objects.filter(entity_id=key.pk, operation="public_key_exported").exists()


def test_operators_cannot_add_keys(client: Client, django_user_model) -> None:
    operator = django_user_model.objects.create_user(username="keys-op", password="x" * 16, is_staff=True)
    operator.groups.add(Group.objects.get(name="Operator"))
    client.force_login(operator)
    assert client.get(reverse("admin:keystore_sshkey_add")).status_code == 403


def test_import_refusals_show_next_to_the_field(client: Client, django_user_model) -> None:
    admin_user = django_user_model.objects.create_user(username="keys-admin2", password="x" * 16, is_staff=True)
    admin_user.groups.add(Group.objects.get(name="Admin"))
    client.force_login(admin_user)
    response = client.post(
        reverse("admin:keystore_sshkey_add"), {"name": "bad", "mode": "import", "private_key": "garbage", "notes": ""}
    )
    assert "[E4000]" in str(response.context["adminform"].form.errors["private_key"])
