"""Worker peak memory moving 2 GiB through sftp.download -> pgp.decrypt -> sftp.upload (SPEC 9: <= 150 MB RSS)."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.engine_support import point_celery_at, private_broker_url, wait_finished, worker
from bench.support import Figure, Report, scratch_database

MIB = 1024 * 1024
GIB = 1024 * MIB
TARGET_MB = 150.0
SAMPLE_SECONDS = 0.1
# The worker sits idle this long before the job, for the anchor; it has already booted its pool.
IDLE_SECONDS = 3.0
# Steps of a 2 GiB file outlast the default 300 s step timeout on a slow disk.
STEP_TIMEOUT_SECONDS = 3600
JOB_TIMEOUT_SECONDS = 3 * STEP_TIMEOUT_SECONDS
# Room beyond the files themselves: gpg homes, logs, the scratch database's growth.
HEADROOM_BYTES = GIB
# Redis database of the benchmark broker: bench_schedule_firing uses /10, bench_job_pickup and
# bench_job_throughput /11, the test suite /12 and /13, bench_monitor_detection /14.
BROKER_DATABASE = 15
# Role of a child that has forked but not yet run exec: until then it shares (vfork) or copies
# its parent's pages, and its VmRSS is its parent's, which would count the parent twice.
FORKING = "forking"


@dataclass
class ProcessPeak:
    """One process of the worker's tree as the sampler saw it."""

    pid: int
    parent: int
    role: str  # main, pool, gpg, gpg-agent or other
    command: str
    peak_rss_mb: float = 0.0  # the largest VmRSS sampled
    # VmHWM as last read: the kernel's own peak, which also holds spikes between two samples.
    high_water_mb: float = 0.0

    @property
    def peak_mb(self) -> float:
        return max(self.peak_rss_mb, self.high_water_mb)


@dataclass
class TreeSample:
    at: float  # time.time(), comparable with the timestamps of the step rows
    rss_mb: dict[int, float]  # VmRSS of each process of the tree, forking children left out
    pss_mb: float  # the tree's proportional set size: pages shared between processes counted once

    @property
    def total_rss_mb(self) -> float:
        return sum(self.rss_mb.values())


