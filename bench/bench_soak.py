"""Soak under chaos: short runs on 2 workers while one is SIGKILLed every 30-60 s; 0 lost, 0 duplicated.

The workload is a mix of local runs (write a payload, work for a second, copy it out of
the work directory) and SFTP round trips (write, work, upload to the test sshd, download
it back), enqueued at a steady rate. Two Celery workers share one COURIER_DATA_DIR, as the workers of one
installation do; beat runs the dispatch sweep and the crash recovery. A chaos loop kills
the whole process group of a random worker every 30-60 s and starts it again at once, as
a supervisor would.

Every enqueued run is followed through its retries (`retry_of_execution_id`) to its end:

- completed: the last execution of the run completed and its output exists (the copied
  file, or the file uploaded and downloaded back with the same bytes);
- failed: the run ended failed (a clear error; no retries left);
- lost: the run never reached a final state within the drain time, or it completed and
  its output is missing;
- duplicated: more than one execution of the run completed.

The anchor is the same workload without chaos, run first in the same process: the
pickup latency (queued -> running) under chaos is compared with it. Targets: 0 lost,
0 duplicated, every run final.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.engine_support import (
    beat,
    percentile,
    point_celery_at,
    private_broker_url,
    private_queues,
    set_concurrency_limit,
    start_worker,
    stop_process,
)
from bench.support import Figure, Report, scratch_database

WORKERS = 2
WORKER_CONCURRENCY = 4
CONCURRENCY_LIMIT = 6
SFTP_SHARE = 0.25  # one run in four is an SFTP round trip
PAYLOAD_BYTES = 64 * 1024
# Each run also works this long, so that a few runs are always in flight when a worker dies.
WORK_SECONDS = 1.0
HEARTBEAT_TIMEOUT_SECONDS = 5  # a killed worker's runs are recovered this long after its last beat
KILL_EVERY_SECONDS = (30.0, 60.0)
KILL_EVERY_SECONDS_QUICK = (10.0, 20.0)  # a smoke run still sees several kills
RETRY_POLICY = {"type": "retry_step", "max_retries": 3, "backoff_base_seconds": 1, "backoff_max_seconds": 5}


@dataclass
class Run:
    """One logical run as an operator sees it: the execution enqueued and its retries."""

    key: str
    kind: str  # "local" or "sftp"
    root_id: str
    enqueued_at: float


@dataclass
class Outcome:
    started: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    duplicated: int = 0
    resumed: int = 0  # runs that needed a retry execution (their worker was killed)
    pickup_seconds: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Workers:
    """WORKERS restartable Celery workers sharing one data directory."""

    def __init__(self, broker_url: str, data_dir: Path, queues: list[str]) -> None:
        self.broker_url = broker_url
        self.data_dir = data_dir
        self.queues = queues
        self.processes: dict[int, subprocess.Popen] = {}
        self.kills = 0

    def start(self, slot: int) -> None:
        process, _ = start_worker(
            WORKER_CONCURRENCY,
            self.broker_url,
            str(self.data_dir),
            queues=self.queues,
            hostname=f"soak{slot}",
            log_name=f"worker-{slot}.log",
        )
        self.processes[slot] = process

    def kill_one(self, rng: random.Random) -> None:
        slot = rng.choice(sorted(self.processes))
        process = self.processes[slot]
        # The whole group: the main process and its pool children die at once, as on an OOM kill.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        self.kills += 1
        self.start(slot)

    def stop_all(self) -> None:
        for process in self.processes.values():
            stop_process(process)


def _chaos(workers: Workers, stop: threading.Event, rng: random.Random, every: tuple[float, float]) -> None:
    while not stop.wait(rng.uniform(*every)):
        workers.kill_one(rng)


def _jobs(connection_id: str, remote_dir: str, out_dir: Path) -> dict[str, Any]:
    from jobs.definitions import record_version
    from jobs.models import Job, JobStep

    definitions = {
        "local": [
            ("payload", "bench.write", {"name": "context:trigger.payload", "size": PAYLOAD_BYTES}),
            ("work", "bench.sleep", {"seconds": WORK_SECONDS}),
            ("copy out", "file.copy", {"source_path": "context:0.written_file", "destination_path": f"{out_dir}/"}),
        ],
        "sftp": [
            ("payload", "bench.write", {"name": "context:trigger.payload", "size": PAYLOAD_BYTES}),
            ("work", "bench.sleep", {"seconds": WORK_SECONDS}),
            (
                "upload",
                "sftp.upload",
                {"connection_id": connection_id, "local_path": "context:0.written_file", "remote_path": remote_dir},
            ),
            (
                "download back",
                "sftp.download",
                {
                    "connection_id": connection_id,
                    "remote_path": remote_dir,
                    "file_pattern": "context:trigger.payload",
                    "local_path": "back/",
                },
            ),
        ],
    }
    jobs = {}
    for kind, steps in definitions.items():
        job = Job.objects.create(name=f"soak {kind} {uuid.uuid4().hex[:6]}", failure_policy=RETRY_POLICY)
        for order, (name, type_key, configuration) in enumerate(steps):
            JobStep.objects.create(
                job=job, step_order=order, name=name, type_key=type_key, configuration=configuration, timeout_seconds=60
            )
        record_version(job, created_by="bench")
        jobs[kind] = job
    return jobs


def _enqueue_runs(jobs: dict[str, Any], count: int, seconds: float, rng: random.Random, phase: str) -> list[Run]:
    from jobs.engine import control

    runs = []
    interval = seconds / count
    started = time.monotonic()
    for index in range(count):
        kind = "sftp" if rng.random() < SFTP_SHARE else "local"
        key = f"{phase}-{index:05d}-{uuid.uuid4().hex[:6]}"
        execution = control.enqueue(
            jobs[kind],
            triggered_by="manual:bench",
            context={"trigger.run": key, "trigger.payload": f"{key}.dat"},
        )
        runs.append(Run(key, kind, str(execution.pk), time.monotonic()))
        delay = started + (index + 1) * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return runs


def _chains(root_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each root execution with its retries, oldest first."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH RECURSIVE chain AS (
                SELECT id, id AS root_id, state, queued_at, started_at, 0 AS depth
                FROM job_executions WHERE id = ANY(%s::uuid[])
                UNION ALL
                SELECT e.id, chain.root_id, e.state, e.queued_at, e.started_at, chain.depth + 1
                FROM job_executions e JOIN chain ON e.retry_of_execution_id = chain.id
            )
            SELECT root_id, id, state, queued_at, started_at FROM chain ORDER BY root_id, depth
            """,
            [root_ids],
        )
        rows = cursor.fetchall()
    chains: dict[str, list[dict[str, Any]]] = {root: [] for root in root_ids}
    for root_id, execution_id, state, queued_at, started_at in rows:
        chains[str(root_id)].append(
            {"id": str(execution_id), "state": state, "queued_at": queued_at, "started_at": started_at}
        )
    return chains


