"""pgp.encrypt / pgp.decrypt in jobs, with real gpg and keys from the key store."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from audit.models import AuditLogEntry
from courier_site.envelope import keyring
from jobs.errors import Cancelled
from jobs.steps.base import CancelToken, StepContext, StepType, get_step_type
from keystore import lifecycle
from keystore.models import PgpKey
from keystore.services import generate_pgp_key
from system.models import SystemSetting
from tests.engine_support import make_job, run_inline
from tests.step_support import make_context

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    (tmp_path / "data").mkdir()
    return settings.COURIER_DATA_DIR


def test_encrypt_to_two_recipients_signed_then_decrypt_and_verify(data_dir: Path) -> None:
    alice = generate_pgp_key("alice", "ecc_p256", by="admin")
    bob = generate_pgp_key("bob", "rsa_2048", by="admin")
    (data_dir / "invoice.csv").write_text("invoice,amount\nINV-1,100\n")
    job = make_job(
        [
            (
                "pgp.encrypt",
                {
                    "input_path": str(data_dir / "invoice.csv"),
                    "recipient_key_ids": [str(alice.pk), str(bob.pk)],
                    "signing_key_id": str(alice.pk),
                    "output_path": str(data_dir / "out") + "/",
                },
            ),
            (
                "pgp.decrypt",
                {
                    "input_path": "context:0.encrypted_files",
                    "private_key_id": str(bob.pk),
                    "output_path": str(data_dir / "plain") + "/",
                    "verify_signature": True,
                },
            ),
        ]
    )
    execution = run_inline(job)

    assert execution.state == "completed", execution.error_message
    encrypted = (data_dir / "out" / "invoice.csv.pgp").read_bytes()
    assert b"INV-1" not in encrypted
    assert (data_dir / "plain" / "invoice.csv").read_text() == "invoice,amount\nINV-1,100\n"
    signature = execution.context_snapshot["values"]["1.signature"][0]
    assert signature["valid"] and signature["signer_fingerprint"] == alice.fingerprint


def test_a_file_encrypted_by_the_gpg_command_line_decrypts_in_courier(
    data_dir: Path, tmp_path: Path, gpg_home: Callable[[str], Path]
) -> None:
    ours = generate_pgp_key("ours", "rsa_3072", by="admin")
    home = gpg_home("partner-gpg")
    subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--import"],
        input=ours.public_key_data.encode(),
        check=True,
        capture_output=True,
    )
    (tmp_path / "report.txt").write_text("from the partner")
    subprocess.run(
        [
            "gpg",
            "--homedir",
            str(home),
            "--batch",
            "--trust-model",
            "always",
            "--recipient",
            ours.fingerprint,
            "--output",
            str(data_dir / "report.txt.gpg"),
            "--encrypt",
            str(tmp_path / "report.txt"),
        ],
        check=True,
        capture_output=True,
    )
    job = make_job([("pgp.decrypt", {"input_path": str(data_dir / "report.txt.gpg")})])
    execution = run_inline(job)
    assert execution.state == "completed", execution.error_message
    assert (data_dir / "report.txt").read_text() == "from the partner"


def files_in(directory: Path) -> list[str]:
    """Names of the files in directory, hidden ones (a leftover temporary file) included."""
    return sorted(path.name for path in directory.iterdir() if path.is_file())


def test_tampered_ciphertext_fails_the_step(data_dir: Path) -> None:
    key = generate_pgp_key("k", "ecc_p256", by="admin")
    (data_dir / "a.txt").write_text("secret payload " * 100)
    run_inline(make_job([("pgp.encrypt", {"input_path": str(data_dir / "a.txt"), "recipient_key_ids": str(key.pk)})]))
    blob = bytearray((data_dir / "a.txt.pgp").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (data_dir / "b.txt.pgp").write_bytes(bytes(blob))
    execution = run_inline(make_job([("pgp.decrypt", {"input_path": str(data_dir / "b.txt.pgp")})]))
    assert execution.state == "failed" and "decryption of b.txt.pgp failed" in execution.error_message
    assert not (data_dir / "b.txt").exists()
    assert files_in(data_dir) == ["a.txt", "a.txt.pgp", "b.txt.pgp"]  # no temporary file left either


def test_revoked_keys_cannot_be_encrypted_to_and_retired_ones_hand_over(data_dir: Path) -> None:
    old, new = (
        generate_pgp_key("old", "ecc_p256", by="admin"),
        generate_pgp_key("new", "ecc_p256", by="admin"),
    )
    (data_dir / "a.txt").write_text("x")
    PgpKey.objects.filter(pk=old.pk).update(successor_key=new)
    lifecycle.retire(PgpKey.objects.get(pk=old.pk), by="admin")
    handed = run_inline(
        make_job([("pgp.encrypt", {"input_path": str(data_dir / "a.txt"), "recipient_key_ids": str(old.pk)})])
    )
    assert handed.state == "completed", handed.error_message
    assert "successor" in handed.context_snapshot["values"]["0.notes"][0]

    lifecycle.revoke(PgpKey.objects.get(pk=new.pk), by="admin")
    refused = run_inline(
        make_job([("pgp.encrypt", {"input_path": str(data_dir / "a.txt"), "recipient_key_ids": str(new.pk)})])
    )
    assert refused.state == "failed" and "[E4003]" in refused.error_message


@pytest.mark.parametrize("mode", ["detached", "inline", "clear"])
def test_sign_then_verify_each_mode(data_dir: Path, mode: str) -> None:
    signer = generate_pgp_key(f"signer-{mode}", "ecc_p384", by="admin")
    (data_dir / "statement.txt").write_text("balance 100\n")
    verify = {"input_path": "context:0.signature_file", "expected_signer": str(signer.pk)}
    if mode == "detached":
        verify = {
            "input_path": str(data_dir / "statement.txt"),
            "signature_path": "context:0.signature_file",
            "expected_signer": signer.fingerprint,
        }
    job = make_job(
        [
            (
                "pgp.sign",
                {"input_path": str(data_dir / "statement.txt"), "signing_key_id": str(signer.pk), "mode": mode},
            ),
            ("pgp.verify", verify),
        ]
    )
    execution = run_inline(job)
    assert execution.state == "completed", execution.error_message
    assert execution.context_snapshot["values"]["1.signer_fingerprint"] == signer.fingerprint


def test_verify_fails_on_tampered_data_unknown_and_revoked_signers(data_dir: Path) -> None:
    signer = generate_pgp_key("signer", "ecc_p256", by="admin")
    (data_dir / "doc.txt").write_text("original")
    run_inline(make_job([("pgp.sign", {"input_path": str(data_dir / "doc.txt"), "signing_key_id": str(signer.pk)})]))
    detached = {"input_path": str(data_dir / "doc.txt"), "signature_path": str(data_dir / "doc.txt.asc")}

    (data_dir / "doc.txt").write_text("tampered")
    tampered = run_inline(make_job([("pgp.verify", detached)]))
    assert tampered.state == "failed" and "not valid" in tampered.error_message

    (data_dir / "doc.txt").write_text("original")
    lifecycle.revoke(PgpKey.objects.get(pk=signer.pk), by="admin")
    revoked = run_inline(make_job([("pgp.verify", detached)]))
    assert revoked.state == "failed" and "revoked" in revoked.error_message

    lifecycle.delete(PgpKey.all_objects.get(pk=signer.pk), by="admin")
    unknown = run_inline(make_job([("pgp.verify", detached)]))
    assert unknown.state == "failed" and "unknown signer" in unknown.error_message


@pytest.mark.parametrize("algorithm", ["rsa_2048", "rsa_3072", "rsa_4096", "ecc_curve25519", "ecc_p256", "ecc_p384"])
def test_round_trip_for_every_algorithm(data_dir: Path, algorithm: str, settings) -> None:
    SystemSetting.objects.filter(key="security.fips_mode_enabled").update(value="false")
    key = generate_pgp_key(f"k-{algorithm}", algorithm, by="admin")
    (data_dir / "f.bin").write_bytes(bytes(range(256)) * 100)
    job = make_job(
        [
            ("pgp.encrypt", {"input_path": str(data_dir / "f.bin"), "recipient_key_ids": str(key.pk), "armor": True}),
            (
                "pgp.decrypt",
                {
                    "input_path": "context:0.encrypted_files",
                    "private_key_id": str(key.pk),
                    "output_path": str(data_dir / "back.bin"),
                },
            ),
        ]
    )
    execution = run_inline(job)
    assert execution.state == "completed", execution.error_message
    assert (data_dir / "back.bin").read_bytes() == bytes(range(256)) * 100


def test_fips_mode_refuses_curve25519_keys(data_dir: Path) -> None:
    key = generate_pgp_key("modern", "ecc_curve25519", by="admin")
    (data_dir / "a.txt").write_text("x")
    execution = run_inline(
        make_job([("pgp.encrypt", {"input_path": str(data_dir / "a.txt"), "recipient_key_ids": str(key.pk)})])
    )
    assert execution.state == "failed" and "not allowed in FIPS mode" in execution.error_message


def test_a_file_encrypted_by_courier_decrypts_with_the_gpg_command_line(
    data_dir: Path, gpg_home: Callable[[str], Path]
) -> None:
    key = generate_pgp_key("for-partner", "rsa_2048", by="admin")
    (data_dir / "out.txt").write_text("to the partner")
    assert (
        run_inline(
            make_job([("pgp.encrypt", {"input_path": str(data_dir / "out.txt"), "recipient_key_ids": str(key.pk)})])
        ).state
        == "completed"
    )
    home = gpg_home("partner")
    secret = json.loads(keyring().open_text(PgpKey.objects.get(pk=key.pk).private_key_data))["armored"]
    subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--import"], input=secret.encode(), check=True, capture_output=True
    )
    result = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--decrypt", str(data_dir / "out.txt.pgp")],
        capture_output=True,
        check=True,
    )
    assert result.stdout == b"to the partner"


def test_every_use_of_a_key_is_audited(data_dir: Path) -> None:
    key = generate_pgp_key("audited", "ecc_p256", by="admin")
    (data_dir / "a.txt").write_text("x")
    job = make_job(
        [
            (
                "pgp.encrypt",
                {
                    "input_path": str(data_dir / "a.txt"),
                    "recipient_key_ids": str(key.pk),
                    "signing_key_id": str(key.pk),
                },
            ),
            (
                "pgp.decrypt",
                {
                    "input_path": "context:0.encrypted_files",
                    "private_key_id": str(key.pk),
                    "output_path": str(data_dir / "b.txt"),
                },
            ),
            ("pgp.sign", {"input_path": str(data_dir / "b.txt"), "signing_key_id": str(key.pk)}),
            ("pgp.verify", {"input_path": str(data_dir / "b.txt"), "signature_path": "context:2.signature_file"}),
        ]
    )
    assert run_inline(job).state == "completed"
    operations = set(AuditLogEntry.objects.filter(entity_id=key.pk).values_list("operation", flat=True))
    assert {"generated", "used_to_encrypt", "used_to_sign", "used_to_decrypt", "used_to_verify"} <= operations


def encrypt_then_decrypt(data_dir: Path, recipient: PgpKey, decrypt: dict[str, object]) -> object:
    """Runs a job that encrypts payload.txt to recipient, then decrypts it with the given options."""
    (data_dir / "payload.txt").write_text("quarterly figures\n")
    return run_inline(
        make_job(
            [
                ("pgp.encrypt", {"input_path": str(data_dir / "payload.txt"), "recipient_key_ids": str(recipient.pk)}),
                (
                    "pgp.decrypt",
                    {"input_path": "context:0.encrypted_files", "output_path": str(data_dir / "back.txt"), **decrypt},
                ),
            ]
        )
    )


def test_a_generated_key_with_a_passphrase_decrypts_in_a_step(data_dir: Path) -> None:
    key = generate_pgp_key("protected", "rsa_2048", by="admin", passphrase="open sesame")
    execution = encrypt_then_decrypt(data_dir, key, {"private_key_id": str(key.pk)})
    assert execution.state == "completed", execution.error_message
    assert (data_dir / "back.txt").read_text() == "quarterly figures\n"


def test_a_generated_key_with_a_passphrase_signs_in_a_step(data_dir: Path) -> None:
    key = generate_pgp_key("protected signer", "ecc_p256", by="admin", passphrase="open sesame")
    (data_dir / "statement.txt").write_text("balance 100\n")
    execution = run_inline(
        make_job(
            [
                ("pgp.sign", {"input_path": str(data_dir / "statement.txt"), "signing_key_id": str(key.pk)}),
                (
                    "pgp.verify",
                    {
                        "input_path": str(data_dir / "statement.txt"),
                        "signature_path": "context:0.signature_file",
                        "expected_signer": str(key.pk),
                    },
                ),
            ]
        )
    )
    assert execution.state == "completed", execution.error_message
    assert execution.context_snapshot["values"]["1.verify_status"] == "valid"


def test_decrypt_audits_only_the_key_that_decrypted(data_dir: Path) -> None:
    bystander = generate_pgp_key("bystander", "ecc_p256", by="admin")
    recipient = generate_pgp_key("recipient", "ecc_p256", by="admin")
    execution = encrypt_then_decrypt(data_dir, recipient, {})  # no private_key_id: every key pair is offered
    assert execution.state == "completed", execution.error_message
    decrypted = AuditLogEntry.objects.filter(operation="used_to_decrypt")
    assert [str(entry.entity_id) for entry in decrypted] == [str(recipient.pk)]
    assert not AuditLogEntry.objects.filter(entity_id=bystander.pk, operation="used_to_decrypt").exists()


def test_decrypt_finds_the_right_key_among_key_pairs_with_different_passphrases(data_dir: Path) -> None:
    generate_pgp_key("first", "ecc_p256", by="admin", passphrase="first passphrase")
    second = generate_pgp_key("second", "ecc_p256", by="admin", passphrase="second passphrase")
    execution = encrypt_then_decrypt(data_dir, second, {})
    assert execution.state == "completed", execution.error_message
    assert (data_dir / "back.txt").read_text() == "quarterly figures\n"


def test_decrypt_requiring_a_signature_fails_on_an_unsigned_file(data_dir: Path) -> None:
    key = generate_pgp_key("k", "ecc_p256", by="admin")
    execution = encrypt_then_decrypt(data_dir, key, {"private_key_id": str(key.pk), "verify_signature": True})
    assert execution.state == "failed"
    assert "has no valid signature from a known key (no signature)" in execution.error_message
    assert not (data_dir / "back.txt").exists()


def cancel_once_streaming(step: StepType, config: dict, context: StepContext, target: Path) -> tuple[float, bool]:
    """Runs the step and cancels it once 32 MiB went through; returns the seconds it took to stop after
    the request, and whether target could be seen when the request was made."""
    requested_at: list[float] = []
    target_seen: list[bool] = []
    finished = threading.Event()

    def cancel_when_streaming() -> None:
        while context.progress.bytes_done < 32 * 1024 * 1024 and not finished.is_set():
            time.sleep(0.005)
        target_seen.append(target.exists())
        requested_at.append(time.monotonic())
        context.cancel.request("cancel")

    canceller = threading.Thread(target=cancel_when_streaming)
    canceller.start()
    try:
        with pytest.raises(Cancelled):
            step.execute(config, context, context.cancel)
        stopped_at = time.monotonic()
    finally:
        finished.set()
        canceller.join()
    return stopped_at - requested_at[0], target_seen[0]


def sparse_file(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)  # sparse: gigabytes to stream without gigabytes on disk
    return path


def test_cancel_during_a_large_encrypt_stops_within_a_second_and_leaves_no_output(
    data_dir: Path, tmp_path: Path
) -> None:
    key = generate_pgp_key("bulk", "rsa_2048", by="admin")
    size = 1024 * 1024 * 1024
    source = sparse_file(data_dir / "large.bin", size)
    step = get_step_type("pgp.encrypt")
    config = step.with_defaults({"input_path": str(source), "recipient_key_ids": str(key.pk)})
    context = make_context(tmp_path, CancelToken())
    context.prepared = step.prepare(config)

    seconds_to_stop, target_seen = cancel_once_streaming(step, config, context, data_dir / "large.bin.pgp")

    assert seconds_to_stop < 1.0
    assert context.progress.bytes_done < size // 2
    assert not target_seen
    assert files_in(data_dir) == ["large.bin"]


def test_cancel_during_a_large_decrypt_stops_within_a_second_and_leaves_no_output(
    data_dir: Path, tmp_path: Path
) -> None:
    key = generate_pgp_key("bulk", "ecc_p256", by="admin")
    sparse_file(data_dir / "large.bin", 256 * 1024 * 1024)
    encrypted = run_inline(
        make_job([("pgp.encrypt", {"input_path": str(data_dir / "large.bin"), "recipient_key_ids": str(key.pk)})])
    )
    assert encrypted.state == "completed", encrypted.error_message
    (data_dir / "large.bin").unlink()
    step = get_step_type("pgp.decrypt")
    config = step.with_defaults({"input_path": str(data_dir / "large.bin.pgp"), "private_key_id": str(key.pk)})
    context = make_context(tmp_path, CancelToken())
    context.prepared = step.prepare(config)

    seconds_to_stop, target_seen = cancel_once_streaming(step, config, context, data_dir / "large.bin")

    assert seconds_to_stop < 1.0
    assert not target_seen
    assert files_in(data_dir) == ["large.bin.pgp"]


def test_cancel_during_a_large_verify_stops_within_a_second(data_dir: Path, tmp_path: Path) -> None:
    signer = generate_pgp_key("bulk-signer", "ecc_p256", by="admin")
    size = 1024 * 1024 * 1024
    source = sparse_file(data_dir / "large.bin", size)
    signed = run_inline(make_job([("pgp.sign", {"input_path": str(source), "signing_key_id": str(signer.pk)})]))
    assert signed.state == "completed", signed.error_message
    step = get_step_type("pgp.verify")
    config = step.with_defaults({"input_path": str(source), "signature_path": str(data_dir / "large.bin.asc")})
    context = make_context(tmp_path, CancelToken())
    context.prepared = step.prepare(config)

    seconds_to_stop, _ = cancel_once_streaming(step, config, context, data_dir / "large.bin.asc")

    assert seconds_to_stop < 1.0
    assert 32 * 1024 * 1024 <= context.progress.bytes_done < size
    assert context.progress.bytes_total == size
    assert files_in(data_dir) == ["large.bin", "large.bin.asc"]


def test_encrypt_reports_the_bytes_of_every_file_against_their_total(data_dir: Path, tmp_path: Path) -> None:
    key = generate_pgp_key("progress", "ecc_p256", by="admin")
    (data_dir / "a.bin").write_bytes(b"a" * 300_000)
    (data_dir / "b.bin").write_bytes(b"b" * 200_000)
    step = get_step_type("pgp.encrypt")
    config = step.with_defaults({"input_path": str(data_dir / "*.bin"), "recipient_key_ids": str(key.pk)})
    context = make_context(tmp_path)
    context.prepared = step.prepare(config)

    result = step.execute(config, context, context.cancel)

    assert result.bytes_processed == 500_000
    assert (context.progress.bytes_done, context.progress.bytes_total) == (500_000, 500_000)
