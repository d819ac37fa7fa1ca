"""Segmented SFTP downloads: ranges over several connections to OpenSSH, a cancel or a refused read cutting the
local file back to a prefix a retry resumes from, a partner that allows fewer logins, and the setting's limits."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import pytest

from audit.models import AuditLogEntry
from connections.forms import ConnectionForm
from connections.models import Connection
from connections.transfer import sftp_segments
from connections.transfer.sessions import SessionPool, audit_events, open_session
from connections.transfer.sftp_segments import segment_count, split
from jobs.errors import Cancelled
from jobs.steps.base import CancelToken, Progress, get_step_type
from tests.servers import sftp_connection, sftp_folder, ssh_server
from tests.sftp_partner import PARTNER_PASSWORD, Quirks, SftpPartner, partner_connection
from tests.step_support import make_context

pytestmark = pytest.mark.django_db

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    with ssh_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(autouse=True)
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments of 1 MiB, so a file of a few MiB is split as a large one would be."""
    monkeypatch.setattr(sftp_segments, "SEGMENT_MIN_BYTES", MIB)


def step_context(tmp_path: Path, connection: Connection, token: CancelToken):
    context = make_context(tmp_path, cancel=token)
    context.sessions = SessionPool()
    context.sessions.ensure(connection.pk)
    return context, context.sessions


def download(session, remote: str, path: Path, offset: int = 0, on_chunk=lambda count: None) -> int:
    with path.open("r+b" if offset else "wb") as local:
        local.seek(offset)
        return session.download(remote, local, offset, on_chunk)


def test_a_large_file_is_read_over_as_many_connections_as_set_and_they_are_kept_for_the_next(sshd, tmp_path) -> None:
    payload = os.urandom(7 * MIB + 12345)
    folder = sftp_folder(sshd, f"segments-{uuid.uuid4().hex[:6]}", {"feed.bin": payload, "again.bin": payload[::-1]})
    session = open_session(sftp_connection(sshd, transfer_segments=3))
    try:
        reported: list[int] = []
        received = download(session, f"{folder.name}/feed.bin", tmp_path / "feed.bin", on_chunk=reported.append)
        assert (tmp_path / "feed.bin").read_bytes() == payload
        assert received == sum(reported) == len(payload)
        helpers = list(session.segment_sessions)
        assert len(helpers) == 2 and all(helper.alive for helper in helpers)
        assert {helper.trusted_fingerprint for helper in helpers} == {session.trusted_fingerprint}

        download(session, f"{folder.name}/again.bin", tmp_path / "again.bin")
        assert (tmp_path / "again.bin").read_bytes() == payload[::-1]
        assert session.segment_sessions == helpers  # the same connections, not new logins
    finally:
        session.close()
    assert not session.segment_sessions and not any(helper.alive for helper in helpers)


def test_a_small_file_or_a_local_file_open_for_appending_goes_in_one_stream(sshd, tmp_path) -> None:
    folder = sftp_folder(
        sshd, f"one-stream-{uuid.uuid4().hex[:6]}", {"small.bin": b"s" * MIB, "big.bin": b"b" * 4 * MIB}
    )
    session = open_session(sftp_connection(sshd, transfer_segments=4))
    try:
        download(session, f"{folder.name}/small.bin", tmp_path / "small.bin")
        assert not session.segment_sessions  # 1 MiB: under two segments' worth
        with (tmp_path / "big.bin").open("ab") as appending:
            session.download(f"{folder.name}/big.bin", appending, 0, lambda count: None)
        assert not session.segment_sessions
        assert (tmp_path / "big.bin").read_bytes() == b"b" * 4 * MIB
    finally:
        session.close()


def test_a_cancelled_segmented_download_leaves_a_prefix_that_the_retry_resumes(tmp_path) -> None:
    payload = os.urandom(6 * MIB)
    partner = SftpPartner({"feed.bin": payload}, Quirks(read_delay=0.004))  # about a second per range
    session = open_session(partner_connection(partner, transfer_segments=3))
    local = tmp_path / "feed.bin"
    seen = []

    def cancel_after_some(count: int) -> None:
        seen.append(count)
        raise Cancelled("cancelled by the operator")

    try:
        with pytest.raises(Cancelled):
            download(session, "feed.bin", local, on_chunk=cancel_after_some)
        assert len(seen) == 1  # cancelled at the first report, while the ranges were still running
        partial = local.read_bytes()
        assert len(partial) < len(payload) and partial == payload[: len(partial)]
        partner.quirks.read_delay = 0
        rest = download(session, "feed.bin", local, offset=len(partial))
        assert rest == len(payload) - len(partial) and local.read_bytes() == payload
    finally:
        session.close()
        partner.close()