def _drain(root_ids: list[str], timeout: float) -> None:
    """Wait until every run's latest execution is final (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chains = _chains(root_ids).values()
        if all(chain and chain[-1]["state"] in ("completed", "failed", "cancelled") for chain in chains):
            return
        time.sleep(1.0)


def _output_problem(run: Run, out_dir: Path, remote_dir: Path, completed_id: str) -> str | None:
    """What is wrong with the run's delivery (None: delivered once, whole, no temporary name left)."""
    from jobs.models import StepExecution

    name = f"{run.key}.dat"
    if run.kind == "local":
        copied = out_dir / name
        if not copied.is_file():
            return f"{copied} is missing"
        return None if copied.stat().st_size == PAYLOAD_BYTES else f"{copied} has {copied.stat().st_size} bytes"
    uploaded = remote_dir / name
    if not uploaded.is_file():
        return f"remote {uploaded} is missing"
    if uploaded.stat().st_size != PAYLOAD_BYTES:
        return f"remote {uploaded} has {uploaded.stat().st_size} bytes"
    beside = [path.name for path in remote_dir.iterdir() if path.name.startswith(name) and path.name != name]
    if beside:
        return f"left beside the delivered file: {', '.join(beside)}"
    downloads = list(
        StepExecution.objects.filter(job_execution_id=completed_id, type_key="sftp.download")
        .order_by("started_at")
        .values_list("state", "bytes_processed", "error_message")
    )
    if [(state, size) for state, size, _ in downloads if state == "completed"] != [("completed", PAYLOAD_BYTES)]:
        return f"download steps of execution {completed_id}: {downloads}"
    return None


