"""The key store against the gpg command line: binary and expired keys, unknown signers, console exports."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from courier_site.envelope import keyring
from keystore import pgp
from keystore.errors import WrongPassphrase
from keystore.models import PgpKey
from keystore.services import generate_pgp_key, import_pgp_key
from tests.engine_support import make_job, run_inline

pytestmark = pytest.mark.django_db

DAY = 24 * 60 * 60


class GpgCli:
    """The gpg command line in a home of its own, standing in for a partner or for someone's old keyring."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def run(
        self, *args: str, input: bytes | None = None, passphrase: str | None = None, at: float | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Runs gpg; at= sets gpg's clock (to make keys and signatures in the past)."""
        command = ["gpg", "--homedir", str(self.home), "--batch", "--yes", "--trust-model", "always"]
        if passphrase is not None:
            command += ["--pinentry-mode", "loopback", "--passphrase", passphrase]
        if at is not None:
            command += ["--faked-system-time", f"{int(at)}!"]
        return subprocess.run([*command, *args], input=input, capture_output=True, check=True)

    def generate(self, user_id: str, passphrase: str, *, expire: str = "never", at: float | None = None) -> str:
        """A new RSA 2048 key pair that can sign and certify; returns its fingerprint."""
        self.run("--quick-generate-key", user_id, "rsa2048", "sign", expire, passphrase=passphrase, at=at)
        listing = self.run("--with-colons", "--list-secret-keys", user_id).stdout.decode()
        return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))

    def export_public(self, *, armor: bool = True) -> bytes:
        return self.run("--export", *(["--armor"] if armor else [])).stdout

    def export_secret(self, passphrase: str, *, armor: bool = True) -> bytes:
        return self.run("--export-secret-keys", *(["--armor"] if armor else []), passphrase=passphrase).stdout


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path: Path) -> Path:
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    (tmp_path / "data").mkdir()
    return settings.COURIER_DATA_DIR


@pytest.fixture
def gpg_cli(gpg_home: Callable[[str], Path]) -> Callable[[str], GpgCli]:
    """Makes command-line homes by name (gpg_home stops their agents after the test)."""
    return lambda name: GpgCli(gpg_home(name))


@pytest.fixture
def lapsed_key_holder(gpg_cli: Callable[[str], GpgCli]) -> tuple[GpgCli, str]:
    """A signing key made ten days ago that expired eight days ago, with passphrase 'old pass'."""
    holder = gpg_cli("lapsed")
    fingerprint = holder.generate("Lapsed <lapsed@example.com>", "old pass", expire="2d", at=time.time() - 10 * DAY)
    return holder, fingerprint


