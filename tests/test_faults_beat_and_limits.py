"""Two beats and two clock workers fire each instant once, a beat stops when told, the concurrency limit holds."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.celery_support import CeleryCluster, LiveDatabase, wait_for
from tests.fault_support import two_beats_fire_every_instant_once

pytestmark = pytest.mark.celery

# The soak benchmark runs the same scenario for two minutes; CI keeps to well under one.
BEAT_SECONDS = 36


@pytest.fixture
def cluster(
    live: LiveDatabase, django_db_blocker: Any, redis_url: str, tmp_path: Path, settings: Any
) -> Iterator[CeleryCluster]:
    redis.Redis.from_url(redis_url).flushdb()
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    group = CeleryCluster(live, redis_url, tmp_path / "data", tmp_path)
    with django_db_blocker.unblock():
        try:
            yield group
        finally:
            group.stop_all()
            live.execute("UPDATE job_schedules SET is_enabled = false")
            live.execute("UPDATE system_settings SET value = '5' WHERE key = 'job.concurrency_limit'")
            live.execute("UPDATE job_executions SET state = 'cancelled' WHERE state IN ('queued', 'running', 'paused')")
            live.execute("UPDATE process_heartbeats SET stopped_at = now() WHERE stopped_at IS NULL")


def test_two_beats_and_two_clock_workers_fire_each_instant_of_50_schedules_exactly_once(
    cluster: CeleryCluster,
) -> None:
    counts = two_beats_fire_every_instant_once(cluster, BEAT_SECONDS, schedules=50)

    assert counts.due >= 50 * 8  # every schedule fell due several times in the window
    assert counts.duplicated == 0, counts
    assert counts.missed == 0, counts
    assert counts.fired_audits == counts.fired, counts


def test_a_beat_told_to_stop_several_times_at_once_exits_and_records_its_stop(cluster: CeleryCluster) -> None:
    # A process manager signals the whole group and bin/respawn passes the signal on: beat gets
    # SIGTERM twice or more, the later ones arriving while the first is still being handled.
    beat = cluster.start_beat()
    until = time.monotonic() + 1
    while time.monotonic() < until and beat.process.poll() is None:
        with suppress(ProcessLookupError):
            os.kill(beat.process.pid, signal.SIGTERM)
        time.sleep(0.0002)
    try:
        beat.process.wait(20)
    except subprocess.TimeoutExpired:
        pytest.fail("beat did not exit within 20 s of SIGTERM")
    assert cluster.database.scalar(
        "SELECT stopped_at IS NOT NULL FROM process_heartbeats WHERE kind = 'beat' AND pid = %s", (beat.process.pid,)
    )


def test_the_concurrency_limit_holds_across_three_workers(cluster: CeleryCluster) -> None:
    from jobs.engine import control
    from tests.engine_support import make_job

    limit = 3
    cluster.database.execute("UPDATE system_settings SET value = %s WHERE key = 'job.concurrency_limit'", (str(limit),))
    workers = [cluster.start_worker(f"w{n}", concurrency=3, wait=False) for n in (1, 2, 3)]
    cluster.start_beat()  # its 5 s dispatch sweep is one more dispatcher racing the workers'
    wait_for(
        lambda: (
            cluster.database.scalar(
                "SELECT count(*) FROM process_heartbeats WHERE kind = 'worker' AND stopped_at IS NULL"
                " AND process_name ~ '^w[123]@'"
            )
            == len(workers)
        ),
        60,
        "three workers to start",
        interval=0.2,
    )
    job = make_job([("test.sleep", {"seconds": 1})], name="limited")
    ids = [str(control.enqueue(job, triggered_by="manual:tester").pk) for _ in range(20)]
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(
                cluster.database.scalar(
                    "SELECT count(*) FROM job_executions WHERE id = ANY(%s::uuid[]) AND state = 'running'", (ids,)
                )
            )
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        wait_for(
            lambda: (
                cluster.database.scalar(
                    "SELECT count(*) FROM job_executions WHERE id = ANY(%s::uuid[]) AND state = 'completed'", (ids,)
                )
                == len(ids)
            ),
            60,
            "all 20 executions to complete",
            interval=0.2,
        )
    finally:
        done.set()
        sampler.join()

    assert max(samples) == limit, samples  # the limit was reached, never passed
    spread = cluster.database.scalar(
        "SELECT count(DISTINCT worker_name) FROM job_executions WHERE id = ANY(%s::uuid[])", (ids,)
    )
    assert spread == len(workers)
