"""FTP and FTPS against a real pyftpdlib server: transfers, TLS certificate policies."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

import pytest

from audit.models import AuditLogEntry
from connections.errors import AuthenticationFailed, ConnectionFailed, ConnectionPolicyRefused, HostKeyRejected
from connections.models import Connection
from connections.transfer.sessions import open_session
from tests.engine_support import make_job, run_inline, step_rows
from tests.servers import ftp_server

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    return settings.COURIER_DATA_DIR


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory):
    with ftp_server(tmp_path_factory.mktemp("ftp")) as server:
        yield server


@pytest.fixture(scope="module")
def explicit(tmp_path_factory: pytest.TempPathFactory):
    with ftp_server(tmp_path_factory.mktemp("ftps"), tls="explicit") as server:
        yield server


def ftp_connection(server, protocol: str = "ftp", password: str | None = None, **overrides) -> Connection:
    fields = {
        "name": f"ftp-{uuid.uuid4().hex[:6]}",
        "protocol": protocol,
        "host": "127.0.0.1",
        "port": server.port,
        "auth_method": "password",
        "username": server.user,
        **overrides,
    }
    connection = Connection(**fields)
    connection.set_password(password or server.password)
    connection.save()
    return connection


def pinned(server) -> str:
    return hashlib.sha256(server.certificate_der).hexdigest()


def transfer_job(connection: Connection, protocol: str) -> object:
    folder = f"drop-{uuid.uuid4().hex[:6]}"
    return make_job(
        [
            ("test.write", {"name": "orders.csv", "text": "po,qty\n" + "PO-1,5\n" * 500}),
            (
                f"{protocol}.upload",
                {"connection_id": str(connection.pk), "local_path": "context:0.path", "remote_path": f"{folder}/"},
            ),
            (f"{protocol}.list", {"connection_id": str(connection.pk), "remote_path": folder}),
            (
                f"{protocol}.download",
                {"connection_id": str(connection.pk), "remote_path": folder, "local_path": "back/"},
            ),
            (f"{protocol}.delete", {"connection_id": str(connection.pk), "remote_path": f"{folder}/orders.csv"}),
        ]
    ), folder


def test_plain_ftp_upload_list_download_delete(plain) -> None:
    connection = ftp_connection(plain)
    job, folder = transfer_job(connection, "ftp")
    execution = run_inline(job)

    assert execution.state == "completed", execution.error_message
    values = execution.context_snapshot["values"]
    assert values["2.file_count"] == 1
    assert Path(values["3.downloaded_files"][0]).name == "orders.csv"
    assert step_rows(execution)[3].bytes_processed == len("po,qty\n" + "PO-1,5\n" * 500)
    assert list((plain.root / folder).iterdir()) == []
    transfers = AuditLogEntry.objects.filter(entity_id=connection.pk)
    for operation in ("file_uploaded", "file_downloaded"):
        details = transfers.get(operation=operation).details
        assert details["bytes"] == len("po,qty\n" + "PO-1,5\n" * 500) and details["duration_ms"] > 0, details


def test_ftps_explicit_with_a_pinned_certificate(explicit) -> None:
    connection = ftp_connection(
        explicit, "ftps", tls_cert_policy="pinned_thumbprint", tls_pinned_thumbprint=pinned(explicit)
    )
    job, _ = transfer_job(connection, "ftps")
    execution = run_inline(job)
    assert execution.state == "completed", execution.error_message


def test_ftps_reports_certificate_details(explicit) -> None:
    connection = ftp_connection(
        explicit, "ftps", tls_cert_policy="pinned_thumbprint", tls_pinned_thumbprint=pinned(explicit)
    )
    session = open_session(connection)
    try:
        details = session.info.details
    finally:
        session.close()
    assert details["thumbprint_sha256"] == pinned(explicit)
    assert "courier-test-ftps" in details["subject"]
    assert details["tls_version"] in ("TLSv1.2", "TLSv1.3")


def test_wrong_pinned_thumbprint_is_refused(explicit) -> None:
    connection = ftp_connection(explicit, "ftps", tls_cert_policy="pinned_thumbprint", tls_pinned_thumbprint="ab" * 32)
    with pytest.raises(HostKeyRejected, match=r"\[E3002\].*does not match the pinned thumbprint"):
        open_session(connection)


def test_system_trust_refuses_a_self_signed_certificate(explicit) -> None:
    connection = ftp_connection(explicit, "ftps")
    with pytest.raises(ConnectionFailed, match=r"\[E3000\].*CERTIFICATE_VERIFY_FAILED"):
        open_session(connection)


def test_insecure_tls_works_and_is_audited(explicit) -> None:
    connection = ftp_connection(explicit, "ftps", tls_cert_policy="insecure")
    job, _ = transfer_job(connection, "ftps")
    execution = run_inline(job)
    assert execution.state == "completed", execution.error_message
    assert AuditLogEntry.objects.filter(entity_id=connection.pk, operation="insecure_tls_used").exists()


def test_wrong_ftp_password_is_e3001(plain) -> None:
    with pytest.raises(AuthenticationFailed, match=r"\[E3001\]"):
        open_session(ftp_connection(plain, password="not-the-password"))


def test_active_mode_transfers_work_too(plain) -> None:
    connection = ftp_connection(plain, passive_mode=False)
    job, _ = transfer_job(connection, "ftp")
    execution = run_inline(job)
    assert execution.state == "completed", execution.error_message


def test_implicit_tls_on_its_own_port(tmp_path: Path) -> None:
    from connections.transfer import ftp as ftp_transfer

    with ftp_server(tmp_path / "implicit", tls="implicit") as server:
        # Implicit TLS is chosen by port 990; the test server listens elsewhere, so lend it that role.
        original = ftp_transfer.IMPLICIT_TLS_PORT
        ftp_transfer.IMPLICIT_TLS_PORT = server.port
        try:
            connection = ftp_connection(
                server, "ftps", tls_cert_policy="pinned_thumbprint", tls_pinned_thumbprint=pinned(server)
            )
            job, _ = transfer_job(connection, "ftps")
            execution = run_inline(job)
        finally:
            ftp_transfer.IMPLICIT_TLS_PORT = original
    assert execution.state == "completed", execution.error_message


def test_tls_floor_above_what_the_server_offers_is_refused(tmp_path: Path) -> None:
    from tests import servers

    with servers.ftp_server(tmp_path / "old-tls", tls="explicit", max_tls="1.2") as server:
        connection = ftp_connection(server, "ftps", tls_cert_policy="insecure", tls_version_floor="1.3")
        with pytest.raises(ConnectionFailed, match=r"\[E3000\].*TLS"):
            open_session(connection)
        connection.tls_version_floor = "1.2"
        connection.save()
        open_session(connection).close()


def test_ftp_mkdir_step_creates_nested_directories(plain) -> None:
    connection = ftp_connection(plain)
    base = f"mkdir-{uuid.uuid4().hex[:6]}"
    job = make_job([("ftp.mkdir", {"connection_id": str(connection.pk), "remote_path": f"{base}/in/2024"})])
    execution = run_inline(job)

    assert execution.state == "completed", execution.error_message
    assert (plain.root / base / "in" / "2024").is_dir()


def test_ftp_rename_step_moves_a_remote_file(plain) -> None:
    connection = ftp_connection(plain)
    folder = plain.root / f"rename-{uuid.uuid4().hex[:6]}"
    (folder / "done").mkdir(parents=True)
    (folder / "report.tmp").write_bytes(b"totals\n")
    job = make_job(
        [
            (
                "ftp.rename",
                {
                    "connection_id": str(connection.pk),
                    "remote_path": f"{folder.name}/report.tmp",
                    "new_path": f"{folder.name}/done/report.csv",
                },
            )
        ]
    )
    execution = run_inline(job)

    assert execution.state == "completed", execution.error_message
    assert not (folder / "report.tmp").exists()
    assert (folder / "done" / "report.csv").read_bytes() == b"totals\n"


def test_ftp_rmdir_step_removes_an_empty_directory(plain) -> None:
    connection = ftp_connection(plain)
    folder = plain.root / f"rmdir-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    job = make_job([("ftp.rmdir", {"connection_id": str(connection.pk), "remote_path": folder.name})])
    execution = run_inline(job)

    assert execution.state == "completed", execution.error_message
    assert not folder.exists()


def wait_for_transfers(server, count: int, timeout: float = 5) -> list:
    """The server notes a transfer just after it answers 226, so the client may be a moment ahead."""
    deadline = time.monotonic() + timeout
    while len(server.transfers) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return server.transfers


def test_an_interrupted_ftp_download_resumes_from_the_partial_file(tmp_path: Path) -> None:
    from connections.transfer.sessions import SessionPool
    from jobs.steps.base import CancelToken, get_step_type
    from tests.step_support import make_context

    payload = os.urandom(3 * 1024 * 1024)
    already = 1_000_000  # a previous try stopped here
    with ftp_server(tmp_path / "resume") as server:
        (server.root / "statements").mkdir()
        (server.root / "statements" / "march.bin").write_bytes(payload)
        connection = ftp_connection(server)
        context = make_context(tmp_path)
        partial = context.work_dir / "downloads" / "march.bin.courier-part"
        partial.parent.mkdir(parents=True)
        partial.write_bytes(payload[:already])
        pool = SessionPool()
        try:
            pool.ensure(connection.pk)
            context.sessions = pool
            step = get_step_type("ftp.download")
            config = step.with_defaults({"connection_id": str(connection.pk), "remote_path": "statements"})
            result = step.execute(config, context, CancelToken())
            pool.flush_events()
        finally:
            pool.close()
        transfers = wait_for_transfers(server, 1)

    assert (context.work_dir / "downloads" / "march.bin").read_bytes() == payload
    assert not partial.exists()
    assert f"REST {already}" in server.commands
    assert [(transfer.command, transfer.bytes) for transfer in transfers] == [("RETR", len(payload) - already)]
    assert context.progress.bytes_done == len(payload) - already  # only the missing part travelled
    assert result.bytes_processed == len(payload)
    audited = AuditLogEntry.objects.get(entity_id=connection.pk, operation="file_downloaded").details
    assert audited["resumed_from"] == already and audited["bytes"] == len(payload)


def test_insecure_tls_is_refused_at_connect_time_in_production(explicit, settings) -> None:
    settings.IS_PRODUCTION = True
    # Saved without the console form, as an import or an SQL edit would.
    connection = ftp_connection(explicit, "ftps", tls_cert_policy="insecure")
    commands_before = len(explicit.commands)
    job, _ = transfer_job(connection, "ftps")
    execution = run_inline(job)

    assert execution.state == "failed"
    assert "[E3004]" in execution.error_message
    assert "security.insecure_trust_allow_production" in execution.error_message
    assert len(explicit.commands) == commands_before  # refused before a single command went out
    operations = set(AuditLogEntry.objects.filter(entity_id=connection.pk).values_list("operation", flat=True))
    assert "insecure_trust_refused" in operations and "insecure_tls_used" not in operations


def test_insecure_tls_connects_in_production_when_the_system_setting_allows_it(explicit, settings) -> None:
    from system.models import SystemSetting

    settings.IS_PRODUCTION = True
    SystemSetting.objects.filter(key="security.insecure_trust_allow_production").update(value="true")
    connection = ftp_connection(explicit, "ftps", tls_cert_policy="insecure")
    job, _ = transfer_job(connection, "ftps")
    execution = run_inline(job)

    assert execution.state == "completed", execution.error_message
    assert AuditLogEntry.objects.filter(entity_id=connection.pk, operation="insecure_tls_used").exists()


def test_testing_an_insecure_ftps_connection_is_audited_as_an_insecure_policy_use(explicit) -> None:
    from django.core.management import call_command

    connection = ftp_connection(explicit, "ftps", tls_cert_policy="insecure")
    call_command("test_connection", connection.name, "--json")
    used = AuditLogEntry.objects.get(entity_id=connection.pk, operation="insecure_tls_used")
    assert used.details["thumbprint"] == pinned(explicit)


def test_fips_mode_refuses_a_tls13_suite_other_than_aes_and_the_override_lifts_it(tmp_path: Path) -> None:
    with ftp_server(tmp_path / "chacha", tls="explicit", tls13_suites="TLS_CHACHA20_POLY1305_SHA256") as server:
        pin = {"tls_cert_policy": "pinned_thumbprint", "tls_pinned_thumbprint": pinned(server)}
        strict = ftp_connection(server, "ftps", **pin)
        with pytest.raises(ConnectionPolicyRefused, match=r"\[E3004\].*TLS_CHACHA20_POLY1305_SHA256.*FIPS mode"):
            open_session(strict)

        lifted = ftp_connection(server, "ftps", fips_override=True, **pin)
        session = open_session(lifted)
        try:
            assert session.info.details["cipher"] == "TLS_CHACHA20_POLY1305_SHA256"
        finally:
            session.close()
