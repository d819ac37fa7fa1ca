"""A full local disk under a real worker: downloads and local writes fail with [E2050] and leave nothing behind."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from connections.models import Connection
from connections.steps import PART_SUFFIX
from jobs.engine import control
from tests.celery_support import CeleryCluster, LiveDatabase, WorkerProcess, live_database, wait_for
from tests.engine_support import make_job
from tests.servers import FtpServer, SshServer, ftp_server, sftp_connection, sftp_folder, ssh_server

pytestmark = pytest.mark.celery

MB = 1024 * 1024
DISK_MB = 16
BIG = 24 * MB  # larger than the whole disk: no luck with timing can make it fit
STOP = {"type": "stop", "max_retries": 0, "backoff_base_seconds": 0, "backoff_max_seconds": 0}
NO_SPACE = re.compile(r"^\[E2050\] no space left on device writing (?P<path>\S+) \(.*?(?P<free>[0-9.]+) MiB free\)$")


@pytest.fixture(scope="module")
def live(django_db_setup: Any, django_db_blocker: Any) -> Iterator[LiveDatabase]:
    with django_db_blocker.unblock(), live_database() as database:
        yield database


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    with ssh_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def ftps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    with ftp_server(tmp_path_factory.mktemp("ftps"), tls="explicit") as server:
        yield server


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 16 MiB tmpfs: the worker's data directory, easy to fill for real."""
    mount_point = tmp_path_factory.mktemp("small-disk")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


