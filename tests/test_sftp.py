"""SFTP against a real OpenSSH sshd: authentication, host key policies, transfers, resume, audit."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pwd
import uuid
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.urls import reverse

from audit.models import AuditLogEntry
from connections import hostkeys
from connections.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    ConnectionPolicyRefused,
    HostKeyRejected,
    HostUnreachable,
)
from connections.models import Connection, KnownHost
from connections.steps import _Download
from connections.transfer.sessions import open_session
from jobs.steps.base import CancelToken
from keystore.models import SshKey
from system.models import SystemSetting
from tests.engine_support import make_job, run_inline, step_rows
from tests.servers import SFTP_USER, DroppingProxy, free_port, sftp_connection, sftp_folder, ssh_server
from tests.step_support import make_context

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    with ssh_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    return settings.COURIER_DATA_DIR


def test_password_login_trusts_the_first_host_key_and_reports_it(sshd) -> None:
    connection = sftp_connection(sshd)
    session = open_session(connection, by="alice")
    try:
        assert session.info.details["host_key_fingerprint"].startswith("SHA256:")
        assert "OpenSSH" in session.info.banner
        assert session.listdir(".") is not None
    finally:
        session.close()
    row = KnownHost.objects.get(connection=connection)
    assert (row.approved_by, row.fingerprint) == ("system", session.info.details["host_key_fingerprint"])
    connection.refresh_from_db()
    assert connection.stored_host_fingerprint == row.fingerprint
    operations = set(AuditLogEntry.objects.filter(entity_id=connection.pk).values_list("operation", flat=True))
    assert {"host_key_trusted_on_first_use", "connected"} <= operations


def test_key_login_uses_the_key_from_the_key_store(sshd) -> None:
    key = SshKey(
        name="partner key",
        key_type="ed25519",
        public_key_data="ssh-ed25519 test",
        fingerprint=f"SHA256:{uuid.uuid4().hex}",
        created_by="alice",
    )
    key.set_private_key(sshd.client_private_key)
    key.save()
    connection = sftp_connection(sshd, auth_method="ssh_key", ssh_key=key)
    open_session(connection).close()


def test_wrong_password_is_e3001_audited_and_not_leaked(sshd, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    connection = sftp_connection(sshd, password="Wrong-Password-Zebra")
    with pytest.raises(AuthenticationFailed, match=r"\[E3001\].*refused password authentication") as failure:
        open_session(connection)
    assert "Wrong-Password-Zebra" not in str(failure.value)
    assert "Wrong-Password-Zebra" not in caplog.text
    assert AuditLogEntry.objects.filter(entity_id=connection.pk, operation="auth_failed").exists()


def test_unreachable_host_is_e3003() -> None:
    connection = Connection(
        name="nobody",
        protocol="sftp",
        host="127.0.0.1",
        port=free_port(),
        auth_method="password",
        username="x",
        connect_timeout_sec=2,
    )
    connection.set_password("x")
    connection.save()
    with pytest.raises(HostUnreachable, match=r"\[E3003\] cannot reach 127.0.0.1"):
        open_session(connection)


def test_changed_host_key_is_refused_until_an_admin_approves_it(sshd, tmp_path: Path) -> None:
    connection = sftp_connection(sshd)
    open_session(connection).close()  # trusted on first use
    with ssh_server(tmp_path / "swapped", host_key_type="rsa") as impostor:
        connection.port = impostor.port
        connection.save()
        with pytest.raises(HostKeyRejected, match=r"\[E3002\] host key of .* changed"):
            open_session(connection)
        pending = connection.pending_host_keys.get()
        assert AuditLogEntry.objects.filter(entity_id=connection.pk, operation="host_key_rejected").exists()

        hostkeys.approve(pending, by="admin")
        open_session(connection).close()
    assert not connection.pending_host_keys.exists()
    assert KnownHost.objects.filter(connection=connection).count() == 1


def test_manual_policy_accepts_only_approved_keys(sshd) -> None:
    connection = sftp_connection(sshd, host_key_policy="manual")
    with pytest.raises(HostKeyRejected, match="is not approved"):
        open_session(connection)
    hostkeys.approve(connection.pending_host_keys.get(), by="admin")
    open_session(connection).close()


def test_always_trust_is_audited_on_every_use(sshd) -> None:
    connection = sftp_connection(sshd, host_key_policy="always_trust")
    open_session(connection).close()
    open_session(connection).close()
    assert AuditLogEntry.objects.filter(entity_id=connection.pk, operation="insecure_host_key_trust_used").count() == 2


def test_upload_and_download_steps_round_trip_atomically(sshd, data_dir: Path) -> None:
    connection = sftp_connection(sshd)
    remote_dir = f"inbox-{uuid.uuid4().hex[:6]}"
    job = make_job(
        [
            ("test.write", {"name": "invoice.csv", "text": "id,amount\n1,10\n" * 1000}),
            (
                "sftp.upload",
                {"connection_id": str(connection.pk), "local_path": "context:0.path", "remote_path": f"{remote_dir}/"},
            ),
            ("sftp.list", {"connection_id": str(connection.pk), "remote_path": remote_dir, "file_pattern": "*.csv"}),
            (
                "sftp.download",
                {
                    "connection_id": str(connection.pk),
                    "remote_path": remote_dir,
                    "file_pattern": "*.csv",
                    "local_path": "fetched/",
                    "delete_after_download": True,
                },
            ),
        ]
    )
    execution = run_inline(job)

    assert execution.state == "completed", execution.error_message
    values = execution.context_snapshot["values"]
    assert values["2.file_count"] == 1 and values["2.file_list"][0]["name"] == "invoice.csv"
    fetched = Path(values["3.downloaded_files"][0])
    assert fetched.name == "invoice.csv" and fetched.parent.name == "fetched"
    remote = sshd.home / remote_dir
    assert list(remote.iterdir()) == []  # deleted after download, and no .courier-tmp left behind
    assert step_rows(execution)[1].bytes_processed == 15000
    transfers = AuditLogEntry.objects.filter(entity_id=connection.pk)
    for operation in ("file_uploaded", "file_downloaded"):
        details = transfers.get(operation=operation).details
        assert details["bytes"] == 15000 and details["duration_ms"] > 0, details


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


@pytest.mark.parametrize(
    ("left_behind", "travelled"),
    [
        (PAYLOAD[:300_000], len(PAYLOAD) - 300_000),  # a previous try stopped here: only the rest travels
        (b"x" * (len(PAYLOAD) + 5000), len(PAYLOAD)),  # longer than the file now is: it changed, start again
    ],
    ids=["shorter", "longer-than-the-source"],
)
def test_download_resumes_from_a_partial_file(sshd, tmp_path: Path, left_behind: bytes, travelled: int) -> None:
    connection = sftp_connection(sshd)
    remote_dir = sshd.home / f"resume-{uuid.uuid4().hex[:6]}"
    remote_dir.mkdir()
    (remote_dir / "big.bin").write_bytes(PAYLOAD)
    account = pwd.getpwnam(SFTP_USER)
    os.chown(remote_dir, account.pw_uid, account.pw_gid)
    session = open_session(connection)
    context = make_context(tmp_path / "resume")
    try:
        partial = context.work_dir / "downloads" / "big.bin.courier-part"
        partial.parent.mkdir(parents=True)
        partial.write_bytes(left_behind)

        class Pool:
            def get(self, _id):
                return session

        context.sessions = Pool()
        step = _Download()
        step.protocol = "sftp"
        config = step.with_defaults({"connection_id": str(connection.pk), "remote_path": remote_dir.name})
        result = step.execute(config, context, CancelToken())
    finally:
        session.close()
    assert (context.work_dir / "downloads" / "big.bin").read_bytes() == PAYLOAD
    assert not partial.exists()
    assert result.bytes_processed == len(PAYLOAD)
    assert context.progress.bytes_done == travelled


def test_fips_mode_refuses_an_ed25519_host_key_unless_overridden(tmp_path: Path) -> None:

    with ssh_server(tmp_path / "ed", host_key_type="ed25519") as server:
        connection = sftp_connection(server)
        with pytest.raises(ConnectionFailed, match=r"\[E3000\].*no acceptable host key"):
            open_session(connection)
        connection.fips_override = True
        connection.save()
        open_session(connection).close()


def test_ssh_algorithms_restrict_the_ciphers(sshd) -> None:
    connection = sftp_connection(sshd, ssh_algorithms={"ciphers": ["aes256-ctr"]})
    session = open_session(connection)
    try:
        assert session.info.details["cipher"] == "aes256-ctr"
    finally:
        session.close()


def test_session_reports_the_key_exchange_it_agreed_on(sshd) -> None:
    connection = sftp_connection(sshd, ssh_algorithms={"kex": ["ecdh-sha2-nistp384", "diffie-hellman-group14-sha256"]})
    session = open_session(connection)
    try:
        assert session.info.details["kex"] == "ecdh-sha2-nistp384"
    finally:
        session.close()


def test_test_connection_command_reports_fingerprint_and_latency(sshd, capsys: pytest.CaptureFixture[str]) -> None:

    connection = sftp_connection(sshd)
    call_command("test_connection", connection.name, "--json")
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True
    assert result["host_key_fingerprint"].startswith("SHA256:") and result["latency_ms"] > 0
    assert AuditLogEntry.objects.filter(entity_id=connection.pk, operation="tested").exists()


def test_admin_approves_a_changed_key_in_the_console(sshd, tmp_path: Path, client, django_user_model) -> None:

    connection = sftp_connection(sshd)
    open_session(connection).close()
    with ssh_server(tmp_path / "new-key", host_key_type="rsa") as replaced:
        connection.port = replaced.port
        connection.save()
        with pytest.raises(HostKeyRejected):
            open_session(connection)
        pending = connection.pending_host_keys.get()
        operator = django_user_model.objects.create_user(username="op", password="x" * 16, is_staff=True)
        operator.groups.add(Group.objects.get(name="Operator"))
        admin_user = django_user_model.objects.create_user(username="adm", password="x" * 16, is_staff=True)
        admin_user.groups.add(Group.objects.get(name="Admin"))
        url = reverse("admin:connections_knownhost_changelist")
        client.force_login(operator)
        client.post(url, {"action": "approve_keys", "_selected_action": [pending.pk]})
        assert connection.pending_host_keys.exists()  # operators cannot approve

        client.force_login(admin_user)
        client.post(url, {"action": "approve_keys", "_selected_action": [pending.pk]})
        assert not connection.pending_host_keys.exists()
        open_session(connection).close()


def test_a_dropped_session_reconnects_and_the_download_resumes(sshd) -> None:

    remote_dir = sshd.home / f"drop-{uuid.uuid4().hex[:6]}"
    remote_dir.mkdir()
    payload = os.urandom(4 * 1024 * 1024)
    (remote_dir / "statement.bin").write_bytes(payload)
    account = pwd.getpwnam(SFTP_USER)
    os.chown(remote_dir, account.pw_uid, account.pw_gid)
    os.chown(remote_dir / "statement.bin", account.pw_uid, account.pw_gid)
    proxy = DroppingProxy(sshd.port, drop_after=3_000_000)
    try:
        connection = sftp_connection(sshd, port=proxy.port, transport_retries=2)
        job = make_job(
            [
                (
                    "sftp.download",
                    {"connection_id": str(connection.pk), "remote_path": remote_dir.name, "local_path": "in/"},
                ),
                ("file.copy", {"source_path": "context:0.downloaded_files", "destination_path": "kept/"}),
            ]
        )
        execution = run_inline(job)
    finally:
        proxy.close()

    assert execution.state == "completed", execution.error_message
    assert proxy.connections == 2  # dropped once, reconnected once
    events = AuditLogEntry.objects.filter(entity_id=connection.pk)
    assert events.filter(operation="reconnected").exists()
    downloaded = events.get(operation="file_downloaded")
    assert downloaded.details["bytes"] == len(payload), downloaded.details
    assert downloaded.details["resumed_from"] > 0, [(e.operation, e.details) for e in events]


def test_password_and_key_together_when_the_server_demands_both(tmp_path: Path) -> None:
    with ssh_server(tmp_path / "both", authentication_methods="publickey,password") as server:
        key = SshKey(
            name="both",
            key_type="ed25519",
            public_key_data="ssh-ed25519 x",
            fingerprint=f"SHA256:{uuid.uuid4().hex}",
            created_by="alice",
        )
        key.set_private_key(server.client_private_key)
        key.save()
        only_key = sftp_connection(server, auth_method="ssh_key", ssh_key=key)
        with pytest.raises(AuthenticationFailed):
            open_session(only_key)
        both = sftp_connection(server, auth_method="password_and_ssh_key", ssh_key=key)
        open_session(both).close()


def test_skip_existing_leaves_identical_local_files_alone(sshd) -> None:

    remote_dir = sshd.home / f"skip-{uuid.uuid4().hex[:6]}"
    remote_dir.mkdir()
    (remote_dir / "a.csv").write_text("same")
    (remote_dir / "b.csv").write_text("new file")
    account = pwd.getpwnam(SFTP_USER)
    for path in (remote_dir, remote_dir / "a.csv", remote_dir / "b.csv"):
        os.chown(path, account.pw_uid, account.pw_gid)
    connection = sftp_connection(sshd)
    job = make_job(
        [
            ("test.write", {"name": "a.csv", "text": "same"}),
            (
                "sftp.download",
                {
                    "connection_id": str(connection.pk),
                    "remote_path": remote_dir.name,
                    "local_path": "./",
                    "skip_existing": True,
                },
            ),
        ]
    )
    execution = run_inline(job)
    assert execution.state == "completed", execution.error_message
    downloaded = [Path(path).name for path in execution.context_snapshot["values"]["1.downloaded_files"]]
    assert downloaded == ["b.csv"]


def test_upload_can_verify_the_sha256_by_reading_back(sshd) -> None:

    connection = sftp_connection(sshd)
    folder = f"verify-{uuid.uuid4().hex[:6]}"
    job = make_job(
        [
            ("test.write", {"name": "ledger.csv", "text": "a,b\n" * 5000}),
            (
                "sftp.upload",
                {
                    "connection_id": str(connection.pk),
                    "local_path": "context:0.path",
                    "remote_path": f"{folder}/",
                    "verify_sha256": True,
                },
            ),
        ]
    )
    execution = run_inline(job)

    assert execution.state == "completed", execution.error_message
    digests = execution.context_snapshot["values"]["1.sha256"]
    assert digests == {f"{folder}/ledger.csv": hashlib.sha256(("a,b\n" * 5000).encode()).hexdigest()}


def test_mkdir_step_creates_nested_remote_directories(sshd) -> None:
    connection = sftp_connection(sshd)
    base = f"mkdir-{uuid.uuid4().hex[:6]}"
    job = make_job(
        [("sftp.mkdir", {"connection_id": str(connection.pk), "remote_path": f"{base}/in/{{execution_id}}"})]
    )
    execution = run_inline(job)

    assert execution.state == "completed", execution.error_message
    assert (sshd.home / base / "in" / str(execution.pk)).is_dir()


def test_rmdir_step_removes_an_empty_remote_directory(sshd) -> None:
    connection = sftp_connection(sshd)
    folder = sftp_folder(sshd, f"rmdir-{uuid.uuid4().hex[:6]}")
    job = make_job([("sftp.rmdir", {"connection_id": str(connection.pk), "remote_path": folder.name})])
    execution = run_inline(job)

    assert execution.state == "completed", execution.error_message
    assert not folder.exists()


def test_rmdir_step_refuses_a_directory_that_still_holds_files(sshd) -> None:
    connection = sftp_connection(sshd)
    folder = sftp_folder(sshd, f"full-{uuid.uuid4().hex[:6]}", {"keep.csv": b"1"})
    job = make_job([("sftp.rmdir", {"connection_id": str(connection.pk), "remote_path": folder.name})])
    execution = run_inline(job)

    assert execution.state == "failed"
    assert "[E3005] cannot remove directory" in execution.error_message
    assert (folder / "keep.csv").read_bytes() == b"1"


def test_rename_step_moves_a_remote_file(sshd) -> None:
    connection = sftp_connection(sshd)
    folder = sftp_folder(sshd, f"rename-{uuid.uuid4().hex[:6]}", {"report.tmp": b"totals\n"})
    sftp_folder(sshd, f"{folder.name}/done")
    job = make_job(
        [
            (
                "sftp.rename",
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
    assert execution.context_snapshot["values"]["0.remote_path"] == f"{folder.name}/done/report.csv"
    assert not (folder / "report.tmp").exists()
    assert (folder / "done" / "report.csv").read_bytes() == b"totals\n"


def test_always_trust_is_refused_at_connect_time_in_production(sshd, settings) -> None:
    settings.IS_PRODUCTION = True
    # Saved without the console form, as an import or an SQL edit would.
    connection = sftp_connection(sshd, host_key_policy="always_trust")
    with pytest.raises(
        ConnectionPolicyRefused, match=r"\[E3004\].*always_trust.*security\.insecure_trust_allow_production"
    ):
        open_session(connection)
    operations = set(AuditLogEntry.objects.filter(entity_id=connection.pk).values_list("operation", flat=True))
    assert "insecure_trust_refused" in operations
    assert not operations & {"connected", "insecure_host_key_trust_used"}


def test_always_trust_connects_in_production_when_the_system_setting_allows_it(sshd, settings) -> None:

    settings.IS_PRODUCTION = True
    SystemSetting.objects.filter(key="security.insecure_trust_allow_production").update(value="true")
    connection = sftp_connection(sshd, host_key_policy="always_trust")
    open_session(connection).close()
    assert AuditLogEntry.objects.filter(entity_id=connection.pk, operation="insecure_host_key_trust_used").exists()