def login(client: Client, django_user_model, role: str) -> Client:
    user = django_user_model.objects.create_user(username=f"cli-{role}", password="x" * 16, is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    client.force_login(user)
    return client


def test_import_a_binary_public_key(gpg_cli: Callable[[str], GpgCli]) -> None:
    partner = gpg_cli("partner")
    fingerprint = partner.generate("Partner <partner@example.com>", "p4ss")
    binary = partner.export_public(armor=False)
    assert not binary.startswith(b"-----BEGIN")

    key = import_pgp_key("partner, binary", binary, None, by="admin")

    assert key.fingerprint == fingerprint and key.key_type == "public_only"
    assert key.public_key_data.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")


def test_import_a_binary_key_pair_through_the_console_file_upload(
    client: Client, django_user_model, gpg_cli: Callable[[str], GpgCli]
) -> None:
    partner = gpg_cli("partner")
    fingerprint = partner.generate("Partner <partner@example.com>", "p4ss")
    login(client, django_user_model, "Admin")

    response = client.post(
        reverse("admin:keystore_pgpkey_add"),
        {
            "name": "partner pair, binary",
            "purpose": "",
            "mode": "import",
            "algorithm_choice": "rsa_3072",
            "email": "",
            "expire_days": "",
            "key_data": "",
            "key_file": SimpleUploadedFile("partner.gpg", partner.export_secret("p4ss", armor=False)),
            "passphrase": "p4ss",
            "passphrase_again": "",
        },
    )

    assert response.status_code == 302, response.content.decode()[:1500]
    key = PgpKey.objects.get(name="partner pair, binary")
    assert key.fingerprint == fingerprint and key.key_type == "key_pair"
    assert json.loads(keyring().open_text(key.private_key_data))["passphrase"] == "p4ss"


def test_import_of_a_protected_key_pair_without_its_passphrase_is_e4001(gpg_cli: Callable[[str], GpgCli]) -> None:
    partner = gpg_cli("partner")
    partner.generate("Partner <partner@example.com>", "p4ss")
    with pytest.raises(WrongPassphrase, match=r"\[E4001\] wrong or missing passphrase"):
        pgp.load(partner.export_secret("p4ss"), None)


def test_import_an_expired_key_pair_checks_its_passphrase(lapsed_key_holder: tuple[GpgCli, str]) -> None:
    holder, fingerprint = lapsed_key_holder
    private = holder.export_secret("old pass")
    with pytest.raises(WrongPassphrase, match=r"\[E4001\]"):
        pgp.load(private, "not the pass")

    key = import_pgp_key("lapsed pair", private, "old pass", by="admin")

    assert key.fingerprint == fingerprint and key.key_type == "key_pair"
    assert key.expires_at < timezone.now()


def sign_job(data_dir: Path, key: PgpKey) -> object:
    (data_dir / "doc.txt").write_text("signed by an old key\n")
    return run_inline(
        make_job([("pgp.sign", {"input_path": str(data_dir / "doc.txt"), "signing_key_id": str(key.pk)})])
    )


def test_signing_with_an_expired_key_is_refused(data_dir: Path, lapsed_key_holder: tuple[GpgCli, str]) -> None:
    holder, _ = lapsed_key_holder
    key = import_pgp_key("lapsed pair", holder.export_secret("old pass"), "old pass", by="admin")
    assert key.status == "active"  # the daily expiry scan has not run yet

    execution = sign_job(data_dir, key)

    assert execution.state == "failed"
    assert "[E4003]" in execution.error_message and "expired at" in execution.error_message
    assert not (data_dir / "doc.txt.asc").exists()


def test_gpg_refuses_to_sign_with_an_expired_key_the_key_store_counts_as_current(
    data_dir: Path, lapsed_key_holder: tuple[GpgCli, str]
) -> None:
    holder, _ = lapsed_key_holder
    key = import_pgp_key("lapsed pair", holder.export_secret("old pass"), "old pass", by="admin")
    PgpKey.objects.filter(pk=key.pk).update(expires_at=None)  # a stale row: only gpg knows better

    execution = sign_job(data_dir, PgpKey.objects.get(pk=key.pk))

    assert execution.state == "failed" and "signing doc.txt failed" in execution.error_message
    assert not (data_dir / "doc.txt.asc").exists()


def test_verify_fails_on_a_signature_by_a_key_that_has_since_expired(
    data_dir: Path, lapsed_key_holder: tuple[GpgCli, str]
) -> None:
    holder, fingerprint = lapsed_key_holder
    (data_dir / "doc.txt").write_text("signed while the key was valid\n")
    holder.run(
        "--local-user",
        fingerprint,
        "--armor",
        "--output",
        str(data_dir / "doc.txt.asc"),
        "--detach-sign",
        str(data_dir / "doc.txt"),
        passphrase="old pass",
        at=time.time() - 9 * DAY,
    )
    import_pgp_key("lapsed public", holder.export_public(), None, by="admin")

    execution = run_inline(
        make_job(
            [("pgp.verify", {"input_path": str(data_dir / "doc.txt"), "signature_path": str(data_dir / "doc.txt.asc")})]
        )
    )

    assert execution.state == "failed"
    assert "signature on doc.txt is not valid: signing key has expired" in execution.error_message


def test_decrypt_requiring_a_signature_fails_on_a_file_signed_by_an_unknown_key(
    data_dir: Path, gpg_cli: Callable[[str], GpgCli]
) -> None:
    ours = generate_pgp_key("ours", "rsa_2048", by="admin")
    stranger = gpg_cli("stranger")
    stranger_fingerprint = stranger.generate("Stranger <stranger@example.com>", "p4ss")
    stranger.run("--import", input=ours.public_key_data.encode())
    stranger.run(
        "--local-user",
        stranger_fingerprint,
        "--recipient",
        ours.fingerprint,
        "--output",
        str(data_dir / "note.txt.pgp"),
        "--sign",
        "--encrypt",
        input=b"who sent this?",
        passphrase="p4ss",
    )

    execution = run_inline(
        make_job(
            [
                (
                    "pgp.decrypt",
                    {
                        "input_path": str(data_dir / "note.txt.pgp"),
                        "private_key_id": str(ours.pk),
                        "verify_signature": True,
                    },
                )
            ]
        )
    )

    assert execution.state == "failed"
    assert "has no valid signature from a known key (unknown signer)" in execution.error_message
    assert not (data_dir / "note.txt").exists()


def test_decrypt_without_requiring_a_signature_accepts_a_file_signed_by_an_unknown_key(
    data_dir: Path, gpg_cli: Callable[[str], GpgCli]
) -> None:
    ours = generate_pgp_key("ours", "ecc_p256", by="admin")
    stranger = gpg_cli("stranger")
    stranger_fingerprint = stranger.generate("Stranger <stranger@example.com>", "p4ss")
    stranger.run("--import", input=ours.public_key_data.encode())
    stranger.run(
        "--local-user",
        stranger_fingerprint,
        "--recipient",
        ours.fingerprint,
        "--output",
        str(data_dir / "note.txt.pgp"),
        "--sign",
        "--encrypt",
        input=b"signed by someone we do not know",
        passphrase="p4ss",
    )

    # gpg exits with status 2 when it cannot check a signature; the plaintext is still whole.
    execution = run_inline(
        make_job([("pgp.decrypt", {"input_path": str(data_dir / "note.txt.pgp"), "private_key_id": str(ours.pk)})])
    )

    assert execution.state == "completed", execution.error_message
    assert (data_dir / "note.txt").read_bytes() == b"signed by someone we do not know"
    assert execution.context_snapshot["values"]["0.signature"][0]["valid"] is False


def test_encrypted_and_inline_signed_files_do_not_carry_the_source_file_name(
    data_dir: Path, gpg_cli: Callable[[str], GpgCli]
) -> None:
    key = generate_pgp_key("names", "ecc_p256", by="admin")
    source = str(data_dir / "internal-name.txt")
    (data_dir / "internal-name.txt").write_text("payload")
    execution = run_inline(
        make_job(
            [
                ("pgp.encrypt", {"input_path": source, "recipient_key_ids": str(key.pk)}),
                ("pgp.sign", {"input_path": source, "signing_key_id": str(key.pk), "mode": "inline"}),
            ]
        )
    )
    assert execution.state == "completed", execution.error_message
    holder = gpg_cli("holder")
    secret = json.loads(keyring().open_text(PgpKey.objects.get(pk=key.pk).private_key_data))["armored"]
    holder.run("--import", input=secret.encode())

    for message in ("internal-name.txt.pgp", "internal-name.txt.gpg"):
        packets = holder.run("--list-packets", str(data_dir / message)).stdout.decode()
        assert 'name=""' in packets and "internal-name" not in packets


def test_keys_exported_through_the_console_round_trip_with_the_gpg_command_line(
    client: Client, django_user_model, data_dir: Path, gpg_cli: Callable[[str], GpgCli]
) -> None:
    key = generate_pgp_key("exchange", "rsa_3072", by="admin", passphrase="export me")
    public = login(client, django_user_model, "Viewer").get(reverse("admin:keystore_pgpkey_public", args=[key.pk]))
    private = login(Client(), django_user_model, "Admin").post(
        reverse("admin:keystore_pgpkey_private", args=[key.pk]), {"confirm": key.short_key_id}
    )
    assert public.status_code == 200 and private.status_code == 200

    partner = gpg_cli("partner")  # holds only the public key
    partner.run("--import", input=public.content)
    holder = gpg_cli("holder")  # holds the exported private key
    holder.run("--import", input=private.content)
    partner.run(
        "--recipient", key.fingerprint, "--output", str(data_dir / "inbound.txt.pgp"), "--encrypt", input=b"inbound"
    )
    (data_dir / "signed.txt").write_text("signed outside Courier\n")
    holder.run(
        "--local-user",
        key.fingerprint,
        "--output",
        str(data_dir / "signed.txt.sig"),
        "--detach-sign",
        str(data_dir / "signed.txt"),
        passphrase="export me",
    )
    (data_dir / "outbound.txt").write_text("outbound")

    execution = run_inline(
        make_job(
            [
                ("pgp.decrypt", {"input_path": str(data_dir / "inbound.txt.pgp"), "private_key_id": str(key.pk)}),
                ("pgp.encrypt", {"input_path": str(data_dir / "outbound.txt"), "recipient_key_ids": str(key.pk)}),
                (
                    "pgp.verify",
                    {
                        "input_path": str(data_dir / "signed.txt"),
                        "signature_path": str(data_dir / "signed.txt.sig"),
                        "expected_signer": str(key.pk),
                    },
                ),
            ]
        )
    )

    assert execution.state == "completed", execution.error_message
    assert (data_dir / "inbound.txt").read_text() == "inbound"
    outbound = holder.run("--decrypt", str(data_dir / "outbound.txt.pgp"), passphrase="export me")
    assert outbound.stdout == b"outbound"
