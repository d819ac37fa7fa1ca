"""SIGKILL of a worker mid-step (SFTP upload/download, PGP decrypt, zip): recovered, resumed, nothing partial left."""

from __future__ import annotations

import base64
import hashlib
import pwd
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection as BrokerConnection

from connections.steps import PART_SUFFIX
from connections.transfer.base import TEMP_SUFFIX
from jobs.engine import control
from jobs.models import JobExecution
from keystore.services import generate_pgp_key
from tests.celery_support import CeleryCluster, LiveDatabase, WorkerProcess, wait_for
from tests.engine_support import make_job
from tests.servers import SFTP_USER, SshServer, sftp_connection, sftp_folder, ssh_server

pytestmark = pytest.mark.celery

MB = 1024 * 1024
HEARTBEAT_TIMEOUT = 3  # COURIER_HEARTBEAT_TIMEOUT of the test workers (tests/celery_support.py)
RECOVERY_BOUND = HEARTBEAT_TIMEOUT + 30  # what an operator may expect: the timeout plus one sweep
RETRY_STEP = {"type": "retry_step", "max_retries": 2, "backoff_base_seconds": 0, "backoff_max_seconds": 0}
RETRY_JOB = {"type": "retry_job", "max_retries": 2, "backoff_base_seconds": 0, "backoff_max_seconds": 0}
STOP = {"type": "stop", "max_retries": 0, "backoff_base_seconds": 0, "backoff_max_seconds": 0}


class SlowLink:
    """TCP proxy in front of the partner's sshd: a slow WAN link (rate bytes/s each way) that can also
    stall completely (hold) and be lifted (rate None), so a test can kill a worker mid-transfer."""

    def __init__(self, target_port: int, rate: float | None) -> None:
        self.target_port = target_port
        self.rate = rate
        self.flowing = threading.Event()
        self.flowing.set()
        self.sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        self.flowing.clear()

    def lift(self) -> None:
        self.rate = None
        self.flowing.set()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                data = source.recv(64 * 1024)
                if not data:
                    break
                self.flowing.wait()
                target.sendall(data)
                rate = self.rate
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        self.flowing.set()
        self.listener.close()
        for end in self.sockets:
            with suppress(OSError):
                end.close()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    with ssh_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def partner_file(live: LiveDatabase, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A key pair generated into the key store and a 32 MB text file a partner encrypted to it.

    bzip2 compression, as some partners send: gpg then needs seconds to decrypt it, long
    enough to kill the worker in the middle.
    """
    folder = tmp_path_factory.mktemp("partner")
    plain = folder / "statement.txt"
    plain.write_bytes(base64.encodebytes(random.Random(7).randbytes(24 * MB)))
    with django_db_blocker.unblock():
        key = generate_pgp_key("partner-files", "ecc_p256", by="tester")
    home = folder / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet"]
    subprocess.run([*gpg, "--import"], input=key.public_key_data.encode(), check=True, capture_output=True)
    encrypted = folder / "statement.txt.pgp"
    subprocess.run(
        [
            *gpg,
            *("--trust-model", "always", "--compress-algo", "bzip2", "-z", "1", "--cipher-algo", "AES256"),
            *("--encrypt", "--recipient", key.fingerprint, "--output", str(encrypted), str(plain)),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
    return {"key": key, "plain": plain, "encrypted": encrypted, "sha256": sha256(plain)}


@pytest.fixture
def partner_folder(sshd: SshServer, request: pytest.FixtureRequest) -> Iterator[Callable[..., Path]]:
    """Folders in the partner's SFTP home for one test, removed afterwards (tens of MB each)."""
    made: list[Path] = []

    def make(files: dict[str, bytes] | None = None) -> Path:
        folder = sftp_folder(sshd, f"kill-{request.node.name[:40]}-{time.monotonic_ns()}", files)
        made.append(folder)
        return folder

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def cluster(
    live: LiveDatabase, django_db_blocker: Any, redis_url: str, tmp_path: Path, settings: Any
) -> Iterator[CeleryCluster]:
    redis.Redis.from_url(redis_url).flushdb()
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    (tmp_path / "data").mkdir()
    live.execute("UPDATE system_settings SET value = '5' WHERE key = 'job.concurrency_limit'")
    group = CeleryCluster(live, redis_url, tmp_path / "data", tmp_path)
    with django_db_blocker.unblock():
        try:
            yield group
        finally:
            group.stop_all()
            live.execute("UPDATE job_executions SET state = 'cancelled' WHERE state IN ('queued', 'running', 'paused')")
            live.execute("UPDATE process_heartbeats SET stopped_at = now() WHERE stopped_at IS NULL")


# ---------------------------------------------------------------------- helpers
def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(MB), b""):
            digest.update(block)
    return digest.hexdigest()