def _leftovers(data_dir: Path, remote_dir: Path) -> list[str]:
    """Temporary transfer files anywhere a run wrote: none may survive the runs that made them."""
    found = [path for path in data_dir.rglob("*.courier-part")]
    found += [path for path in remote_dir.glob("*.courier-tmp")]
    return [str(path) for path in found]


def _describe(chain: list[dict[str, Any]]) -> str:
    """The executions of one run with their steps, for a problem note."""
    from jobs.models import JobExecution, StepExecution

    parts = []
    for execution in chain:
        error = JobExecution.objects.filter(pk=execution["id"]).values_list("error_message", flat=True).first()
        steps = StepExecution.objects.filter(job_execution_id=execution["id"]).order_by("started_at")
        listed = ", ".join(f"{step.step_order}:{step.state}:{step.bytes_processed}" for step in steps)
        parts.append(f"{execution['state']}{f' ({error})' if error else ''} [{listed}]")
    return " -> ".join(parts)


def _judge(runs: list[Run], out_dir: Path, remote_dir: Path) -> Outcome:
    outcome = Outcome(started=len(runs))
    chains = _chains([run.root_id for run in runs])
    for run in runs:
        chain = chains[run.root_id]
        root = chain[0]
        if root["started_at"] is not None:
            outcome.pickup_seconds.append((root["started_at"] - root["queued_at"]).total_seconds())
        completed = [execution for execution in chain if execution["state"] == "completed"]
        if len(chain) > 1:
            outcome.resumed += 1
        if len(completed) > 1:
            outcome.duplicated += 1
            outcome.problems.append(f"run {run.key}: {len(completed)} executions completed")
        final = chain[-1]["state"]
        if final == "completed":
            problem = _output_problem(run, out_dir, remote_dir, completed[-1]["id"])
            if problem is None:
                outcome.completed += 1
            else:
                outcome.lost += 1
                outcome.problems.append(f"run {run.key} ({run.kind}) completed, but {problem}: {_describe(chain)}")
        elif final in ("failed", "cancelled"):
            outcome.failed += 1
        else:
            outcome.lost += 1
            outcome.problems.append(f"run {run.key} ({run.kind}) still {final} after the drain: {_describe(chain)}")
    return outcome


def _failure_reasons(runs: list[Run], limit: int = 5) -> list[str]:
    from jobs.models import JobExecution

    chains = _chains([run.root_id for run in runs])
    failed_ids = [chain[-1]["id"] for chain in chains.values() if chain and chain[-1]["state"] == "failed"]
    return list(
        JobExecution.objects.filter(pk__in=failed_ids).values_list("error_message", flat=True).distinct()[:limit]
    )


def _phase(
    label: str, jobs: dict[str, Any], count: int, seconds: float, rng: random.Random, drain_seconds: float
) -> list[Run]:
    print(f"  {label}: {count} runs over {seconds:g} s …", flush=True)
    runs = _enqueue_runs(jobs, count, seconds, rng, label)
    _drain([run.root_id for run in runs], drain_seconds)
    return runs


