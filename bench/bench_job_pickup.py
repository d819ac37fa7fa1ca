"""Job pickup latency queued -> running, p50/p95 (SPEC 9: p95 <= 0.5 s), against sweep-only polling."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from bench.engine_support import percentile, point_celery_at, set_concurrency_limit, sleep_job, wait_finished, worker
from bench.support import Figure, Report, scratch_database

SWEEP_SECONDS = 5.0  # the beat sweep interval, as in the original polling design


def _latencies(execution_ids: list[Any]) -> list[float]:
    from jobs.models import JobExecution

    rows = JobExecution.objects.filter(pk__in=execution_ids).values_list("queued_at", "started_at")
    return [(started - queued).total_seconds() for queued, started in rows if started and queued]


def _run(job: Any, count: int, spacing: float) -> list[Any]:
    from jobs.engine import control

    ids = []
    for _ in range(count):
        ids.append(control.enqueue(job, triggered_by="manual:bench").pk)
        time.sleep(spacing)
    return ids


def run(*, quick: bool = False) -> Report:
    from jobs.engine import control, dispatch

    broker = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    broker = broker.rsplit("/", 1)[0] + "/11"
    point_celery_at(broker)
    count = 10 if quick else 40
    report = Report("job pickup latency, queued -> running")
    with scratch_database():
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        set_concurrency_limit(5)
        job = sleep_job("pickup", 0.05)
        with worker(concurrency=5, broker_url=broker):
            # Courier: dispatch at enqueue (after commit) and at every completion.
            ids = _run(job, count, spacing=0.3)
            wait_finished(ids, 120)
            ours = _latencies(ids)

            # Anchor: the same worker, but executions only reach it through the periodic
            # sweep, which is how a polling scheduler picks work up.
            original = control.dispatch_soon
            control.dispatch_soon = lambda: None
            stop = threading.Event()

            def sweep() -> None:
                from django.db import connection

                while not stop.wait(SWEEP_SECONDS):
                    dispatch.dispatch()
                connection.close()

            sweeper = threading.Thread(target=sweep, daemon=True)
            sweeper.start()
            try:
                anchor_ids = _run(job, max(4, count // 4), spacing=1.3)
                wait_finished(anchor_ids, 120)
            finally:
                stop.set()
                sweeper.join()
                control.dispatch_soon = original
            anchor = _latencies(anchor_ids)
    report.figures.append(
        Figure(
            "p50 pickup",
            percentile(ours, 0.5),
            "s",
            f"sweep-only ({SWEEP_SECONDS:g} s) p50",
            percentile(anchor, 0.5),
            higher_is_better=False,
        )
    )
    report.figures.append(
        Figure(
            "p95 pickup",
            percentile(ours, 0.95),
            "s",
            f"sweep-only ({SWEEP_SECONDS:g} s) p95",
            percentile(anchor, 0.95),
            target_absolute=0.5,
            higher_is_better=False,
        )
    )
    report.notes.append(f"{len(ours)} executions measured, {len(anchor)} for the anchor; original design: 3-10 s")
    return report
