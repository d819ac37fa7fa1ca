"""PGP keys with real gpg: generate every algorithm, import public keys and pairs, passphrases, exports."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from audit.models import AuditLogEntry
from courier_site.envelope import keyring
from keystore import pgp
from keystore.errors import CorruptKey, DuplicateKey, WrongPassphrase
from keystore.models import PgpKey
from keystore.services import generate_pgp_key, import_pgp_key

pytestmark = pytest.mark.django_db


def gpg_cli_key(home: Path, passphrase: str) -> tuple[str, str]:
    """A key pair made by the gpg command line, exported as a partner would send it: (public, private)."""
    base = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", passphrase]
    subprocess.run(
        [*base, "--quick-generate-key", "Partner <partner@example.com>", "rsa2048", "default", "never"],
        check=True,
        capture_output=True,
    )
    public = subprocess.run([*base, "--armor", "--export"], check=True, capture_output=True, text=True).stdout
    private = subprocess.run(
        [*base, "--armor", "--export-secret-keys"], check=True, capture_output=True, text=True
    ).stdout
    return public, private


@pytest.mark.parametrize("algorithm", sorted(pgp.ALGORITHMS))
def test_generate_every_algorithm(algorithm: str) -> None:
    key = generate_pgp_key(f"key {algorithm}", algorithm, by="admin", email="ops@example.com", expire_days=365)
    assert key.algorithm == algorithm and key.key_type == "key_pair"
    assert len(key.fingerprint) == 40 and key.short_key_id == key.fingerprint[-16:]
    assert key.expires_at is not None
    assert key.public_key_data.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    bundle = json.loads(keyring().open_text(key.private_key_data))
    assert "PRIVATE KEY BLOCK" in bundle["armored"]
    assert b"PRIVATE KEY BLOCK" not in bytes(key.private_key_data)


def test_import_a_partner_public_key_and_refuse_it_twice(gpg_home: Callable[[str], Path]) -> None:
    public, _ = gpg_cli_key(gpg_home("partner"), "p4ss")
    key = import_pgp_key("ACME public", public, None, by="admin")
    assert key.key_type == "public_only" and not key.private_key_data
    with pytest.raises(DuplicateKey, match=r"\[E4002\]"):
        import_pgp_key("again", public, None, by="admin")


def test_import_a_key_pair_checks_its_passphrase(gpg_home: Callable[[str], Path]) -> None:
    _, private = gpg_cli_key(gpg_home("pair"), "right-pass")
    with pytest.raises(WrongPassphrase, match=r"\[E4001\]"):
        pgp.load(private, "wrong-pass")
    key = import_pgp_key("ours", private, "right-pass", by="admin")
    assert key.key_type == "key_pair"
    assert json.loads(keyring().open_text(key.private_key_data))["passphrase"] == "right-pass"


def test_corrupt_key_data_is_e4000() -> None:
    with pytest.raises(CorruptKey, match=r"\[E4000\]"):
        pgp.load("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot a key\n-----END PGP PUBLIC KEY BLOCK-----\n")


def login(client: Client, django_user_model, role: str) -> Client:
    user = django_user_model.objects.create_user(username=f"pgp-{role}", password="x" * 16, is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    client.force_login(user)
    return client


def test_public_export_is_a_real_key_that_gpg_imports(
    client: Client, django_user_model, gpg_home: Callable[[str], Path]
) -> None:
    key = generate_pgp_key("shared", "ecc_curve25519", by="admin")
    login(client, django_user_model, "Viewer")
    exported = client.get(reverse("admin:keystore_pgpkey_public", args=[key.pk])).content
    home = gpg_home("check")
    result = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import"], input=exported, capture_output=True)
    assert result.returncode == 0
    listing = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--with-colons", "--list-keys"], capture_output=True, text=True
    ).stdout
    assert key.fingerprint in listing


def test_private_export_is_admin_only_and_needs_confirmation(client: Client, django_user_model) -> None:
    key = generate_pgp_key("ours", "ecc_p256", by="admin")
    url = reverse("admin:keystore_pgpkey_private", args=[key.pk])
    login(client, django_user_model, "Operator")
    assert client.post(url, {"confirm": key.short_key_id}).status_code == 403
    assert AuditLogEntry.objects.filter(entity_id=key.pk, operation="private_export_refused").exists()

    login(client, django_user_model, "Admin")
    page = client.post(url, {"confirm": "wrong"})
    assert b"PRIVATE KEY BLOCK" not in page.content
    exported = client.post(url, {"confirm": key.short_key_id})
    assert b"BEGIN PGP PRIVATE KEY BLOCK" in exported.content
    assert AuditLogEntry.objects.filter(entity_id=key.pk, operation="private_key_exported").exists()


def test_admin_generates_a_key_in_the_console(client: Client, django_user_model) -> None:
    login(client, django_user_model, "Admin")
    response = client.post(
        reverse("admin:keystore_pgpkey_add"),
        {
            "name": "Invoices 2026",
            "purpose": "encrypt to ACME",
            "mode": "generate",
            "algorithm_choice": "rsa_3072",
            "email": "ops@example.com",
            "expire_days": 730,
            "key_data": "",
            "passphrase": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:1500]
    key = PgpKey.objects.get(name="Invoices 2026")
    assert key.algorithm == "rsa_3072" and key.purpose == "encrypt to ACME"
    assert AuditLogEntry.objects.filter(entity_id=key.pk, operation="generated").exists()


def test_a_key_generated_with_a_passphrase_keeps_it_sealed_beside_the_private_key() -> None:
    key = generate_pgp_key("protected", "ecc_p256", by="admin", passphrase="correct horse battery")
    bundle = json.loads(keyring().open_text(key.private_key_data))
    assert bundle["passphrase"] == "correct horse battery"
    assert b"correct horse battery" not in bytes(key.private_key_data)


@pytest.mark.parametrize("passphrase", ["two\nlines", " padded", "padded "])
def test_generating_refuses_a_passphrase_gpg_would_change(passphrase: str) -> None:
    with pytest.raises(WrongPassphrase, match=r"\[E4001\]"):
        generate_pgp_key("odd passphrase", "ecc_p256", by="admin", passphrase=passphrase)
    assert not PgpKey.objects.filter(name="odd passphrase").exists()


def add_page_data(**overrides: object) -> dict[str, object]:
    data = {
        "name": "Protected 2026",
        "purpose": "",
        "mode": "generate",
        "algorithm_choice": "rsa_2048",
        "email": "ops@example.com",
        "expire_days": "",
        "key_data": "",
        "passphrase": "",
        "passphrase_again": "",
    }
    return {**data, **overrides}


def test_the_add_page_refuses_passphrases_that_differ(client: Client, django_user_model) -> None:
    login(client, django_user_model, "Admin")
    response = client.post(
        reverse("admin:keystore_pgpkey_add"), add_page_data(passphrase="s3cret phrase", passphrase_again="s3cret")
    )
    assert response.status_code == 200
    assert "The two passphrases differ." in response.content.decode()
    assert not PgpKey.objects.filter(name="Protected 2026").exists()


def test_the_admin_export_of_a_key_generated_with_a_passphrase_is_protected_by_it(
    client: Client, django_user_model, tmp_path: Path, gpg_home: Callable[[str], Path]
) -> None:
    login(client, django_user_model, "Admin")
    created = client.post(
        reverse("admin:keystore_pgpkey_add"),
        add_page_data(passphrase="s3cret phrase", passphrase_again="s3cret phrase"),
    )
    assert created.status_code == 302, created.content.decode()[:1500]
    key = PgpKey.objects.get(name="Protected 2026")
    exported = client.post(reverse("admin:keystore_pgpkey_private", args=[key.pk]), {"confirm": key.short_key_id})
    assert b"BEGIN PGP PRIVATE KEY BLOCK" in exported.content

    home = gpg_home("holder")
    gpg = ["gpg", "--homedir", str(home), "--batch", "--trust-model", "always"]
    subprocess.run([*gpg, "--import"], input=exported.content, check=True, capture_output=True)
    subprocess.run(
        [*gpg, "--recipient", key.fingerprint, "--output", str(tmp_path / "note.gpg"), "--encrypt"],
        input=b"for the key holder",
        check=True,
        capture_output=True,
    )

    def decrypt(*passphrase_options: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*gpg, *passphrase_options, "--decrypt", str(tmp_path / "note.gpg")], capture_output=True)

    # The right passphrase goes last: the agent remembers it once it has worked.
    without = decrypt("--pinentry-mode", "error")
    wrong = decrypt("--pinentry-mode", "loopback", "--passphrase", "guess")
    right = decrypt("--pinentry-mode", "loopback", "--passphrase", "s3cret phrase")
    assert without.returncode != 0 and without.stdout == b""
    assert wrong.returncode != 0 and wrong.stdout == b""
    assert right.returncode == 0 and right.stdout == b"for the key holder"