@pytest.fixture(scope="module")
def outbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An allowed directory on the big disk, for the sources of local steps."""
    folder = tmp_path_factory.mktemp("outbox")
    (folder / "ledger.bin").write_bytes(random.Random(3).randbytes(BIG))
    return folder


@pytest.fixture(scope="module")
def worker(
    live: LiveDatabase,
    django_db_blocker: Any,
    redis_url: str,
    small_disk: Path,
    outbox: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    redis.Redis.from_url(redis_url).flushdb()
    cluster = CeleryCluster(
        live,
        redis_url,
        small_disk,
        tmp_path_factory.mktemp("worker-logs"),
        extra_env={"COURIER_ALLOWED_ROOTS": str(outbox)},
    )
    with django_db_blocker.unblock():
        try:
            yield cluster.start_worker("disk", concurrency=2)
        finally:
            cluster.stop_all()
            live.execute("UPDATE job_executions SET state = 'cancelled' WHERE state IN ('queued', 'running', 'paused')")
            live.execute("UPDATE process_heartbeats SET stopped_at = now() WHERE stopped_at IS NULL")


@pytest.fixture
def run(live: LiveDatabase, worker: WorkerProcess, small_disk: Path) -> Callable[..., dict[str, Any]]:
    """Run a job on the worker until it ends; its execution and step rows as the database has them."""

    def run_job(steps: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        job = make_job(steps, policy=STOP, timeout=60)
        execution = control.enqueue(job, triggered_by="manual:tester", requested_by="tester")
        wait_for(
            lambda: (
                live.scalar("SELECT state FROM job_executions WHERE id = %s", (execution.pk,))
                in ("completed", "failed", "cancelled")
            ),
            60,
            f"execution {execution.pk} to end",
            interval=0.1,
        )
        return live.scalar(
            "SELECT json_build_object('state', e.state, 'error', e.error_message, 'worker', e.worker_name, "
            "'steps', (SELECT json_agg(json_build_object('state', s.state, 'error', s.error_message) "
            "ORDER BY s.started_at) FROM step_executions s WHERE s.job_execution_id = e.id)) "
            "FROM job_executions e WHERE e.id = %s",
            (execution.pk,),
        )

    yield run_job
    # Whatever a test left on the small disk would fill it for the next one.
    for leftover in small_disk.iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink()


# ---------------------------------------------------------------------- helpers
def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def assert_failed_for_no_space(result: dict[str, Any], written: str) -> re.Match:
    """The execution and its one step failed with the same [E2050] naming the path and the free space."""
    assert result["state"] == "failed", result
    [step] = result["steps"]
    assert step["state"] == "failed", result
    match = NO_SPACE.match(step["error"] or "")
    assert match, step["error"]
    assert match["path"].endswith(written), step["error"]
    assert float(match["free"]) > 0  # measured once the partial was removed: what is really there to use
    assert step["error"] in result["error"], result
    return match


def assert_worker_keeps_serving(run: Callable[..., dict[str, Any]], worker: WorkerProcess, failed: dict) -> None:
    assert worker.process.poll() is None, worker.output()[-3000:]
    after = run([("test.write", {"name": "after.txt", "text": "the disk has room again"})])
    assert after["state"] == "completed", after
    assert after["worker"] == failed["worker"]


def download_step(protocol: str, connection: Connection, remote: str) -> tuple[str, dict[str, Any]]:
    return (f"{protocol}.download", {"connection_id": str(connection.pk), "remote_path": remote})


# ---------------------------------------------------------------------- the tests
def test_sftp_download_larger_than_the_free_space_fails_with_e2050_and_leaves_no_partial(
    run: Callable[..., dict[str, Any]], worker: WorkerProcess, sshd: SshServer, small_disk: Path
) -> None:
    remote = sftp_folder(sshd, f"disk-full-{uuid.uuid4().hex[:8]}", {"archive.bin": random.Random(1).randbytes(BIG)})
    try:
        connection = sftp_connection(sshd)
        result = run([download_step("sftp", connection, remote.name)])
        assert_failed_for_no_space(result, f"downloads/archive.bin{PART_SUFFIX}")
        assert files_under(small_disk / "work") == []  # no .courier-part, no archive.bin
        assert (remote / "archive.bin").stat().st_size == BIG  # the partner's file is untouched
        assert_worker_keeps_serving(run, worker, result)
    finally:
        shutil.rmtree(remote, ignore_errors=True)


def test_ftps_download_larger_than_the_free_space_fails_with_e2050_and_leaves_no_partial(
    run: Callable[..., dict[str, Any]], worker: WorkerProcess, ftps: FtpServer, small_disk: Path
) -> None:
    folder = ftps.root / f"disk-full-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / "archive.bin").write_bytes(random.Random(2).randbytes(BIG))
    try:
        connection = Connection(
            name=f"ftps-{uuid.uuid4().hex[:6]}",
            protocol="ftps",
            host="127.0.0.1",
            port=ftps.port,
            auth_method="password",
            username=ftps.user,
            tls_cert_policy="insecure",
        )
        connection.set_password(ftps.password)
        connection.save()
        result = run([download_step("ftps", connection, folder.name)])
        assert_failed_for_no_space(result, f"downloads/archive.bin{PART_SUFFIX}")
        assert files_under(small_disk / "work") == []
        assert_worker_keeps_serving(run, worker, result)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_local_copy_onto_the_full_disk_fails_with_e2050_and_leaves_no_partial(
    run: Callable[..., dict[str, Any]], worker: WorkerProcess, outbox: Path, small_disk: Path
) -> None:
    target = small_disk / "copies" / "ledger.bin"
    result = run([("file.copy", {"source_path": str(outbox / "ledger.bin"), "destination_path": str(target)})])
    match = assert_failed_for_no_space(result, str(target))
    assert "needs 24.0 MiB" in match[0]
    assert files_under(small_disk / "copies") == []  # no .courier-tmp beside the target
    assert files_under(small_disk / "work") == []
    assert_worker_keeps_serving(run, worker, result)


def test_zip_onto_the_full_disk_fails_with_e2050_and_leaves_no_partial_archive(
    run: Callable[..., dict[str, Any]], worker: WorkerProcess, outbox: Path, small_disk: Path
) -> None:
    target = small_disk / "archives" / "ledger.zip"
    # Random bytes do not compress: the archive needs as much room as the file.
    result = run([("file.zip", {"source_path": str(outbox / "ledger.bin"), "output_path": str(target)})])
    assert_failed_for_no_space(result, str(target))
    assert files_under(small_disk / "archives") == []
    assert files_under(small_disk / "work") == []  # no .courier-build- file in the work directory
    assert_worker_keeps_serving(run, worker, result)
