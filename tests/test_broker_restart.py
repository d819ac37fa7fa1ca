"""A real Redis restart: queued executions survive it and run once the broker is back (SPEC 4.2, 10)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.celery_support import ROOT, CeleryCluster, LiveDatabase, celery_command, wait_for
from tests.child_processes import tied_to_test_run
from tests.fault_support import RedisServer, point_app_at, runs_counted

pytestmark = pytest.mark.celery


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_an_execution_queued_across_a_redis_restart_runs_when_the_broker_is_back(
    live: LiveDatabase, broker: RedisServer, django_db_blocker: Any, tmp_path: Path, settings: Any, monkeypatch
) -> None:
    from celery import current_app

    from jobs.engine import control
    from tests.engine_support import make_job

    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    # This process publishes to the private broker too (restored afterwards).
    original_broker = current_app.conf.broker_url
    monkeypatch.setenv("CELERY_BROKER_URL", broker.url)
    point_app_at(current_app, broker.url)
    cluster = CeleryCluster(
        live, broker.url, tmp_path / "data", tmp_path, extra_env={"COURIER_REDISPATCH_AFTER_SECONDS": "3"}
    )
    with django_db_blocker.unblock():
        try:
            job = make_job([("test.sleep", {"seconds": 0.1})], name="across a restart")
            # Queued and handed to Celery while no worker listens: the message waits in Redis …
            before = control.enqueue(job, triggered_by="manual:tester")
            assert live.scalar("SELECT dispatched_at IS NOT NULL FROM job_executions WHERE id = %s", (before.pk,))
            # … and is lost when Redis dies and comes back empty.
            broker.kill()
            broker.start()
            assert redis.Redis.from_url(broker.url).dbsize() == 0

            cluster.start_worker("w1", respawn=True)
            beat = subprocess.Popen(
                tied_to_test_run(
                    [
                        str(ROOT / "bin" / "respawn"),
                        *tied_to_test_run(celery_command("beat")),
                        "--schedule",
                        str(tmp_path / "beat-schedule"),
                    ]
                ),
                cwd=ROOT,
                env=cluster.env(),
                stdout=(tmp_path / "beat.log").open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                # The beat sweep finds the unclaimed execution and dispatches it again.
                wait_for(
                    lambda: live.scalar("SELECT state FROM job_executions WHERE id = %s", (before.pk,)) == "completed",
                    60,
                    "the execution queued before the restart to complete",
                )
                # Redis dies again while the worker is connected (and may be acknowledging the
                # task it just ran); the worker reconnects, or dies and is respawned, and takes
                # new work either way.
                broker.kill()
                time.sleep(1)
                broker.start()
                after = control.enqueue(job, triggered_by="manual:tester")
                wait_for(
                    lambda: live.scalar("SELECT state FROM job_executions WHERE id = %s", (after.pk,)) == "completed",
                    60,
                    "an execution queued after the second restart to complete",
                )
            finally:
                os.killpg(beat.pid, signal.SIGTERM)
                beat.wait(20)
        finally:
            cluster.stop_all()
            point_app_at(current_app, original_broker)
            live.execute("UPDATE job_executions SET state = 'cancelled' WHERE state IN ('queued', 'running', 'paused')")
            live.execute("UPDATE process_heartbeats SET stopped_at = now() WHERE stopped_at IS NULL")


def in_state(live: LiveDatabase, ids: list[str], state: str) -> int:
    return live.scalar("SELECT count(*) FROM job_executions WHERE id = ANY(%s::uuid[]) AND state = %s", (ids, state))


def test_executions_queued_and_running_across_a_redis_restart_each_run_exactly_once(
    live: LiveDatabase, broker: RedisServer, django_db_blocker: Any, tmp_path: Path, settings: Any, monkeypatch
) -> None:
    from celery import current_app

    from jobs.engine import control
    from tests.engine_support import make_job

    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    runs_log = tmp_path / "runs.log"
    original_broker = current_app.conf.broker_url
    monkeypatch.setenv("CELERY_BROKER_URL", broker.url)
    point_app_at(current_app, broker.url)
    # Six dispatched at a time for three worker processes: three run, three wait in Redis.
    live.execute("UPDATE system_settings SET value = '6' WHERE key = 'job.concurrency_limit'")
    cluster = CeleryCluster(
        live,
        broker.url,
        tmp_path / "data",
        tmp_path,
        extra_env={
            "COURIER_REDISPATCH_AFTER_SECONDS": "3",
            "COURIER_STEP_MODULES": "tests.engine_support,tests.fault_support",
        },
    )
    with django_db_blocker.unblock():
        try:
            cluster.start_worker("w1", concurrency=3, respawn=True)
            cluster.start_beat(respawn=True)
            job = make_job([("test.count_runs", {"path": str(runs_log), "seconds": 2})], name="counted")
            ids = [str(control.enqueue(job, triggered_by="manual:tester").pk) for _ in range(10)]
            wait_for(
                lambda: in_state(live, ids, "running") == 3,
                30,
                "three executions to run",
            )
            waiting_in_redis = live.scalar(
                "SELECT count(*) FROM job_executions WHERE id = ANY(%s::uuid[])"
                " AND state = 'queued' AND dispatched_at IS NOT NULL",
                (ids,),
            )
            assert waiting_in_redis > 0

            broker.kill()
            time.sleep(1)
            broker.start()

            wait_for(
                lambda: in_state(live, ids, "completed") == len(ids),
                90,
                "every execution to complete",
                interval=0.2,
            )
        finally:
            cluster.stop_all()
            point_app_at(current_app, original_broker)
            live.execute("UPDATE system_settings SET value = '5' WHERE key = 'job.concurrency_limit'")
            live.execute("UPDATE job_executions SET state = 'cancelled' WHERE state IN ('queued', 'running', 'paused')")
            live.execute("UPDATE process_heartbeats SET stopped_at = now() WHERE stopped_at IS NULL")

    # The step ran once per execution: one line each in its log, one step row, one claim.
    assert runs_counted(runs_log) == dict.fromkeys(ids, 1)
    assert live.scalar(
        "SELECT json_agg(n) FROM (SELECT count(*) AS n FROM step_executions WHERE job_execution_id = ANY(%s::uuid[])"
        " GROUP BY job_execution_id) rows",
        (ids,),
    ) == [1] * len(ids)
    assert live.scalar(
        "SELECT count(*) FROM audit_log_entries WHERE entity_type = 'job_execution' AND operation = 'running'"
        " AND entity_id = ANY(%s::uuid[])",
        (ids,),
    ) == len(ids)
