"""Schedules and chains with real Celery worker, beat and Redis: beat fires, chains run to their end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.celery_support import ROOT, CeleryCluster, LiveDatabase, wait_for

pytestmark = pytest.mark.celery


@pytest.fixture
def cluster(live: LiveDatabase, django_db_blocker: Any, redis_url: str, tmp_path: Path, settings: Any):
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
            live.execute("UPDATE chain_executions SET state = 'cancelled' WHERE state IN ('pending', 'running')")
            live.execute("UPDATE job_executions SET state = 'cancelled' WHERE state IN ('queued', 'running', 'paused')")
            live.execute("UPDATE process_heartbeats SET stopped_at = now() WHERE stopped_at IS NULL")


def make_job(name: str, seconds: float = 0.05) -> Any:
    from tests.engine_support import make_job as build

    return build([("test.sleep", {"seconds": seconds})], name=name)


def test_beat_fires_a_per_second_schedule_and_the_worker_runs_it(cluster: CeleryCluster) -> None:
    from jobs import scheduling
    from jobs.models import JobExecution, JobSchedule

    cluster.start_worker("w1")
    job = make_job("every second")
    schedule = JobSchedule(job=job, schedule_type="cron", cron_expression="* * * * * ? *")
    scheduling.refresh(schedule)
    schedule.save()
    beat = cluster.start_beat(wait=False)
    try:
        wait_for(
            lambda: JobExecution.objects.filter(job=job, triggered_by="schedule", state="completed").count() >= 2,
            40,
            "two scheduled runs to complete",
        )
    finally:
        beat.stop()
    instants = [
        run.context_snapshot["values"]["trigger.scheduled_for"]
        for run in JobExecution.objects.filter(job=job).order_by("created_at")
    ]
    assert len(instants) == len(set(instants)), "an instant fired twice"


def test_run_chain_waits_for_a_chain_run_by_real_workers(cluster: CeleryCluster) -> None:
    from jobs.models import JobChain, JobChainMember

    cluster.start_worker("w1")
    chain = JobChain.objects.create(name="Worker chain")
    first = JobChainMember.objects.create(chain=chain, job=make_job("first"), execution_order=0)
    JobChainMember.objects.create(chain=chain, job=make_job("second"), execution_order=1, depends_on_member=first)
    JobChainMember.objects.create(chain=chain, job=make_job("parallel"), execution_order=2)

    result = subprocess.run(
        [sys.executable, "manage.py", "run_chain", "Worker chain", "--wait", "--json", "--timeout", "60"],
        cwd=ROOT,
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=90,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["state"] == "completed"
    assert [member["state"] for member in report["members"]] == ["completed", "completed", "completed"]


def test_run_chain_exits_non_zero_when_a_member_fails(cluster: CeleryCluster) -> None:
    from jobs.models import JobChain, JobChainMember
    from tests.engine_support import make_job as build

    cluster.start_worker("w1")
    chain = JobChain.objects.create(name="Failing worker chain")
    failing = build([("test.flaky", {"key": "never", "failures": 99})], name="fails")
    first = JobChainMember.objects.create(chain=chain, job=failing, execution_order=0)
    JobChainMember.objects.create(chain=chain, job=make_job("after"), execution_order=1, depends_on_member=first)

    result = subprocess.run(
        [sys.executable, "manage.py", "run_chain", "Failing worker chain", "--wait", "--timeout", "60"],
        cwd=ROOT,
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=90,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed" in result.stdout and "member 1 after: skipped" in result.stdout
