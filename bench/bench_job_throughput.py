"""Throughput of 1-second jobs at concurrency 5 against the concurrency bound (SPEC 9: >= 90 %)."""

from __future__ import annotations

import os
import time

from bench.engine_support import point_celery_at, set_concurrency_limit, sleep_job, wait_finished, worker
from bench.support import Figure, Report, scratch_database

JOB_SECONDS = 1.0


def _throughput(job: object, count: int) -> float:
    from jobs.engine import control
    from jobs.models import JobExecution

    started = time.monotonic()
    ids = [control.enqueue(job, triggered_by="manual:bench").pk for _ in range(count)]
    wait_finished(ids, 600)
    elapsed = time.monotonic() - started
    failed = JobExecution.objects.filter(pk__in=ids).exclude(state="completed").count()
    if failed:
        raise RuntimeError(f"{failed} benchmark executions did not complete")
    return count / elapsed


def run(*, quick: bool = False) -> Report:
    broker = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    broker = broker.rsplit("/", 1)[0] + "/11"
    point_celery_at(broker)
    count = 15 if quick else 50
    report = Report(f"throughput of {JOB_SECONDS:g}-second jobs")
    with scratch_database():
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        job = sleep_job("throughput", JOB_SECONDS)
        with worker(concurrency=6, broker_url=broker):
            set_concurrency_limit(5)
            ours = _throughput(job, count)
            # Anchor: the original design ran one job at a time per worker.
            set_concurrency_limit(1)
            anchor = _throughput(job, max(5, count // 5))
    bound = 5 / JOB_SECONDS
    report.figures.append(Figure("jobs/s at concurrency 5", ours, "jobs/s", "one job at a time", anchor))
    report.figures.append(
        Figure("share of the concurrency bound", ours / bound * 100, "%", "bound (5 jobs/s)", 100.0, target_absolute=90)
    )
    report.notes.append(f"{count} executions of a {JOB_SECONDS:g} s step; bound = 5 concurrent / {JOB_SECONDS:g} s")
    return report