def test_a_read_refused_in_a_later_range_fails_the_download_and_keeps_what_came_before(tmp_path) -> None:
    payload = os.urandom(6 * MIB)
    partner = SftpPartner({"feed.bin": payload}, Quirks(refuse_from=5 * MIB))
    connection = partner_connection(partner, transfer_segments=3)
    session = open_session(connection)
    local = tmp_path / "feed.bin"
    try:
        with pytest.raises(PermissionError, match="read refused by policy"):
            download(session, "feed.bin", local)
        partial = local.read_bytes()
        assert len(partial) <= 5 * MIB and partial == payload[: len(partial)]
    finally:
        session.close()
        partner.close()


def test_a_partner_that_allows_fewer_logins_gets_a_download_over_those_and_the_refusal_is_audited(tmp_path) -> None:
    payload = os.urandom(5 * MIB + 3)
    partner = SftpPartner({"feed.bin": payload}, Quirks(most_logins=2))
    connection = partner_connection(partner, transfer_segments=4)
    session = open_session(connection)
    try:
        download(session, "feed.bin", tmp_path / "feed.bin")
        assert (tmp_path / "feed.bin").read_bytes() == payload
        assert len(session.segment_sessions) == 1 and partner.logins == 2
        attempts = len(partner.transports)
        download(session, "feed.bin", tmp_path / "again.bin")  # no new logins tried for this session
        assert (tmp_path / "again.bin").read_bytes() == payload and len(partner.transports) == attempts
        audit_events(session, "test")
    finally:
        session.close()
        partner.close()
    refusal = AuditLogEntry.objects.get(entity_id=connection.pk, operation="segment_connection_refused")
    assert refusal.details["segments_wanted"] == 4 and refusal.details["segments_open"] == 2
    assert PARTNER_PASSWORD not in str(refusal.details)


def test_the_download_step_resumes_a_cancelled_segmented_download_into_the_same_file(
    sshd, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(sftp_segments, "PROGRESS_SECONDS", 0.001)  # the first bytes written are reported at once
    payload = os.urandom(24 * MIB)
    folder = sftp_folder(sshd, f"step-{uuid.uuid4().hex[:6]}", {"archive.bin": payload})
    connection = sftp_connection(sshd, transfer_segments=2)
    step = get_step_type("sftp.download")
    config = step.with_defaults({"connection_id": str(connection.pk), "remote_path": folder.name})

    token = CancelToken()
    context, pool = step_context(tmp_path, connection, token)
    context.progress.add = lambda count: token.request("cancel")  # the first report of progress cancels
    try:
        with pytest.raises(Cancelled):
            step.execute(config, context, token)
    finally:
        pool.close()
    partial = (context.work_dir / "downloads" / "archive.bin.courier-part").read_bytes()
    assert len(partial) < len(payload) and partial == payload[: len(partial)]

    token = CancelToken()  # the next run of the step, in the same working directory
    context.cancel, context.progress, context.sessions = token, Progress(), SessionPool()
    context.sessions.ensure(connection.pk)
    pool = context.sessions
    try:
        result = step.execute(config, context, token)
        pool.flush_events()
    finally:
        pool.close()
    assert (context.work_dir / "downloads" / "archive.bin").read_bytes() == payload
    assert result.bytes_processed == len(payload)
    resumed = AuditLogEntry.objects.filter(entity_id=connection.pk, operation="file_downloaded").latest("performed_at")
    assert resumed.details["resumed_from"] == len(partial)


def test_segment_count_needs_a_file_written_by_position_and_two_segments_worth() -> None:
    with open(os.devnull, "wb") as null:
        assert segment_count(4, 10 * MIB, null) == 4
        assert segment_count(4, 3 * MIB, null) == 3  # no segment under the minimum
        assert segment_count(4, MIB, null) == 1
        assert segment_count(1, 10 * MIB, null) == 1
    with open(os.devnull, "ab") as appending:
        assert segment_count(4, 10 * MIB, appending) == 1
    assert segment_count(4, 10 * MIB, io.BytesIO()) == 1  # no descriptor: a digest, a buffer


def test_split_covers_the_range_with_consecutive_pieces_the_last_taking_the_rest() -> None:
    assert split(10, 110, 3) == [(10, 43), (43, 76), (76, 110)]
    assert split(0, 7, 1) == [(0, 7)]


@pytest.mark.parametrize("value", ["0", "9", "-1"])
def test_the_console_refuses_a_segment_count_outside_one_to_eight(value: str) -> None:
    form = ConnectionForm(
        data={
            "name": "partner",
            "protocol": "sftp",
            "host": "sftp.example.com",
            "port": "22",
            "status": "active",
            "auth_method": "password",
            "username": "courier",
            "host_key_policy": "trust_on_first_use",
            "keepalive_interval_sec": "60",
            "tls_cert_policy": "system_trust",
            "connect_timeout_sec": "30",
            "operation_timeout_sec": "300",
            "transport_retries": "2",
            "transfer_segments": value,
            "new_password": "Partner-Secret-9",
        }
    )
    assert not form.is_valid()
    assert list(form.errors) == ["transfer_segments"], form.errors
    assert ("less than or equal to 8" if value == "9" else "greater than or equal to 1") in str(form.errors)
