"""The engine with real Celery workers and Redis: dispatch, limits, pause/cancel, crash and shutdown recovery."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.celery_support import ROOT, CeleryCluster, LiveDatabase, wait_for

pytestmark = pytest.mark.celery


@pytest.fixture
def cluster(
    live: LiveDatabase,
    django_db_blocker: Any,
    redis_url: str,
    tmp_path: Path,
    settings: Any,
) -> Iterator[CeleryCluster]:
    broker = redis_url  # the tests' private Redis database (tests/conftest.py)
    redis.Redis.from_url(broker).flushdb()
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    live.execute("UPDATE system_settings SET value = '5' WHERE key = 'job.concurrency_limit'")
    group = CeleryCluster(live, broker, tmp_path / "data", tmp_path)
    with django_db_blocker.unblock():
        try:
            yield group
        finally:
            group.stop_all()
            live.execute("UPDATE job_executions SET state = 'cancelled' WHERE state IN ('queued', 'running', 'paused')")
            live.execute("UPDATE process_heartbeats SET stopped_at = now() WHERE stopped_at IS NULL")


def state_of(live: LiveDatabase, execution_id: Any) -> str:
    return live.scalar("SELECT state FROM job_executions WHERE id = %s", (execution_id,))


def wait_state(live: LiveDatabase, execution_id: Any, states: set[str], timeout: float) -> str:
    return wait_for(
        lambda: (state := state_of(live, execution_id)) in states and state,
        timeout,
        f"execution {execution_id} to reach {states} (now {state_of(live, execution_id)})",
    )


def queue(job: Any) -> Any:
    from jobs.engine import control

    return control.enqueue(job, triggered_by="manual:tester", requested_by="tester")


def test_a_worker_picks_up_and_completes_a_queued_execution(cluster: CeleryCluster) -> None:
    from tests.engine_support import make_job

    cluster.start_worker("w1")
    job = make_job([("test.write", {"name": "out.txt", "text": "hi"}), ("test.sleep", {"seconds": 0.1})])

    execution = queue(job)

    assert wait_state(cluster.database, execution.pk, {"completed", "failed"}, 30) == "completed"
    steps = cluster.database.scalar(
        "SELECT count(*) FROM step_executions WHERE job_execution_id = %s AND state = 'completed'", (execution.pk,)
    )
    assert steps == 2


def test_several_executions_run_at_the_same_time(cluster: CeleryCluster) -> None:
    from jobs.models import JobExecution
    from tests.engine_support import make_job

    cluster.start_worker("w1", concurrency=4)
    job = make_job([("test.sleep", {"seconds": 1.5})])

    executions = [queue(job) for _ in range(3)]

    for execution in executions:
        wait_state(cluster.database, execution.pk, {"completed"}, 30)
    rows = list(JobExecution.objects.filter(pk__in=[e.pk for e in executions]).order_by("started_at"))
    # All three overlapped: the last one started before the first one finished.
    assert rows[-1].started_at < rows[0].completed_at


def test_concurrency_limit_holds_across_two_workers(cluster: CeleryCluster) -> None:
    from tests.engine_support import make_job

    cluster.database.execute("UPDATE system_settings SET value = '2' WHERE key = 'job.concurrency_limit'")
    cluster.start_worker("w1", concurrency=3)
    cluster.start_worker("w2", concurrency=3)
    job = make_job([("test.sleep", {"seconds": 0.6})])
    executions = [queue(job) for _ in range(6)]
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, cluster.database.scalar("SELECT count(*) FROM job_executions WHERE state = 'running'"))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for execution in executions:
            wait_state(cluster.database, execution.pk, {"completed"}, 60)
    finally:
        stop.set()
        watcher.join()
    assert peak == 2
    workers = cluster.database.scalar(
        "SELECT count(DISTINCT worker_name) FROM job_executions WHERE id = ANY(%s)", ([e.pk for e in executions],)
    )
    assert workers == 2


def test_pause_stops_a_running_step_within_a_second_and_resume_continues(cluster: CeleryCluster) -> None:
    from jobs.engine import control
    from tests.engine_support import make_job

    cluster.start_worker("w1")
    job = make_job([("test.write", {"name": "first.txt"}), ("test.sleep_once", {"seconds": 60})])
    execution = queue(job)
    wait_for(
        lambda: cluster.database.scalar(
            "SELECT count(*) FROM step_executions WHERE job_execution_id = %s AND step_order = 1 AND state = 'running'",
            (execution.pk,),
        ),
        30,
        "the long step to start",
    )

    requested = time.monotonic()
    control.request_pause(execution.pk, by="tester")
    wait_state(cluster.database, execution.pk, {"paused"}, 5)
    assert time.monotonic() - requested < 1.5
    paused_by = cluster.database.scalar(
        "SELECT performed_by FROM audit_log_entries WHERE entity_id = %s AND operation = 'paused'", (execution.pk,)
    )
    assert paused_by == "tester"

    control.resume(execution.pk, by="tester")
    assert wait_state(cluster.database, execution.pk, {"completed", "failed"}, 30) == "completed"
    # The first step was not run again; the interrupted one ran twice (once interrupted).
    rows = cluster.database.scalar(
        "SELECT json_agg(json_build_array(step_order, state) ORDER BY started_at) FROM step_executions "
        "WHERE job_execution_id = %s",
        (execution.pk,),
    )
    assert rows == [[0, "completed"], [1, "skipped"], [1, "completed"]]


def test_cancel_stops_a_running_step_within_a_second(cluster: CeleryCluster) -> None:
    from jobs.engine import control
    from tests.engine_support import make_job

    cluster.start_worker("w1")
    execution = queue(make_job([("test.sleep", {"seconds": 60})]))
    wait_state(cluster.database, execution.pk, {"running"}, 30)
    time.sleep(0.3)

    requested = time.monotonic()
    control.request_cancel(execution.pk, by="tester")
    wait_state(cluster.database, execution.pk, {"cancelled"}, 5)
    assert time.monotonic() - requested < 1.5
    work_dir = cluster.data_dir / "work" / str(execution.pk)
    assert not work_dir.exists()


def test_worker_killed_mid_step_is_recovered_and_the_run_resumes(cluster: CeleryCluster) -> None:
    from jobs.models import JobExecution
    from tests.engine_support import make_job

    first_worker = cluster.start_worker("w1")
    policy = {"type": "retry_step", "max_retries": 1, "backoff_base_seconds": 0, "backoff_max_seconds": 0}
    job = make_job([("test.write", {"name": "kept.txt"}), ("test.sleep_once", {"seconds": 60})], policy=policy)
    execution = queue(job)
    wait_for(
        lambda: cluster.database.scalar(
            "SELECT count(*) FROM step_executions WHERE job_execution_id = %s AND step_order = 1", (execution.pk,)
        ),
        30,
        "the long step to start",
    )

    first_worker.signal(signal.SIGKILL, whole_group=True)
    first_worker.process.wait(10)
    time.sleep(3.5)  # past COURIER_HEARTBEAT_TIMEOUT: the execution's heartbeat has expired
    cluster.start_worker("w2")  # recovers lost executions at start

    assert wait_state(cluster.database, execution.pk, {"failed"}, 30) == "failed"
    lost = JobExecution.objects.get(pk=execution.pk)
    assert "worker lost" in lost.error_message
    retry = wait_for(lambda: JobExecution.objects.filter(retry_of_execution_id=execution.pk).first(), 10, "the retry")
    assert retry.triggered_by == f"retry:{execution.pk}"
    assert wait_state(cluster.database, retry.pk, {"completed", "failed"}, 30) == "completed"
    rows = cluster.database.scalar(
        "SELECT json_agg(step_order ORDER BY started_at) FROM step_executions WHERE job_execution_id = %s",
        (retry.pk,),
    )
    assert rows == [1]  # resumed at the step that was interrupted


def test_worker_shutdown_checkpoints_and_another_worker_finishes(cluster: CeleryCluster) -> None:
    from tests.engine_support import make_job

    first_worker = cluster.start_worker("w1")
    job = make_job([("test.write", {"name": "a.txt"}), ("test.sleep_once", {"seconds": 60})])
    execution = queue(job)
    wait_for(
        lambda: cluster.database.scalar(
            "SELECT count(*) FROM step_executions WHERE job_execution_id = %s AND step_order = 1", (execution.pk,)
        ),
        30,
        "the long step to start",
    )

    first_worker.signal(signal.SIGTERM)
    first_worker.process.wait(20)
    assert state_of(cluster.database, execution.pk) == "queued"

    cluster.start_worker("w2")
    assert wait_state(cluster.database, execution.pk, {"completed", "failed"}, 30) == "completed"


def test_queued_execution_whose_message_was_lost_is_dispatched_again(
    cluster: CeleryCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.conf import settings

    from jobs.engine import dispatch
    from tests.engine_support import make_job

    execution = queue(make_job([("test.sleep", {"seconds": 0.1})]))
    assert cluster.database.scalar(
        "SELECT dispatched_at IS NOT NULL FROM job_executions WHERE id = %s", (execution.pk,)
    )
    redis.Redis.from_url(cluster.broker_url).flushdb()  # the broker lost every message (restart without persistence)

    cluster.start_worker("w1")
    time.sleep(1)
    assert state_of(cluster.database, execution.pk) == "queued"
    monkeypatch.setattr(settings, "COURIER_REDISPATCH_AFTER_SECONDS", 0)
    assert str(execution.pk) in dispatch.dispatch()  # what the 5-second sweep does

    assert wait_state(cluster.database, execution.pk, {"completed", "failed"}, 30) == "completed"


def test_run_job_command_waits_and_reports_the_outcome(cluster: CeleryCluster) -> None:
    from tests.engine_support import make_job

    cluster.start_worker("w1")
    make_job([("test.sleep", {"seconds": 1.5})], name="cli-ok")
    make_job([("test.flaky", {"key": "cli", "failures": 9})], name="cli-fails")

    def run(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "run_job", name, "--wait", "--json", "--timeout", "60"],
            cwd=ROOT,
            env=cluster.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = run("cli-ok")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["state"] == "completed"
    # Not a terminal: the progress on stderr is a line per change of state, no redraws.
    assert "running · step 0 test.sleep (test.sleep #0)" in ok.stderr.splitlines()
    assert "\r" not in ok.stderr
    failed = run("cli-fails")
    assert failed.returncode == 1
    assert "flaky failure" in json.loads(failed.stdout)["error"]