def _process_table() -> dict[int, tuple[int, str]]:
    """Parent pid and command name of every process, from /proc/<pid>/stat."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:  # ended between the listing and the read
            continue
        # "pid (command) state ppid …": the command may hold spaces and parentheses.
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        table[int(name)] = (int(stat.rpartition(")")[2].split()[1]), command)
    return table


def _memory_mb(pid: int) -> tuple[float, float, float]:
    """VmRSS, VmHWM and Pss of a process in MB; zeros once it has ended."""
    values = {"VmRSS:": 0, "VmHWM:": 0, "Pss:": 0}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        lines += Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0.0, 0.0, 0.0
    for line in lines:
        fields = line.split()  # "VmRSS:\t  81234 kB", "Pss:      81234 kB"
        if fields and fields[0] in values:
            values[fields[0]] = int(fields[1])
    return values["VmRSS:"] / 1024, values["VmHWM:"] / 1024, values["Pss:"] / 1024


def _environment(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


class WorkerTreeSampler:
    """Resident memory of a Celery worker's processes, read from /proc every SAMPLE_SECONDS in a thread.

    The tree is the main process, its pool processes and their children (gpg), found by parent pid
    at every sample, plus the gpg-agent daemons those gpg runs start: an agent detaches from its
    parent, so it is recognised by the worker's private COURIER_DATA_DIR in its environment.
    """

    def __init__(self, main_pid: int) -> None:
        self.main_pid = main_pid
        self.data_dir = _environment(main_pid).get("COURIER_DATA_DIR")
        self.processes: dict[int, ProcessPeak] = {}
        self.samples: list[TreeSample] = []
        self._agents: dict[int, bool] = {}  # gpg-agent pid -> started by this worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="bench-worker-rss", daemon=True)
        if not self.data_dir:
            raise RuntimeError(f"cannot read the environment of the worker process {main_pid}")

    def __enter__(self) -> WorkerTreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample_until_stopped(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def sample(self) -> None:
        table = _process_table()
        rss_mb: dict[int, float] = {}
        pss_mb = 0.0
        for pid in self._members(table):
            role = self._role(pid, table)
            if role == FORKING:
                continue
            rss, high_water, pss = _memory_mb(pid)
            if not rss:  # ended since the table was read
                continue
            parent, command = table[pid]
            seen = self.processes.setdefault(pid, ProcessPeak(pid, parent, role, command))
            seen.role, seen.command = role, command  # a forking child becomes gpg at its exec
            seen.peak_rss_mb = max(seen.peak_rss_mb, rss)
            seen.high_water_mb = high_water
            rss_mb[pid] = rss
            pss_mb += pss
        self.samples.append(TreeSample(time.time(), rss_mb, pss_mb))

    def _members(self, table: dict[int, tuple[int, str]]) -> list[int]:
        children = defaultdict(list)
        for pid, (parent, _) in table.items():
            children[parent].append(pid)
        members, frontier = [], [self.main_pid] if self.main_pid in table else []
        while frontier:
            pid = frontier.pop()
            members.append(pid)
            frontier.extend(children[pid])
        for pid, (_, command) in table.items():
            if command == "gpg-agent" and pid not in members and self._started_by_worker(pid):
                members.append(pid)
        return members

    def _started_by_worker(self, pid: int) -> bool:
        if pid not in self._agents:
            self._agents[pid] = _environment(pid).get("COURIER_DATA_DIR") == self.data_dir
        return self._agents[pid]

    def _role(self, pid: int, table: dict[int, tuple[int, str]]) -> str:
        parent, command = table[pid]
        if pid == self.main_pid:
            return "main"
        if parent == self.main_pid:
            return "pool"
        if command in ("gpg", "gpg-agent"):
            return command
        if parent in table and table[parent][1] == command:
            return FORKING
        return "other"

    def peak_by_role(self, role: str) -> float:
        return max((seen.peak_mb for seen in self.processes.values() if seen.role == role), default=0.0)


def _peak_rss(samples: list[TreeSample], pid: int) -> float:
    return max((sample.rss_mb.get(pid, 0.0) for sample in samples), default=0.0)


def _peak_total(samples: list[TreeSample]) -> float:
    return max((sample.total_rss_mb for sample in samples), default=0.0)


def _check_free_space(size: int, work: Path, sftp_home: Path) -> None:
    """Fail before writing anything when a disk cannot hold the run's files."""
    needs = {
        work: size,  # the plaintext, removed once encrypted
        sftp_home: 2 * size,  # the encrypted file and the uploaded copy
        Path(tempfile.gettempdir()): 2 * size,  # the worker's data dir: downloaded and decrypted files
    }
    by_device: dict[int, tuple[list[Path], int]] = {}
    for path, need in needs.items():
        paths, total = by_device.get(path.stat().st_dev, ([], 0))
        by_device[path.stat().st_dev] = ([*paths, path], total + need)
    for paths, need in by_device.values():
        free = shutil.disk_usage(paths[0]).free
        if free < need + HEADROOM_BYTES:
            raise RuntimeError(
                f"a {size // MIB} MiB run needs {(need + HEADROOM_BYTES) / GIB:.1f} GiB free on the disk of"
                f" {', '.join(map(str, paths))}; it has {free / GIB:.1f} GiB (use --quick, or free some space)"
            )