def write_random(path: Path, size: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def state_of(live: LiveDatabase, execution_id: Any) -> str:
    return live.scalar("SELECT state FROM job_executions WHERE id = %s", (execution_id,))


def wait_state(live: LiveDatabase, execution_id: Any, states: set[str], timeout: float) -> str:
    return wait_for(
        lambda: (state := state_of(live, execution_id)) in states and state,
        timeout,
        f"execution {execution_id} to reach {states} (now {state_of(live, execution_id)})",
    )


def size_of(path: Path | None) -> int:
    with suppress(OSError):
        return path.stat().st_size if path else 0
    return 0


def first_match(folder: Path, pattern: str) -> Path | None:
    return next(iter(sorted(folder.glob(pattern))), None) if folder.is_dir() else None


def step_running(live: LiveDatabase, execution_id: Any) -> bool:
    return bool(
        live.scalar(
            "SELECT count(*) FROM step_executions WHERE job_execution_id = %s AND state = 'running'", (execution_id,)
        )
    )


def kill_worker(worker: WorkerProcess) -> float:
    """SIGKILL the worker's whole process group (main process, pool processes, their children)."""
    worker.signal(signal.SIGKILL, whole_group=True)
    worker.process.wait(10)
    return time.monotonic()


def start_and_kill_mid_step(
    cluster: CeleryCluster, job: Any, partial: Callable[[Any], bool], before_kill: Callable[[], None] | None = None
) -> tuple[Any, float]:
    """Queue job on a worker, wait until its step is running and partial(execution) holds, then SIGKILL it."""
    first = cluster.start_worker("w1", concurrency=2)
    execution = control.enqueue(job, triggered_by="manual:tester", requested_by="tester")
    wait_for(
        lambda: step_running(cluster.database, execution.pk) and partial(execution),
        30,
        "the step to be in progress with partial output written",
        interval=0.02,
    )
    if before_kill is not None:
        before_kill()
    killed_at = kill_worker(first)
    # Killed in the middle: the execution is still marked running by the dead worker.
    assert state_of(cluster.database, execution.pk) == "running"
    return execution, killed_at


def wait_lost(cluster: CeleryCluster, execution: Any, killed_at: float) -> JobExecution:
    """The execution fails with "worker lost" within heartbeat timeout + 30 s of the kill."""
    wait_state(cluster.database, execution.pk, {"failed"}, RECOVERY_BOUND + 5)
    assert time.monotonic() - killed_at <= RECOVERY_BOUND
    lost = JobExecution.objects.get(pk=execution.pk)
    assert lost.error_message.startswith("worker lost"), lost.error_message
    assert "w1@" in lost.error_message  # names the worker that went away
    return lost


def wait_retry_completed(cluster: CeleryCluster, lost: JobExecution) -> JobExecution:
    retry = wait_for(
        lambda: JobExecution.objects.filter(retry_of_execution_id=lost.pk).first(), 10, "the retry execution"
    )
    assert retry.triggered_by == f"retry:{lost.pk}"
    assert retry.attempt == lost.attempt + 1
    assert wait_state(cluster.database, retry.pk, {"completed", "failed"}, 40) == "completed", JobExecution.objects.get(
        pk=retry.pk
    ).error_message
    return JobExecution.objects.get(pk=retry.pk)


def audit_operations(live: LiveDatabase, entity_id: Any) -> list[str]:
    return live.scalar(
        "SELECT coalesce(json_agg(operation ORDER BY performed_at), '[]') FROM audit_log_entries WHERE entity_id = %s",
        (entity_id,),
    )


def events(live: LiveDatabase, entity_id: Any) -> list[str]:
    return live.scalar(
        "SELECT coalesce(json_agg(event_type ORDER BY occurred_at), '[]') FROM domain_events WHERE entity_id = %s",
        (entity_id,),
    )


def assert_lost_is_on_record(live: LiveDatabase, lost: JobExecution) -> None:
    """Audit rows and events say the execution failed because its worker was lost, and so did its step."""
    error = live.scalar(
        "SELECT details->>'error' FROM audit_log_entries "
        "WHERE entity_type = 'job_execution' AND entity_id = %s AND operation = 'failed'",
        (lost.pk,),
    )
    assert error and error.startswith("worker lost"), error
    assert events(live, lost.pk)[-1] == "JobFailed"
    # The step it was in is not left "running" for ever: it failed, for the same reason, on record.
    rows = live.scalar(
        "SELECT json_agg(json_build_object('id', id, 'state', state, 'error', error_message)) "
        "FROM step_executions WHERE job_execution_id = %s",
        (lost.pk,),
    )
    interrupted = [row for row in rows if row["state"] != "completed"]
    assert len(interrupted) == 1, rows
    assert interrupted[0]["state"] == "failed"
    assert interrupted[0]["error"].startswith("worker lost"), interrupted[0]
    assert audit_operations(live, interrupted[0]["id"]) == ["running", "failed"]
    assert events(live, interrupted[0]["id"]) == ["StepStarted", "StepFailed"]


def assert_retry_is_on_record(live: LiveDatabase, lost: JobExecution, retry: JobExecution) -> None:
    assert audit_operations(live, retry.pk) == ["queued", "running", "completed"]
    assert events(live, retry.pk) == ["JobQueued", "JobStarted", "JobCompleted"]
    triggered_by = live.scalar(
        "SELECT details->>'triggered_by' FROM audit_log_entries WHERE entity_id = %s AND operation = 'queued'",
        (retry.pk,),
    )
    assert triggered_by == f"retry:{lost.pk}"


def no_work_left(cluster: CeleryCluster) -> None:
    """Neither the lost execution's work directory nor the retry's is left behind (no orphaned partials)."""
    work = cluster.data_dir / "work"
    assert not work.exists() or not list(work.iterdir()), list(work.iterdir())


# ---------------------------------------------------------------------- the tests
def test_upload_killed_mid_file_is_resumed_by_the_surviving_worker_and_the_partner_gets_one_complete_file(
    cluster: CeleryCluster, sshd: SshServer, partner_folder: Callable[..., Path]
) -> None:
    source = write_random(cluster.data_dir / "outbox" / "payroll.bin", 24 * MB, seed=1)
    link = SlowLink(sshd.port, rate=4 * MB)
    try:
        connection = sftp_connection(sshd, port=link.port)
        remote = partner_folder()
        job = make_job(
            [
                (
                    "sftp.upload",
                    {"connection_id": str(connection.pk), "local_path": str(source), "remote_path": f"{remote.name}/"},
                )
            ],
            policy=RETRY_STEP,
            timeout=120,
        )
        partial = remote / f"payroll.bin{TEMP_SUFFIX}"

        def second_worker_up_before_the_heartbeat_expires() -> None:
            # A worker that is already running (or a supervisor's immediate restart): its start-up
            # recovery finds nothing expired yet, so only a periodic check can recover the run.
            link.hold()
            cluster.start_worker("w2", concurrency=2)

        execution, killed_at = start_and_kill_mid_step(
            cluster, job, lambda _: size_of(partial) >= MB, before_kill=second_worker_up_before_the_heartbeat_expires
        )
        assert 0 < size_of(partial) < source.stat().st_size
        link.lift()

        lost = wait_lost(cluster, execution, killed_at)
        retry = wait_retry_completed(cluster, lost)
    finally:
        link.close()

    assert sorted(path.name for path in remote.iterdir()) == ["payroll.bin"]  # no .courier-tmp left
    assert sha256(remote / "payroll.bin") == sha256(source)
    assert pwd.getpwuid((remote / "payroll.bin").stat().st_uid).pw_name == SFTP_USER
    assert_lost_is_on_record(cluster.database, lost)
    assert_retry_is_on_record(cluster.database, lost, retry)
    uploads = cluster.database.scalar(
        "SELECT count(*) FROM audit_log_entries WHERE entity_type = 'connection' AND operation = 'file_uploaded' "
        "AND details->>'file' = %s",
        (f"{remote.name}/payroll.bin",),
    )
    assert uploads == 1  # the partner received the file once
    no_work_left(cluster)


def test_download_killed_mid_file_resumes_from_its_partial_in_the_kept_work_directory(
    cluster: CeleryCluster, sshd: SshServer, partner_folder: Callable[..., Path]
) -> None:
    content = random.Random(2).randbytes(24 * MB)
    remote = partner_folder({"invoice.bin": content})
    inbox = cluster.data_dir / "inbox"
    link = SlowLink(sshd.port, rate=4 * MB)
    try:
        connection = sftp_connection(sshd, port=link.port)
        # The default local_path: downloads/ in the execution's work directory, then moved to the inbox.
        job = make_job(
            [
                ("sftp.download", {"connection_id": str(connection.pk), "remote_path": remote.name}),
                ("file.move", {"source_path": "context:0.downloaded_files", "destination_path": f"{inbox}/"}),
            ],
            policy=RETRY_JOB,
            timeout=120,
        )

        def partial_download(execution: Any) -> bool:
            return (
                size_of(cluster.data_dir / "work" / str(execution.pk) / "downloads" / f"invoice.bin{PART_SUFFIX}")
                >= 2 * MB
            )

        execution, killed_at = start_and_kill_mid_step(cluster, job, partial_download)
        link.lift()
        cluster.start_worker("w2", concurrency=2)  # a supervisor restarting the worker at once

        lost = wait_lost(cluster, execution, killed_at)
        retry = wait_retry_completed(cluster, lost)
    finally:
        link.close()

    assert sorted(path.name for path in inbox.iterdir()) == ["invoice.bin"]
    assert hashlib.sha256((inbox / "invoice.bin").read_bytes()).hexdigest() == hashlib.sha256(content).hexdigest()
    resumed_from = cluster.database.scalar(
        "SELECT json_agg((details->>'resumed_from')::bigint) FROM audit_log_entries "
        "WHERE entity_type = 'connection' AND operation = 'file_downloaded' AND details->>'file' = %s",
        (f"{remote.name}/invoice.bin",),
    )
    assert len(resumed_from) == 1 and resumed_from[0] >= 2 * MB  # fetched once, from where the killed worker got to
    assert_lost_is_on_record(cluster.database, lost)
    assert_retry_is_on_record(cluster.database, lost, retry)
    assert sorted(path.name for path in remote.iterdir()) == ["invoice.bin"]  # the partner's file untouched
    no_work_left(cluster)


def gpg_child(source: Path) -> tuple[int, Path] | None:
    """pid and GnuPG home of a gpg process working on source (found in /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [word.decode(errors="replace") for word in arguments if word]
        if words and words[0].endswith("gpg") and str(source) in words and "--homedir" in words:
            return int(entry.name), Path(words[words.index("--homedir") + 1])
    return None


def agents_of(home: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                words = (entry / "cmdline").read_bytes().split(b"\0")
                if words and words[0].endswith(b"gpg-agent") and str(home).encode() in words:
                    pids.append(int(entry.name))
    return pids


def test_decrypt_killed_mid_file_leaves_no_partial_plaintext_key_home_or_agent_behind(
    cluster: CeleryCluster, partner_file: dict
) -> None:
    inbox = cluster.data_dir / "inbox"
    inbox.mkdir()
    source = inbox / partner_file["encrypted"].name
    shutil.copyfile(partner_file["encrypted"], source)
    job = make_job(
        [
            (
                "pgp.decrypt",
                {
                    "input_path": str(source),
                    "private_key_id": str(partner_file["key"].pk),
                    "output_path": str(inbox / "statement.txt"),
                },
            )
        ],
        policy=RETRY_STEP,
        timeout=120,
    )
    seen: dict[str, Any] = {}

    def plaintext_being_written(_: Any) -> bool:
        partial = first_match(inbox, f"*{TEMP_SUFFIX}")
        child = gpg_child(source)
        if partial is not None and size_of(partial) >= MB and child is not None:
            seen.update(partial=partial, gpg=child[0], home=child[1])
            return True
        return False

    execution, killed_at = start_and_kill_mid_step(cluster, job, plaintext_being_written)
    # The gpg child died with the worker's process group.
    wait_for(lambda: not Path(f"/proc/{seen['gpg']}").exists(), 5, "the killed worker's gpg process to be gone")
    assert seen["home"].is_dir()  # the dead worker could not remove its key home itself
    cluster.start_worker("w2", concurrency=2)

    lost = wait_lost(cluster, execution, killed_at)
    retry = wait_retry_completed(cluster, lost)

    assert sorted(path.name for path in inbox.iterdir()) == ["statement.txt", "statement.txt.pgp"]
    assert sha256(inbox / "statement.txt") == partner_file["sha256"]
    # The secret key imported by the killed worker does not stay on disk, nor its agent in memory.
    wait_for(lambda: not seen["home"].exists(), 10, f"the dead worker's GnuPG home {seen['home']} to be removed")
    wait_for(lambda: not agents_of(seen["home"]), 10, "the dead worker's gpg-agent to exit")
    assert_lost_is_on_record(cluster.database, lost)
    assert_retry_is_on_record(cluster.database, lost, retry)
    no_work_left(cluster)


def zip_job(cluster: CeleryCluster, policy: dict) -> tuple[Any, Path, Path]:
    source = write_random(cluster.data_dir / "outbox" / "ledger.bin", 48 * MB, seed=3)
    archive = cluster.data_dir / "archives" / "ledger.zip"
    job = make_job(
        [("file.zip", {"source_path": str(source), "output_path": str(archive)})], policy=policy, timeout=120
    )
    return job, source, archive


def archive_being_built(cluster: CeleryCluster) -> Callable[[Any], bool]:
    def check(execution: Any) -> bool:
        return size_of(first_match(cluster.data_dir / "work" / str(execution.pk), ".courier-build-*")) >= MB

    return check


def test_zip_killed_mid_archive_is_built_once_in_the_resumed_run(cluster: CeleryCluster) -> None:
    job, source, archive = zip_job(cluster, RETRY_JOB)

    execution, killed_at = start_and_kill_mid_step(cluster, job, archive_being_built(cluster))
    assert not archive.exists()
    cluster.start_worker("w2", concurrency=2)

    lost = wait_lost(cluster, execution, killed_at)
    retry = wait_retry_completed(cluster, lost)

    assert sorted(path.name for path in archive.parent.iterdir()) == ["ledger.zip"]
    with zipfile.ZipFile(archive) as bundle:
        assert bundle.namelist() == ["ledger.bin"]
        assert bundle.testzip() is None
        with bundle.open("ledger.bin") as packed:
            assert hashlib.sha256(packed.read()).hexdigest() == sha256(source)
    assert_lost_is_on_record(cluster.database, lost)
    assert_retry_is_on_record(cluster.database, lost, retry)
    no_work_left(cluster)  # the killed worker's half-built archive went with the resumed run


def redeliver_unacknowledged(broker_url: str) -> int:
    """What Redis does to the killed worker's unacknowledged messages once their visibility timeout
    passes (kombu's restore_visible); returns how many there were."""
    waiting = redis.Redis.from_url(broker_url).zcard("unacked_index")
    with BrokerConnection(broker_url, transport_options={"visibility_timeout": 0}) as broker:
        broker.default_channel.qos.restore_visible(num=100, interval=1)
    assert redis.Redis.from_url(broker_url).zcard("unacked_index") == 0
    return waiting


def test_zip_killed_with_the_stop_policy_fails_loudly_and_nothing_runs_again(cluster: CeleryCluster) -> None:
    job, _, archive = zip_job(cluster, STOP)
    cluster.extra_env["CELERY_TASK_LOG_LEVEL"] = "INFO"  # task results in the worker logs

    execution, killed_at = start_and_kill_mid_step(cluster, job, archive_being_built(cluster))
    # acks_late: the killed worker's message comes back; it must not run the step again or
    # bring the execution back to life, whether it arrives before or after the recovery.
    assert redeliver_unacknowledged(cluster.broker_url) == 1
    second = cluster.start_worker("w2", concurrency=2)

    lost = wait_lost(cluster, execution, killed_at)
    wait_for(lambda: "'not-claimed'" in second.output(), 20, "the redelivered message to be refused by the claim")
    time.sleep(2 * HEARTBEAT_TIMEOUT)  # a few more recovery rounds: still nothing runs

    assert state_of(cluster.database, execution.pk) == "failed"
    assert not JobExecution.objects.filter(retry_of_execution_id=lost.pk).exists()
    assert JobExecution.objects.filter(job_id=job.pk).count() == 1
    steps = cluster.database.scalar("SELECT count(*) FROM step_executions WHERE job_execution_id = %s", (execution.pk,))
    assert steps == 1
    assert not archive.exists()
    assert_lost_is_on_record(cluster.database, lost)
    assert audit_operations(cluster.database, lost.pk) == ["queued", "running", "failed"]
    # The partial archive is cleaned up: the failed run's work directory holds nothing half built.
    assert first_match(cluster.data_dir / "work" / str(execution.pk), ".courier-build-*") is None
