"""A worker frozen (SIGSTOP) past its heartbeat timeout: recovered as lost, and once thawed it writes nothing."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.engine import control
from jobs.models import JobExecution, StepExecution
from tests.celery_support import CeleryCluster, LiveDatabase, wait_for
from tests.engine_support import make_job
from tests.fault_support import runs_counted

pytestmark = pytest.mark.celery

HEARTBEAT_TIMEOUT = 3  # COURIER_HEARTBEAT_TIMEOUT of the test workers (tests/celery_support.py)
RETRY_STEP = {"type": "retry_step", "max_retries": 1, "backoff_base_seconds": 0, "backoff_max_seconds": 0}


@pytest.fixture
def cluster(
    live: LiveDatabase, django_db_blocker: Any, redis_url: str, tmp_path: Path, settings: Any
) -> Iterator[CeleryCluster]:
    redis.Redis.from_url(redis_url).flushdb()
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    group = CeleryCluster(
        live,
        redis_url,
        tmp_path / "data",
        tmp_path,
        extra_env={"COURIER_STEP_MODULES": "tests.engine_support,tests.fault_support"},
    )
    with django_db_blocker.unblock():
        try:
            yield group
        finally:
            for worker in group.processes:
                worker.signal(signal.SIGCONT, whole_group=True)  # a stopped process ignores SIGTERM
            group.stop_all()


def test_a_thawed_worker_stops_the_run_recovery_gave_away_and_writes_nothing(
    cluster: CeleryCluster, tmp_path: Path
) -> None:
    runs_file = tmp_path / "runs.log"
    frozen = cluster.start_worker("w1", concurrency=1)
    job = make_job([("test.count_runs", {"path": str(runs_file), "seconds": 8})], policy=RETRY_STEP)
    execution = control.enqueue(job, triggered_by="manual:tester", requested_by="tester")
    wait_for(lambda: runs_counted(runs_file).get(str(execution.pk)), 30, "the step to start on w1")

    # The whole worker freezes: main process, heartbeat thread and the pool process running the step.
    frozen.signal(signal.SIGSTOP, whole_group=True)
    frozen_at = time.monotonic()
    cluster.start_worker("w2", concurrency=1)
    wait_for(
        lambda: cluster.database.scalar("SELECT state FROM job_executions WHERE id = %s", (execution.pk,)) == "failed",
        HEARTBEAT_TIMEOUT + 30,
        "recovery to fail the frozen worker's run",
    )
    assert time.monotonic() - frozen_at <= HEARTBEAT_TIMEOUT + 30
    retry = wait_for(lambda: JobExecution.objects.filter(retry_of_execution_id=execution.pk).first(), 10, "the retry")
    wait_for(lambda: runs_counted(runs_file).get(str(retry.pk)), 30, "the retry's step to start on w2")

    # Thawed while the retry runs: the old run sees at its next control poll that the run is no
    # longer its own and stops its step, instead of finishing it beside the retry.
    frozen.signal(signal.SIGCONT, whole_group=True)
    wait_for(lambda: "stopped without writing" in frozen.output(), 10, "the thawed worker to give the run up")
    final = wait_for(
        lambda: (
            (state := cluster.database.scalar("SELECT state FROM job_executions WHERE id = %s", (retry.pk,)))
            in {"completed", "failed"}
            and state
        ),
        30,
        "the retry to finish",
    )

    assert final == "completed"
    lost = JobExecution.objects.get(pk=execution.pk)
    assert lost.state == "failed"
    assert "worker lost: w1@" in lost.error_message
    # The interrupted step row stays as recovery wrote it: failed, not completed or skipped later.
    rows = list(StepExecution.objects.filter(job_execution_id=execution.pk).values_list("state", "error_message"))
    assert len(rows) == 1
    assert rows[0][0] == "failed"
    assert "worker lost" in rows[0][1]
    operations = cluster.database.scalar(
        "SELECT json_agg(operation ORDER BY performed_at) FROM audit_log_entries WHERE entity_id = %s",
        (execution.pk,),
    )
    assert "completed" not in operations and "cancelled" not in operations
    # Each execution ran its step once; the retry's work directory was left to it.
    assert runs_counted(runs_file) == {str(execution.pk): 1, str(retry.pk): 1}
