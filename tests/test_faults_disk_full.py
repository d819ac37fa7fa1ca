"""A full local disk under a real worker: downloads and local writes fail with [E2050], leave nothing, and the
worker carries on."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.celery_support import CeleryCluster, LiveDatabase, wait_for
from tests.servers import FtpServer, SshServer, ftp_server, sftp_connection, sftp_folder, ssh_server

pytestmark = pytest.mark.celery

MiB = 1024 * 1024
# The worker's data directory (work directories included) is a tmpfs of this size ...
DATA_DISK_MB = 16
# ... and the outbox, an allowed root, a smaller one.
OUTBOX_DISK_MB = 4
# Larger than the whole data disk: no luck with timing can let it fit.
LARGE = 24 * MiB
MESSAGE = re.compile(
    r"^\[E2050\] no space left on device writing (?P<path>\S+) "
    r"\((?P<free>[\d.]+) (?P<unit>B|KiB|MiB|GiB) free(?:, (?P<needed>[\d.]+ \w+) needed)?\)$"
)
UNITS = {"B": 1, "KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB}


@dataclass
class Disks:
    data: Path  # COURIER_DATA_DIR of the worker, a tmpfs
    outbox: Path  # an allowed root, a smaller tmpfs
    inbox: Path  # an allowed root on the ordinary disk, for sources


@contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """A small RAM file system at path (tests run as root), unmounted afterwards."""
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)  # lazily, when something still holds it


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    with ssh_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def ftps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    with ftp_server(tmp_path_factory.mktemp("ftps"), tls="explicit") as server:
        yield server


@pytest.fixture
def disks(tmp_path: Path) -> Iterator[Disks]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with tmpfs(tmp_path / "data", DATA_DISK_MB) as data, tmpfs(tmp_path / "outbox", OUTBOX_DISK_MB) as outbox:
        yield Disks(data.resolve(), outbox.resolve(), inbox.resolve())


@pytest.fixture
def cluster(
    live: LiveDatabase, disks: Disks, django_db_blocker: Any, redis_url: str, tmp_path: Path, settings: Any
) -> Iterator[CeleryCluster]:
    redis.Redis.from_url(redis_url).flushdb()
    settings.COURIER_DATA_DIR = disks.data
    settings.COURIER_ALLOWED_ROOTS = [disks.data, disks.inbox, disks.outbox]
    live.execute("UPDATE system_settings SET value = '5' WHERE key = 'job.concurrency_limit'")
    group = CeleryCluster(
        live, redis_url, disks.data, tmp_path, extra_env={"COURIER_ALLOWED_ROOTS": f"{disks.inbox},{disks.outbox}"}
    )
    with django_db_blocker.unblock():
        try:
            # One slot: the run after a failure shows the slot was given back.
            group.start_worker("w1", concurrency=1)
            yield group
        finally:
            group.stop_all()
            live.execute("UPDATE job_executions SET state = 'cancelled' WHERE state IN ('queued', 'running', 'paused')")
            live.execute("UPDATE process_heartbeats SET stopped_at = now() WHERE stopped_at IS NULL")


def run(job: Any, live: LiveDatabase, timeout: float = 60) -> dict[str, Any]:
    """Queue job, wait until it ended; its execution row and its last step row."""
    from jobs.engine import control

    execution = control.enqueue(job, triggered_by="manual:tester", requested_by="tester")
    wait_for(
        lambda: (
            live.scalar("SELECT state FROM job_executions WHERE id = %s", (execution.pk,))
            in ("completed", "failed", "cancelled")
        ),
        timeout,
        f"execution {execution.pk} to end",
    )
    row = live.scalar(
        "SELECT json_build_object('id', e.id, 'state', e.state, 'error', e.error_message, 'worker', e.worker_name, "
        "'step_state', s.state, 'step_error', s.error_message) FROM job_executions e "
        "JOIN LATERAL (SELECT * FROM step_executions WHERE job_execution_id = e.id "
        "ORDER BY started_at DESC LIMIT 1) s ON true WHERE e.id = %s",
        (execution.pk,),
    )
    return row


def assert_disk_full(outcome: dict[str, Any], written: Path, disk: Path, needed: int | None) -> None:
    """Failed with E2050 naming the file and the space really left, in the step row and the execution."""
    assert outcome["state"] == "failed", outcome
    assert outcome["step_state"] == "failed", outcome
    match = MESSAGE.match(outcome["step_error"])
    assert match, outcome["step_error"]
    assert Path(match["path"]) == written or Path(match["path"]).parent == written, outcome["step_error"]
    reported_free = float(match["free"]) * UNITS[match["unit"]]
    # Measured once the partial output was gone: about what the disk has free now.
    assert abs(reported_free - shutil.disk_usage(disk).free) < MiB, (outcome["step_error"], disk)
    if needed is not None:
        assert match["needed"] == f"{needed / MiB:.1f} MiB"
    assert outcome["step_error"] in outcome["error"]


def leftovers(*folders: Path) -> list[str]:
    return sorted(str(path) for folder in folders for path in folder.rglob("*") if path.is_file())


def small_job_completes_on_the_same_worker(live: LiveDatabase, first: dict[str, Any]) -> None:
    from tests.engine_support import make_job

    after = run(make_job([("test.write", {"name": "after.txt", "text": "still serving"})]), live)
    assert after["state"] == "completed", after
    assert after["worker"] == first["worker"]


def test_an_sftp_download_larger_than_the_free_space_fails_with_e2050_and_leaves_no_partial_file(
    cluster: CeleryCluster, sshd: SshServer, disks: Disks
) -> None:
    from audit.models import AuditLogEntry
    from tests.engine_support import make_job

    folder = sftp_folder(sshd, f"big-{uuid.uuid4().hex[:6]}", {"statement.bin": os.urandom(LARGE)})
    connection = sftp_connection(sshd)
    try:
        job = make_job([("sftp.download", {"connection_id": str(connection.pk), "remote_path": folder.name})])
        outcome = run(job, cluster.database)
    finally:
        shutil.rmtree(folder)

    work_dir = disks.data / "work" / str(outcome["id"])
    assert_disk_full(outcome, work_dir / "downloads" / "statement.bin.courier-part", disks.data, LARGE)
    assert leftovers(disks.data) == []  # no .courier-part, no statement.bin
    # A full disk is no dropped session: nobody reconnected to the partner over it.
    assert not AuditLogEntry.objects.filter(entity_id=connection.pk, operation="reconnected").exists()
    small_job_completes_on_the_same_worker(cluster.database, outcome)


def test_an_ftps_download_larger_than_the_free_space_fails_with_e2050_and_leaves_no_partial_file(
    cluster: CeleryCluster, ftps: FtpServer, disks: Disks
) -> None:
    from connections.models import Connection
    from tests.engine_support import make_job

    folder = ftps.root / f"big-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / "statement.bin").write_bytes(os.urandom(LARGE))
    connection = Connection(
        name=f"ftps-{uuid.uuid4().hex[:6]}",
        protocol="ftps",
        host="127.0.0.1",
        port=ftps.port,
        auth_method="password",
        username=ftps.user,
        tls_cert_policy="pinned_thumbprint",
        tls_pinned_thumbprint=hashlib.sha256(ftps.certificate_der).hexdigest(),
    )
    connection.set_password(ftps.password)
    connection.save()
    retrievals_before = sum(command.startswith("RETR") for command in ftps.commands)
    try:
        job = make_job([("ftps.download", {"connection_id": str(connection.pk), "remote_path": folder.name})])
        outcome = run(job, cluster.database)
    finally:
        shutil.rmtree(folder)

    work_dir = disks.data / "work" / str(outcome["id"])
    assert_disk_full(outcome, work_dir / "downloads" / "statement.bin.courier-part", disks.data, LARGE)
    assert leftovers(disks.data) == []
    assert sum(command.startswith("RETR") for command in ftps.commands) - retrievals_before == 1  # no retry
    small_job_completes_on_the_same_worker(cluster.database, outcome)


def test_a_file_copy_onto_a_full_disk_fails_with_e2050_and_leaves_no_partial_copy(
    cluster: CeleryCluster, disks: Disks
) -> None:
    from tests.engine_support import make_job

    source = disks.inbox / "ledger.bin"
    source.write_bytes(os.urandom(LARGE))
    job = make_job([("file.copy", {"source_path": str(source), "destination_path": "copies/"})])

    outcome = run(job, cluster.database)

    work_dir = disks.data / "work" / str(outcome["id"])
    assert_disk_full(outcome, work_dir / "copies" / "ledger.bin", disks.data, LARGE)
    assert leftovers(disks.data) == []  # neither the copy nor its .courier-tmp
    assert source.stat().st_size == LARGE  # the source is untouched
    small_job_completes_on_the_same_worker(cluster.database, outcome)


def test_a_file_zip_that_outgrows_the_work_disk_fails_with_e2050_and_leaves_no_partial_archive(
    cluster: CeleryCluster, disks: Disks
) -> None:
    from tests.engine_support import make_job

    source = disks.inbox / "scans.bin"
    source.write_bytes(os.urandom(LARGE))  # random: the archive is as large as the file
    job = make_job([("file.zip", {"source_path": str(source), "output_path": "bundle.zip"})])

    outcome = run(job, cluster.database)

    work_dir = disks.data / "work" / str(outcome["id"])
    assert_disk_full(outcome, work_dir, disks.data, None)  # the archive being built in the work directory
    assert leftovers(disks.data) == []
    small_job_completes_on_the_same_worker(cluster.database, outcome)


def test_a_file_zip_into_a_full_outbox_fails_with_e2050_and_leaves_no_partial_archive(
    cluster: CeleryCluster, disks: Disks
) -> None:
    from tests.engine_support import make_job

    source = disks.inbox / "scans.bin"
    source.write_bytes(os.urandom(6 * MiB))  # fits the work disk, not the outbox
    job = make_job([("file.zip", {"source_path": str(source), "output_path": str(disks.outbox / "scans.zip")})])

    outcome = run(job, cluster.database)

    assert_disk_full(outcome, disks.outbox / "scans.zip", disks.outbox, None)
    assert leftovers(disks.outbox, disks.data) == []  # no scans.zip, no .scans.zip.courier-tmp, no build file
    small_job_completes_on_the_same_worker(cluster.database, outcome)
