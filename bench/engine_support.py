"""A real Celery worker against the benchmark's scratch database, and job helpers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    from django.db import connection

    settings = connection.settings_dict
    auth = settings["USER"] + (f":{settings['PASSWORD']}" if settings.get("PASSWORD") else "")
    return f"postgresql://{auth}@{settings['HOST'] or '127.0.0.1'}:{settings['PORT'] or 5432}/{settings['NAME']}"


@contextmanager
def worker(concurrency: int, broker_url: str) -> Iterator[subprocess.Popen]:
    """A `celery worker` process with the bench step types; waits until it reports its heartbeat."""
    from django.conf import settings
    from django.db import connection

    data_dir = tempfile.mkdtemp(prefix="courier-bench-")
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": broker_url,
        "REDIS_URL": broker_url,
        "COURIER_DATA_DIR": data_dir,
        "COURIER_STEP_MODULES": "bench.steps",
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "courier_site",
            "worker",
            "--queues",
            settings.COURIER_QUEUE,
            "--loglevel",
            "WARNING",
            "--concurrency",
            str(concurrency),
            "--hostname",
            "bench@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM process_heartbeats WHERE kind = 'worker' AND stopped_at IS NULL")
                if cursor.fetchone()[0]:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError("the benchmark worker did not start")
        time.sleep(1.0)  # let the pool processes finish booting
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


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