def run(*, quick: bool = False) -> Report:
    from tests.servers import sftp_connection, sftp_folder, ssh_server

    count, seconds = (240, 120.0) if quick else (2000, 600.0)
    calm_count, calm_seconds = (40, 20.0) if quick else (200, 60.0)
    rng = random.Random(int(os.environ.get("COURIER_SOAK_SEED", "11")))
    # Children inherit these: recovery a few seconds after a kill instead of a minute.
    os.environ["COURIER_HEARTBEAT_INTERVAL"] = "1"
    os.environ["COURIER_HEARTBEAT_TIMEOUT"] = str(HEARTBEAT_TIMEOUT_SECONDS)
    os.environ["COURIER_REDISPATCH_AFTER_SECONDS"] = "10"
    broker = private_broker_url(10)
    point_celery_at(broker)
    work = Path(tempfile.mkdtemp(prefix="courier-soak-"))
    data_dir = work / "data"
    out_dir = data_dir / "out"
    out_dir.mkdir(parents=True)
    report = Report("soak: short executions while workers are SIGKILLed")
    try:
        with scratch_database(), private_queues(broker) as queue, ssh_server(work / "sshd") as server:
            from django.conf import settings
            from django.core.management import call_command

            call_command("migrate", verbosity=0, interactive=False)
            settings.COURIER_DATA_DIR = data_dir
            set_concurrency_limit(CONCURRENCY_LIMIT)
            remote = sftp_folder(server, f"soak-{uuid.uuid4().hex[:6]}")
            connection = sftp_connection(server)
            jobs = _jobs(str(connection.pk), f"{remote}/", out_dir)
            workers = Workers(broker, data_dir, [queue, f"{queue}-control"])
            with beat(broker):
                try:
                    for slot in range(WORKERS):
                        workers.start(slot)
                    calm = _phase("calm", jobs, calm_count, calm_seconds, rng, 120)
                    stop = threading.Event()
                    every = KILL_EVERY_SECONDS_QUICK if quick else KILL_EVERY_SECONDS
                    chaos = threading.Thread(target=_chaos, args=(workers, stop, rng, every), daemon=True)
                    chaos.start()
                    try:
                        stormy = _enqueue_runs(jobs, count, seconds, rng, "chaos")
                    finally:
                        stop.set()
                        chaos.join(30)
                    print("  chaos over; draining …", flush=True)
                    _drain([run.root_id for run in stormy], HEARTBEAT_TIMEOUT_SECONDS + 120)
                finally:
                    workers.stop_all()
            calm_outcome = _judge(calm, out_dir, remote)
            outcome = _judge(stormy, out_dir, remote)
            outcome.problems += [f"left behind: {path}" for path in _leftovers(data_dir, remote)]
            reasons = _failure_reasons(stormy)
            shutil.rmtree(remote, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    _report(report, outcome, calm_outcome, workers.kills, seconds, reasons)
    return report


def _report(report: Report, outcome: Outcome, calm: Outcome, kills: int, seconds: float, reasons: list[str]) -> None:
    p95 = percentile(outcome.pickup_seconds, 0.95) if outcome.pickup_seconds else float("inf")
    calm_p95 = percentile(calm.pickup_seconds, 0.95) if calm.pickup_seconds else float("inf")
    report.figures.append(
        Figure(
            "runs lost",
            outcome.lost,
            "runs",
            "runs started",
            outcome.started,
            target_absolute=0,
            higher_is_better=False,
        )
    )
    report.figures.append(
        Figure(
            "runs duplicated",
            outcome.duplicated,
            "runs",
            "runs started",
            outcome.started,
            target_absolute=0,
            higher_is_better=False,
        )
    )
    report.figures.append(Figure("runs completed", outcome.completed, "runs", "runs started", outcome.started))
    report.figures.append(
        Figure(
            "pickup latency p95 under chaos", p95, "s", "the same load without chaos", calm_p95, higher_is_better=False
        )
    )
    report.notes.append(
        f"{outcome.started} runs over {seconds:g} s on {WORKERS} workers x {WORKER_CONCURRENCY} processes "
        f"(limit {CONCURRENCY_LIMIT}); {kills} worker kills; started {outcome.started}, completed "
        f"{outcome.completed}, failed {outcome.failed}, duplicated {outcome.duplicated}, lost {outcome.lost}; "
        f"{outcome.resumed} runs resumed in a retry execution after their worker died"
    )
    report.notes.append(
        f"calm anchor: {calm.started} runs, completed {calm.completed}, failed {calm.failed}, lost {calm.lost}"
    )
    for reason in reasons:
        report.notes.append(f"a failure: {reason}")
    for problem in outcome.problems[:10]:
        report.notes.append(problem)
