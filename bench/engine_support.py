"""Real Celery worker and beat processes against the benchmark's scratch database, and job helpers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    from django.db import connection

    settings = connection.settings_dict
    auth = settings["USER"] + (f":{settings['PASSWORD']}" if settings.get("PASSWORD") else "")
    return f"postgresql://{auth}@{settings['HOST'] or '127.0.0.1'}:{settings['PORT'] or 5432}/{settings['NAME']}"


def private_broker_url(index: int) -> str:
    """The configured Redis server with another database number, so benchmark messages stay apart."""
    base = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    head, _, tail = base.rpartition("/")
    return f"{head}/{index}" if tail.isdigit() else f"{base.rstrip('/')}/{index}"


def _process_environment(broker_url: str, data_dir: str) -> dict[str, str]:
    from django.conf import settings

    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": broker_url,
        "REDIS_URL": broker_url,
        "COURIER_DATA_DIR": data_dir,
        "COURIER_STEP_MODULES": "bench.steps",
        # The queue names this process routes to; a benchmark that chose private ones must
        # not have its children fall back to the queues of a real installation.
        "COURIER_QUEUE": settings.COURIER_QUEUE,
        "COURIER_CONTROL_QUEUE": settings.COURIER_CONTROL_QUEUE,
        "PYTHONPATH": str(ROOT),
    }


def _start_celery(
    arguments: list[str], broker_url: str, data_dir: str, log_name: str = "celery.log"
) -> tuple[subprocess.Popen, Path]:
    """Start `celery -A courier_site <arguments>` in a session of its own, logging into data_dir."""
    log_path = Path(data_dir) / log_name
    with log_path.open("a") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "courier_site", *arguments],
            cwd=ROOT,
            env=_process_environment(broker_url, data_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, log_path


def _wait_for_heartbeat(kind: str, process: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    """Wait for the heartbeat row the process writes once it is ready; fail early when it exits."""
    from django.db import connection

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the benchmark {kind} exited with {process.returncode}: {_tail(log_path)}")
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM process_heartbeats WHERE kind = %s AND pid = %s AND stopped_at IS NULL",
                [kind, process.pid],
            )
            if cursor.fetchone()[0]:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the benchmark {kind} did not start within {timeout:g} s: {_tail(log_path)}")


def _tail(log_path: Path, characters: int = 2000) -> str:
    return log_path.read_text(errors="replace")[-characters:] if log_path.exists() else "(no output)"


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM (Celery's warm shutdown), then SIGKILL for the whole process group."""
    if process.poll() is None:
        # To the main process only: it stops its pool children itself and marks its
        # heartbeat stopped; a SIGTERM to the group would kill the children under it.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    # Pool processes left behind by a main process that died go with their group.
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def start_worker(
    concurrency: int,
    broker_url: str,
    data_dir: str,
    *,
    queues: Sequence[str] = (),
    hostname: str = "bench",
    log_name: str = "celery.log",
) -> tuple[subprocess.Popen, Path]:
    """Start a `celery worker` with the bench step types on queues (default COURIER_QUEUE); wait until ready.

    Several workers may share data_dir, as the workers of one installation share COURIER_DATA_DIR.
    """
    from django.conf import settings

    process, log_path = _start_celery(
        [
            "worker",
            "--queues",
            ",".join(queues or [settings.COURIER_QUEUE]),
            "--loglevel",
            "WARNING",
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{hostname}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        broker_url,
        data_dir,
        log_name,
    )
    try:
        _wait_for_heartbeat("worker", process, log_path)
    except BaseException:
        stop_process(process)
        raise
    return process, log_path


@contextmanager
def worker(concurrency: int, broker_url: str, queues: Sequence[str] = ()) -> Iterator[subprocess.Popen]:
    """A `celery worker` process with the bench step types; waits until it reports its heartbeat.

    It consumes queues, by default COURIER_QUEUE (job runs).
    """
    data_dir = tempfile.mkdtemp(prefix="courier-bench-")
    try:
        process, _ = start_worker(concurrency, broker_url, data_dir, queues=queues)
        try:
            time.sleep(1.0)  # let the pool processes finish booting
            yield process
        finally:
            stop_process(process)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def beat(broker_url: str) -> Iterator[subprocess.Popen]:
    """A `celery beat` process with Courier's beat schedule; waits until it reports its heartbeat."""
    data_dir = tempfile.mkdtemp(prefix="courier-bench-beat-")
    # A schedule file of its own: the default one belongs to the installation's beat.
    schedule_file = Path(data_dir) / "celerybeat-schedule"
    process, log_path = _start_celery(
        ["beat", "--schedule", str(schedule_file), "--loglevel", "WARNING"], broker_url, data_dir
    )
    try:
        _wait_for_heartbeat("beat", process, log_path)
        yield process
    finally:
        stop_process(process)
        shutil.rmtree(data_dir, ignore_errors=True)


def point_celery_at(broker_url: str) -> None:
    from courier_site.celery import app

    os.environ["CELERY_BROKER_URL"] = broker_url  # Celery reads it before its own configuration
    app.conf.broker_url = broker_url
    app._pool = None
    app.amqp._producer_pool = None


def sleep_job(name: str, seconds: float) -> Any:
    from jobs.definitions import record_version
    from jobs.models import Job, JobStep

    job = Job.objects.create(name=name)
    JobStep.objects.create(
        job=job, step_order=0, name="sleep", type_key="bench.sleep", configuration={"seconds": seconds}
    )
    record_version(job, created_by="bench")
    return job


def set_concurrency_limit(limit: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("UPDATE system_settings SET value = %s WHERE key = 'job.concurrency_limit'", [str(limit)])


def wait_finished(execution_ids: list[Any], timeout: float) -> None:
    from jobs.models import JobExecution

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not JobExecution.objects.filter(pk__in=execution_ids).exclude(state__in=("completed", "failed")).exists():
            return
        time.sleep(0.05)
    raise RuntimeError(f"executions still running after {timeout} s")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


@contextmanager
def private_queues(broker_url: str) -> Iterator[str]:
    """Queue names of this run only, so no message reaches the workers of a real installation;
    afterwards the queues are deleted with whatever nobody consumed."""
    import uuid

    from django.conf import settings
    from kombu import Connection, Exchange, Queue

    original = settings.COURIER_QUEUE, settings.COURIER_CONTROL_QUEUE
    queue = f"courier-bench-{uuid.uuid4().hex[:8]}"
    settings.COURIER_QUEUE, settings.COURIER_CONTROL_QUEUE = queue, f"{queue}-control"
    try:
        yield queue
    finally:
        settings.COURIER_QUEUE, settings.COURIER_CONTROL_QUEUE = original
        with Connection(broker_url) as connection:
            channel = connection.default_channel
            for name in (queue, f"{queue}-control", f"{queue}-monitors"):
                # Celery's own shape for a queue it creates; declared first so that the channel
                # knows the binding that delete() must remove along with the messages.
                bound = Queue(name, Exchange(name), routing_key=name)(channel)
                bound.declare()
                bound.delete()
