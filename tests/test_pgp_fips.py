"""FIPS mode on the receiving side: decrypt and verify refuse key pairs, ciphers and digests outside
RSA 2048+ / NIST curves, AES and SHA-2, with real gpg on both sides."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from keystore.pgp import fips_message_problem
from keystore.services import export_private_pgp_key, generate_pgp_key
from system.models import SystemSetting
from tests import test_pgp_steps
from tests.engine_support import make_job, run_inline

pytestmark = pytest.mark.django_db
data_dir = test_pgp_steps.data_dir  # the same data folder fixture (autouse)


def fips(enabled: bool) -> None:
    SystemSetting.objects.filter(key="security.fips_mode_enabled").update(value="true" if enabled else "false")


def gpg(home: Path, *args: str, data: bytes | None = None) -> None:
    subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", "--trust-model", "always", *args],
        input=data,
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_a_partner_file_encrypted_with_cast5_is_refused_in_fips_mode_and_decrypts_without_it(
    data_dir: Path, tmp_path: Path, gpg_home: Callable[[str], Path]
) -> None:
    ours = generate_pgp_key("ours", "rsa_2048", by="admin")
    partner = gpg_home("partner")
    gpg(partner, "--import", data=ours.public_key_data.encode())
    (tmp_path / "feed.csv").write_text("id,amount\n1,10\n")
    encrypted = data_dir / "feed.csv.pgp"
    gpg(partner, "--cipher-algo", "CAST5", "--recipient", ours.fingerprint, "--output", str(encrypted),
        "--encrypt", str(tmp_path / "feed.csv"))  # fmt: skip
    job = make_job([("pgp.decrypt", {"input_path": str(encrypted), "output_path": str(data_dir / "plain") + "/"})])

    fips(True)
    refused = run_inline(job)
    assert refused.state == "failed"
    assert "feed.csv.pgp is encrypted with CAST5, not allowed in FIPS mode" in refused.error_message
    assert not (data_dir / "plain" / "feed.csv").exists()
    assert [path.name for path in (data_dir / "plain").iterdir()] == []  # no partial plaintext either

    fips(False)
    decrypted = run_inline(job)
    assert decrypted.state == "completed", decrypted.error_message
    assert (data_dir / "plain" / "feed.csv").read_text() == "id,amount\n1,10\n"


def test_a_sha1_signature_is_refused_in_fips_mode(
    data_dir: Path, tmp_path: Path, gpg_home: Callable[[str], Path]
) -> None:
    partner_key = generate_pgp_key("partner signer", "rsa_2048", by="admin")
    partner = gpg_home("partner")
    gpg(partner, "--import", data=export_private_pgp_key(partner_key, by="admin").encode())
    (data_dir / "statement.txt").write_text("balance 100\n")
    for digest in ("SHA1", "SHA256"):
        gpg(partner, "--digest-algo", digest, "--local-user", partner_key.fingerprint, "--detach-sign", "--output",
            str(data_dir / f"statement.{digest}.sig"), str(data_dir / "statement.txt"))  # fmt: skip

    def verify(digest: str):
        return run_inline(
            make_job(
                [
                    (
                        "pgp.verify",
                        {
                            "input_path": str(data_dir / "statement.txt"),
                            "signature_path": str(data_dir / f"statement.{digest}.sig"),
                        },
                    )
                ]
            )
        )

    fips(True)
    refused = verify("SHA1")
    assert refused.state == "failed" and "statement.txt is signed with SHA-1, not allowed in FIPS mode" in (
        refused.error_message
    )
    assert verify("SHA256").state == "completed"
    fips(False)
    assert verify("SHA1").state == "completed"


def run_step(type_key: str, **configuration: str):
    return run_inline(make_job([(type_key, configuration)]))


def test_fips_mode_decrypts_only_with_approved_key_pairs(data_dir: Path) -> None:
    fips(False)
    modern = generate_pgp_key("curve key", "ecc_curve25519", by="admin")
    (data_dir / "a.txt").write_text("for the curve key")
    encrypted = run_step("pgp.encrypt", input_path=str(data_dir / "a.txt"), recipient_key_ids=str(modern.pk))
    assert encrypted.state == "completed", encrypted.error_message

    fips(True)
    named = run_step("pgp.decrypt", input_path=str(data_dir / "a.txt.pgp"), private_key_id=str(modern.pk))
    assert named.state == "failed" and "(ecc_curve25519) is not allowed in FIPS mode" in named.error_message
    anyone = run_step("pgp.decrypt", input_path=str(data_dir / "a.txt.pgp"))
    assert anyone.state == "failed"
    assert "no usable key pair allowed in FIPS mode (RSA 2048+, NIST P-256/P-384)" in anyone.error_message


@pytest.mark.parametrize(
    ("status", "problem"),
    [
        ("[GNUPG:] DECRYPTION_INFO 2 9 0", None),
        ("[GNUPG:] DECRYPTION_INFO 2 3", "encrypted with CAST5"),
        ("[GNUPG:] DECRYPTION_INFO 2 2 0", "encrypted with 3DES"),
        ("[GNUPG:] VALIDSIG AB 2026-12-04 1 0 4 0 1 8 00 AB", None),
        ("[GNUPG:] VALIDSIG AB 2026-12-04 1 0 4 0 1 2 00 AB", "signed with SHA-1"),
        ("[GNUPG:] VALIDSIG AB 2026-12-04 1 0 4 0 1 99 00 AB", "signed with digest 99"),
    ],
)
def test_fips_message_problem_reads_gpgs_status_lines(status: str, problem: str | None) -> None:
    class Result:
        stderr = f"[GNUPG:] NEWSIG\n{status}\n[GNUPG:] END_DECRYPTION\n"

    assert fips_message_problem(Result()) == problem