def _write_random(path: Path, size: int) -> str:
    """size random bytes in path; returns their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        for _ in range(size // MIB):
            block = os.urandom(MIB)
            digest.update(block)
            handle.write(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def _gpg_command_line(home: Path) -> list[str]:
    # The options bench_pgp compares Courier's steps with: binary, no compression, AES-256.
    return [
        "gpg",
        "--homedir",
        str(home),
        "--batch",
        "--yes",
        "--trust-model",
        "always",
        "--compress-algo",
        "none",
        "--cipher-algo",
        "AES256",
        "--digest-algo",
        "SHA256",
    ]


def _command_peak_mb(command: list[str]) -> float:
    """Run command to its end; the peak resident memory of the program (VmHWM, read while it lives)."""
    peak = 0.0
    with tempfile.TemporaryFile() as messages:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=messages)
        while True:
            # Popen returns once the child has run exec: its VmHWM is the program's, not a copy of ours.
            peak = max(peak, _memory_mb(process.pid)[1])
            try:
                process.wait(SAMPLE_SECONDS)
                break
            except subprocess.TimeoutExpired:
                continue
        if process.returncode:
            messages.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed: {messages.read().decode(errors='replace')[-500:]}")
    return peak


@contextmanager
def _cli_home(work: Path, secret_armored: str) -> Iterator[Path]:
    """A GnuPG home for the gpg command line holding the bench key pair; its gpg-agent is stopped afterwards."""
    home = work / "cli-home"
    home.mkdir(mode=0o700)
    try:
        subprocess.run(
            ["gpg", "--homedir", str(home), "--batch", "--import"],
            input=secret_armored.encode(),
            check=True,
            capture_output=True,
        )
        yield home
    finally:
        # The agent detaches from gpg and would outlive the home it serves.
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False, capture_output=True)


@contextmanager
def _server_folder(server: Any, name: str) -> Iterator[Path]:
    """A folder in the SFTP account's home for this run, removed with its files afterwards."""
    from tests.servers import sftp_folder

    folder = sftp_folder(server, name)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _pipeline_job(connection_id: str, key_id: str, inbound: str, outbound: str) -> Any:
    from jobs.definitions import record_version
    from jobs.models import Job, JobStep

    job = Job.objects.create(name="pipeline memory")
    steps = [
        (
            "fetch the encrypted file",
            "sftp.download",
            {
                "connection_id": connection_id,
                "remote_path": inbound,
                "file_pattern": "*.pgp",
                "local_path": "downloads/",
            },
        ),
        (
            "decrypt it",
            "pgp.decrypt",
            {"input_path": "context:0.downloaded_files", "private_key_id": key_id, "output_path": "decrypted/"},
        ),
        (
            "deliver the plaintext",
            "sftp.upload",
            {"connection_id": connection_id, "local_path": "context:1.decrypted_files", "remote_path": f"{outbound}/"},
        ),
    ]
    for order, (name, type_key, configuration) in enumerate(steps):
        JobStep.objects.create(
            job=job,
            step_order=order,
            name=name,
            type_key=type_key,
            configuration=configuration,
            timeout_seconds=STEP_TIMEOUT_SECONDS,
        )
    record_version(job, created_by="bench")
    return job


def _step_notes(execution_id: Any, sampler: WorkerTreeSampler, pool_pid: int, size: int) -> list[str]:
    """Per step: its duration and the pool process's and tree's peaks while it ran."""
    from jobs.models import StepExecution

    parts = []
    for step in StepExecution.objects.filter(job_execution_id=execution_id).order_by("step_order"):
        start, end = step.started_at.timestamp(), step.completed_at.timestamp()
        during = [sample for sample in sampler.samples if start <= sample.at <= end]
        seconds = end - start
        parts.append(
            f"{step.type_key} {seconds:.1f} s ({size / MIB / seconds:,.0f} MiB/s): pool"
            f" {_peak_rss(during, pool_pid):.1f} MB, tree {_peak_total(during):.1f} MB"
        )
    return ["sampled peaks by step: " + "; ".join(parts)]


def _encrypted_payload(size: int, work: Path, home: Path, fingerprint: str, target: Path) -> str:
    """Random plaintext encrypted to fingerprint into target (removed once encrypted); returns its SHA-256."""
    from tests.servers import SFTP_USER

    plaintext = work / "payload.bin"
    sha256 = _write_random(plaintext, size)
    subprocess.run(
        [*_gpg_command_line(home), "--recipient", fingerprint, "--output", str(target), "--encrypt", str(plaintext)],
        check=True,
        capture_output=True,
    )
    plaintext.unlink()
    account = pwd.getpwnam(SFTP_USER)
    os.chown(target, account.pw_uid, account.pw_gid)
    return sha256


def _job_pool_process(sampler: WorkerTreeSampler) -> ProcessPeak:
    """The pool process that ran the job: the one that started gpg (concurrency 1 leaves one anyway)."""
    pools = [seen for seen in sampler.processes.values() if seen.role == "pool"]
    gpg_parents = {seen.parent for seen in sampler.processes.values() if seen.role == "gpg"}
    running = [seen for seen in pools if seen.pid in gpg_parents] or sorted(pools, key=lambda seen: -seen.peak_mb)
    if not running:
        raise RuntimeError("the sampler saw no pool process in the worker")
    return running[0]


