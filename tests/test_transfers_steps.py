"""Transfer steps as a job sees them, against a real sshd: several files per step, one shared session, cancel."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from audit.models import AuditLogEntry
from connections.transfer.base import CHUNK, TEMP_SUFFIX
from connections.transfer.sessions import SessionPool
from jobs.errors import Cancelled
from jobs.steps.base import CancelToken, Progress, StepContext, get_step_type
from tests.engine_support import make_job, run_inline, step_rows
from tests.servers import DroppingProxy, sftp_connection, sftp_folder, ssh_server
from tests.step_support import make_context

pytestmark = pytest.mark.django_db

LARGE = 24 * CHUNK


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    with ssh_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path: Path) -> Path:
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    return settings.COURIER_DATA_DIR


class CancelMidway(Progress):
    """Progress that asks the step to stop once `after` bytes moved, as an operator's cancel
    reaching the runner in the middle of a transfer would (the runner calls token.request)."""

    def __init__(self, token: CancelToken, after: int) -> None:
        super().__init__()
        self.token = token
        self.after = after

    def add(self, count: int) -> None:
        super().add(count)
        if self.bytes_done >= self.after:
            self.token.request("cancel")


def step_context(tmp_path: Path, connection: Any, token: CancelToken) -> tuple[StepContext, SessionPool]:
    """A step context whose session pool already holds the connection's session, as the runner prepares it."""
    context = make_context(tmp_path, cancel=token)
    pool = SessionPool()
    pool.ensure(connection.pk)
    context.sessions = pool
    return context, pool


def test_one_upload_step_sends_every_file_its_glob_matches(sshd) -> None:
    connection = sftp_connection(sshd)
    folder = f"glob-{uuid.uuid4().hex[:6]}"
    job = make_job(
        [
            ("test.write", {"name": "january.csv", "text": "1" * 100}),
            ("test.write", {"name": "february.csv", "text": "2" * 200}),
            ("test.write", {"name": "notes.txt", "text": "not a csv"}),
            ("sftp.upload", {"connection_id": str(connection.pk), "local_path": "*.csv", "remote_path": folder}),
        ]
    )
    execution = run_inline(job)

    assert execution.state == "completed", execution.error_message
    # Several files make the remote path a directory even without a trailing slash.
    assert sorted(path.name for path in (sshd.home / folder).iterdir()) == ["february.csv", "january.csv"]
    assert (sshd.home / folder / "february.csv").read_text() == "2" * 200
    assert sorted(execution.context_snapshot["values"]["3.uploaded_files"]) == [
        f"{folder}/february.csv",
        f"{folder}/january.csv",
    ]
    assert step_rows(execution)[3].bytes_processed == 300
    uploaded = AuditLogEntry.objects.filter(entity_id=connection.pk, operation="file_uploaded")
    assert sorted(entry.details["bytes"] for entry in uploaded) == [100, 200]


def test_steps_of_one_execution_share_one_ssh_connection(sshd) -> None:
    counter = DroppingProxy(sshd.port, drop_after=None)  # counts the TCP connections Courier opens
    try:
        connection = sftp_connection(sshd, port=counter.port)
        folder = f"shared-{uuid.uuid4().hex[:6]}"
        job = make_job(
            [
                ("sftp.mkdir", {"connection_id": str(connection.pk), "remote_path": folder}),
                ("test.write", {"name": "a.csv", "text": "a"}),
                (
                    "sftp.upload",
                    {"connection_id": str(connection.pk), "local_path": "a.csv", "remote_path": f"{folder}/"},
                ),
                ("sftp.list", {"connection_id": str(connection.pk), "remote_path": folder}),
            ]
        )
        execution = run_inline(job)
        connections_after_first_run = counter.connections
        second = run_inline(job)
    finally:
        counter.close()

    assert execution.state == second.state == "completed", (execution.error_message, second.error_message)
    assert execution.context_snapshot["values"]["3.file_count"] == 1
    assert connections_after_first_run == 1  # three remote steps, one SSH connection
    assert counter.connections == 2  # the next execution opens a session of its own
    assert AuditLogEntry.objects.filter(entity_id=connection.pk, operation="connected").count() == 2


def test_cancel_during_a_large_upload_stops_between_chunks_and_partners_see_no_file(sshd, tmp_path: Path) -> None:
    connection = sftp_connection(sshd)
    folder = sftp_folder(sshd, f"cancel-up-{uuid.uuid4().hex[:6]}")
    token = CancelToken()
    context, pool = step_context(tmp_path, connection, token)
    (context.work_dir / "archive.bin").write_bytes(b"\0" * LARGE)
    context.progress = CancelMidway(token, after=2 * CHUNK)
    step = get_step_type("sftp.upload")
    config = step.with_defaults(
        {"connection_id": str(connection.pk), "local_path": "archive.bin", "remote_path": f"{folder.name}/"}
    )
    try:
        with pytest.raises(Cancelled, match="cancel"):
            step.execute(config, context, token)
    finally:
        pool.close()

    assert context.progress.bytes_done == 2 * CHUNK  # the chunk after the request was the last one
    assert not (folder / "archive.bin").exists()
    leftover = folder / f"archive.bin{TEMP_SUFFIX}"
    assert leftover.stat().st_size < LARGE  # the transfer itself stopped, not only the bookkeeping


def test_cancel_during_a_large_download_stops_between_chunks_and_keeps_the_partial(sshd, tmp_path: Path) -> None:
    connection = sftp_connection(sshd)
    folder = sftp_folder(sshd, f"cancel-down-{uuid.uuid4().hex[:6]}", {"archive.bin": b"\0" * LARGE})
    token = CancelToken()
    context, pool = step_context(tmp_path, connection, token)
    context.progress = CancelMidway(token, after=2 * CHUNK)
    step = get_step_type("sftp.download")
    config = step.with_defaults({"connection_id": str(connection.pk), "remote_path": folder.name})
    try:
        with pytest.raises(Cancelled, match="cancel"):
            step.execute(config, context, token)
    finally:
        pool.close()

    assert context.progress.bytes_done == 2 * CHUNK
    downloads = context.work_dir / "downloads"
    assert not (downloads / "archive.bin").exists()
    partial = downloads / "archive.bin.courier-part"
    assert 2 * CHUNK <= partial.stat().st_size < LARGE  # kept for the resume of a later run
