"""Remote file monitors against a real OpenSSH sshd: readiness across two polls, events, auth failure."""

from __future__ import annotations

import os
import pwd
import time
import uuid
from pathlib import Path

import pytest

from audit.models import AuditLogEntry
from monitors import detection, services
from tests.engine_support import make_job
from tests.servers import SFTP_USER, sftp_connection, sftp_folder, ssh_server
from tests.test_monitors_support import WRITE, bind, executions_of, make_monitor, triggered_names

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    with ssh_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path: Path) -> Path:
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    return settings.COURIER_DATA_DIR


@pytest.fixture
def outbox(sshd) -> Path:
    """A folder on the partner server, listed by the monitor as `<name>` relative to the login home."""
    return sftp_folder(sshd, f"outbox-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def job():
    return make_job(WRITE, name="fetch from partner")


def remote_monitor(sshd, folder: Path, password: str | None = None, **fields):
    connection = sftp_connection(sshd, password) if password else sftp_connection(sshd)
    target = {"type": "remote", "connection_id": str(connection.pk), "path": folder.name}
    return make_monitor(target, **fields)


def put(folder: Path, name: str, content: bytes, modified: float | None = None) -> Path:
    """A file on the partner server, owned by its account, with a chosen mtime (whole seconds, as SFTP shows)."""
    path = folder / name
    path.write_bytes(content)
    account = pwd.getpwnam(SFTP_USER)
    os.chown(path, account.pw_uid, account.pw_gid)
    stamp = modified if modified is not None else int(time.time()) - 3600
    os.utime(path, (stamp, stamp))
    return path


def test_a_remote_file_triggers_only_when_a_second_poll_sees_the_same_size_and_mtime(sshd, outbox, job) -> None:
    monitor = remote_monitor(sshd, outbox)
    bind(monitor, job)
    put(outbox, "invoice.csv", b"id,amount\n1,10\n")

    first = services.poll(monitor.pk)
    second = services.poll(monitor.pk)

    assert first.outcome == "polled" and first.triggered == []
    assert [(item.file.name, item.event) for item in second.triggered] == [("invoice.csv", "FileCreated")]
    [execution] = executions_of(job)
    assert triggered_names(execution) == ["invoice.csv"]
    assert execution.context_snapshot["values"]["monitor.triggered_files"][0]["path"] == f"{outbox.name}/invoice.csv"


def test_a_remote_file_that_grows_between_polls_waits_for_an_unchanged_poll(sshd, outbox, job) -> None:
    monitor = remote_monitor(sshd, outbox)
    bind(monitor, job)
    path = put(outbox, "big.bin", b"x" * 1000)
    services.poll(monitor.pk)
    with path.open("ab") as handle:
        handle.write(b"y" * 1000)

    grown = services.poll(monitor.pk)
    settled = services.poll(monitor.pk)

    assert grown.triggered == []
    assert [item.file.size for item in settled.triggered] == [2000]


def test_a_remote_file_touched_between_polls_waits_for_an_unchanged_poll(sshd, outbox, job) -> None:
    monitor = remote_monitor(sshd, outbox)
    bind(monitor, job)
    path = put(outbox, "same-size.csv", b"abc", modified=int(time.time()) - 3600)
    services.poll(monitor.pk)
    put(outbox, path.name, b"xyz", modified=int(time.time()) - 1800)  # same size, new mtime

    touched = services.poll(monitor.pk)
    settled = services.poll(monitor.pk)

    assert touched.triggered == []
    assert [item.event for item in settled.triggered] == ["FileCreated"]


def test_a_modified_remote_file_triggers_file_modified(sshd, outbox, job) -> None:
    monitor = remote_monitor(sshd, outbox, trigger_events=detection.FILE_CREATED | detection.FILE_MODIFIED)
    bind(monitor, job)
    put(outbox, "rates.csv", b"v1", modified=int(time.time()) - 3600)
    services.poll(monitor.pk)
    services.poll(monitor.pk)  # FileCreated
    put(outbox, "rates.csv", b"version 2", modified=int(time.time()) - 1800)

    changed = services.poll(monitor.pk)
    settled = services.poll(monitor.pk)
    quiet = services.poll(monitor.pk)

    assert changed.triggered == []
    assert [item.event for item in settled.triggered] == ["FileModified"]
    assert quiet.triggered == []
    assert len(executions_of(job)) == 2


def test_a_deleted_remote_file_that_reappears_triggers_file_created_again(sshd, outbox, job) -> None:
    monitor = remote_monitor(sshd, outbox)
    bind(monitor, job)
    path = put(outbox, "daily.csv", b"monday")
    services.poll(monitor.pk)
    services.poll(monitor.pk)  # FileCreated
    path.unlink()
    services.poll(monitor.pk)
    put(outbox, "daily.csv", b"tuesday")

    seen_again = services.poll(monitor.pk)
    settled = services.poll(monitor.pk)

    assert seen_again.triggered == []
    assert [item.event for item in settled.triggered] == ["FileCreated"]
    assert len(executions_of(job)) == 2


def test_a_wrong_password_puts_a_remote_monitor_in_error_at_once(sshd, outbox) -> None:
    monitor = remote_monitor(sshd, outbox, password="Wrong-Password-Zebra", max_consecutive_failures=5)

    result = services.poll(monitor.pk)

    monitor.refresh_from_db()
    assert result.outcome == "failed" and "[E3001]" in result.error
    assert (monitor.state, monitor.consecutive_failure_count) == ("error", 1)
    failure = AuditLogEntry.objects.get(entity_id=monitor.pk, operation="poll_failed")
    assert (failure.details["failure_count"], failure.details["state"]) == (1, "error")
    assert "Wrong-Password-Zebra" not in monitor.last_error


def test_a_missing_remote_directory_counts_as_a_failure_but_not_an_error(sshd) -> None:
    connection = sftp_connection(sshd)
    monitor = make_monitor({"type": "remote", "connection_id": str(connection.pk), "path": "no-such-folder"})

    result = services.poll(monitor.pk)

    monitor.refresh_from_db()
    assert result.outcome == "failed" and "no-such-folder" in result.error
    assert (monitor.state, monitor.consecutive_failure_count) == ("active", 1)
