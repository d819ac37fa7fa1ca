"""Two beats and two clock workers for 2 minutes with 50 schedules due every 3 s: each instant fires exactly once.

The same scenario as tests/test_faults_beat_and_limits.py, which CI runs for 36 s: a
longer window gives a double fire or a missed instant more chances to show. The anchor
is the number of instants that fell due in the window; the targets are 0 duplicated and
0 missed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from bench.engine_support import point_celery_at, private_broker_url
from bench.support import Figure, Report

WINDOW_SECONDS = 120.0
SCHEDULES = 50


def run(*, quick: bool = False) -> Report:
    # These need Django set up, which python -m bench does before it imports run().
    from tests.celery_support import CeleryCluster, live_database
    from tests.fault_support import two_beats_fire_every_instant_once

    seconds = 30.0 if quick else WINDOW_SECONDS
    broker = private_broker_url(9)
    point_celery_at(broker)
    # Queues of this run only: its clock workers must never take an installation's tasks.
    original_queue = os.environ.get("COURIER_QUEUE")
    os.environ["COURIER_QUEUE"] = f"courier-bench-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="courier-bench-beats-"))
    try:
        with live_database() as database:
            cluster = CeleryCluster(database, broker, work / "data", work)
            try:
                counts = two_beats_fire_every_instant_once(cluster, seconds, schedules=SCHEDULES)
            finally:
                cluster.stop_all()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if original_queue is None:
            os.environ.pop("COURIER_QUEUE", None)
        else:
            os.environ["COURIER_QUEUE"] = original_queue
    report = Report(f"two beats and two clock workers, {SCHEDULES} schedules, {seconds:g} s")
    report.figures.append(
        Figure("instants fired", counts.due - counts.missed, "instants", "instants due", counts.due, target_ratio=1.0)
    )
    report.figures.append(
        Figure(
            "instants fired twice",
            counts.duplicated,
            "fires",
            "instants due",
            counts.due,
            target_absolute=0,
            higher_is_better=False,
        )
    )
    report.notes.append(
        f"fired {counts.fired} executions, {counts.fired_audits} fired audits, "
        f"{counts.missed} missed, largest lateness {counts.max_lateness_ms} ms"
    )
    return report
