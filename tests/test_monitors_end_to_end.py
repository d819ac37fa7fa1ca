"""End to end: a file dropped in a local inbox is zipped, PGP-encrypted and uploaded over SFTP by a bound job."""

from __future__ import annotations

import io
import uuid
import zipfile
from pathlib import Path

import pytest

from keystore.services import generate_pgp_key
from monitors import services
from tests.engine_support import make_job, run_inline
from tests.servers import sftp_connection, sftp_folder, ssh_server
from tests.test_monitors_support import bind, drop, make_monitor, run_queued

pytestmark = pytest.mark.django_db

INVOICE = "invoice,amount\nINV-1,100\nINV-2,250\n" * 200


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    with ssh_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path: Path) -> Path:
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    (tmp_path / "data" / "inbox").mkdir(parents=True)
    return settings.COURIER_DATA_DIR


def decrypt(encrypted: bytes, data_dir: Path) -> bytes:
    """Decrypt with Courier's own pgp.decrypt step (the private key lives in the key store)."""
    received = data_dir / "received" / "bundle.zip.pgp"
    received.parent.mkdir()
    received.write_bytes(encrypted)
    execution = run_inline(make_job([("pgp.decrypt", {"input_path": str(received)})]))
    assert execution.state == "completed", execution.error_message
    return (data_dir / "received" / "bundle.zip").read_bytes()


def test_a_file_dropped_in_the_inbox_arrives_zipped_and_encrypted_on_the_partner_server(sshd, data_dir: Path) -> None:
    partner_key = generate_pgp_key("partner", "ecc_p256", by="admin")
    connection = sftp_connection(sshd)
    partner_inbox = sftp_folder(sshd, f"partner-in-{uuid.uuid4().hex[:6]}")
    job = make_job(
        [
            (
                "file.zip",
                {"source_path": "context:monitor.triggered_files[0].path", "output_path": "bundle.zip"},
            ),
            ("pgp.encrypt", {"input_path": "context:0.archive_path", "recipient_key_ids": str(partner_key.pk)}),
            (
                "sftp.upload",
                {
                    "connection_id": str(connection.pk),
                    "local_path": "context:1.encrypted_files",
                    "remote_path": f"{partner_inbox.name}/",
                },
            ),
        ],
        name="send invoices to partner",
    )
    monitor = make_monitor(data_dir / "inbox", batch_mode=False)
    bind(monitor, job)
    drop(data_dir / "inbox", "invoices-2026-11.csv", INVOICE)

    [execution_id] = services.poll(monitor.pk).executions
    execution = run_queued(execution_id)

    assert execution.state == "completed", execution.error_message
    uploaded = partner_inbox / "bundle.zip.pgp"
    assert [path.name for path in partner_inbox.iterdir()] == ["bundle.zip.pgp"]
    encrypted = uploaded.read_bytes()
    assert b"INV-1" not in encrypted and b"invoices-2026-11.csv" not in encrypted
    with zipfile.ZipFile(io.BytesIO(decrypt(encrypted, data_dir))) as archive:
        assert archive.namelist() == ["invoices-2026-11.csv"]
        assert archive.read("invoices-2026-11.csv").decode() == INVOICE