def _measure(size: int, work: Path, report: Report, broker_url: str) -> None:
    from courier_site.envelope import keyring
    from jobs.engine import control
    from jobs.models import JobExecution
    from keystore.services import generate_pgp_key
    from tests.servers import sftp_connection, ssh_server

    key = generate_pgp_key("bench pipeline", "rsa_3072", by="bench")
    secret = json.loads(keyring().open_text(key.private_key_data))["armored"]
    tag = uuid.uuid4().hex[:8]
    with (
        ssh_server(work / "sshd") as server,
        _server_folder(server, f"bench-inbound-{tag}") as inbound,
        _server_folder(server, f"bench-outbound-{tag}") as outbound,
        _cli_home(work, secret) as home,
    ):
        encrypted = inbound / "payload.bin.pgp"
        expected_sha256 = _encrypted_payload(size, work, home, key.fingerprint, encrypted)
        cli_gpg_peak = _command_peak_mb(
            [*_gpg_command_line(home), "--output", "/dev/null", "--decrypt", str(encrypted)]
        )
        # Write back the files made so far, so that the job's steps do not share the disk with it.
        os.sync()

        connection = sftp_connection(server, host_key_policy="always_trust")
        job = _pipeline_job(str(connection.pk), str(key.pk), inbound.name, outbound.name)
        with worker(concurrency=1, broker_url=broker_url) as process, WorkerTreeSampler(process.pid) as sampler:
            time.sleep(IDLE_SECONDS)
            idle = list(sampler.samples)
            started = time.monotonic()
            execution = control.enqueue(job, triggered_by="manual:bench")
            wait_finished([execution.pk], timeout=JOB_TIMEOUT_SECONDS)
            elapsed = time.monotonic() - started
        execution = JobExecution.objects.get(pk=execution.pk)
        if execution.state != "completed":
            raise RuntimeError(f"the pipeline execution ended {execution.state}: {execution.error_message}")
        uploaded = outbound / "payload.bin"
        if uploaded.stat().st_size != size or _sha256(uploaded) != expected_sha256:
            raise RuntimeError(f"{uploaded} differs from the plaintext (size {uploaded.stat().st_size} of {size})")

    during = sampler.samples[len(idle) :]
    pool = _job_pool_process(sampler)
    report.figures.append(
        Figure(
            "peak RSS of the pool process running the job",
            pool.peak_mb,
            "MB",
            "same process idle before the job",
            _peak_rss(idle, pool.pid),
            target_absolute=TARGET_MB,
            higher_is_better=False,
        )
    )
    report.figures.append(
        Figure(
            "peak RSS of Courier's gpg (decrypt)",
            sampler.peak_by_role("gpg"),
            "MB",
            "gpg command line decrypting the same file",
            cli_gpg_peak,
            target_absolute=TARGET_MB,
            higher_is_better=False,
        )
    )
    report.figures.append(
        Figure(
            "peak RSS of the worker's process tree (sum)",
            _peak_total(during),
            "MB",
            "same tree idle before the job",
            _peak_total(idle),
            # Informational: the prefork main process and the pool process share most of their
            # pages, which a plain RSS sum counts twice; the target applies to the process
            # that moves the file (and to gpg), above.
            higher_is_better=False,
        )
    )
    report.notes.append(
        f"job {elapsed:.1f} s end to end ({size / MIB / elapsed:,.0f} MiB/s);"
        f" {len(during)} samples every {SAMPLE_SECONDS:g} s"
    )
    report.notes += _step_notes(execution.pk, sampler, pool.pid, size)
    report.notes.append(
        f"other peaks: main process {sampler.peak_by_role('main'):.1f} MB, gpg-agent"
        f" {sampler.peak_by_role('gpg-agent'):.1f} MB (in the tree sum); tree PSS (pages shared by the main"
        f" and pool processes counted once) {max(sample.pss_mb for sample in during):.1f} MB,"
        f" idle {max(sample.pss_mb for sample in idle):.1f} MB"
    )
    report.notes.append(
        "per-process peaks are the larger of the sampled VmRSS and the kernel's VmHWM; the tree sum is"
        " the largest simultaneous sample"
    )


def run(*, quick: bool = False) -> Report:
    from django.core.management import call_command

    from tests.servers import SFTP_HOME

    size = (256 if quick else 2048) * MIB
    report = Report(f"worker memory, {size // MIB} MiB through sftp.download -> pgp.decrypt -> sftp.upload")
    broker_url = private_broker_url(BROKER_DATABASE)
    point_celery_at(broker_url)
    # Beside the SFTP account's home, on a disk rather than a tmpfs that would hold the files in memory.
    work = Path(tempfile.mkdtemp(prefix="courier-bench-pipeline-", dir=SFTP_HOME.parent))
    try:
        _check_free_space(size, work, SFTP_HOME.parent)
        with scratch_database():
            call_command("migrate", verbosity=0, interactive=False)
            _measure(size, work, report, broker_url)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report
