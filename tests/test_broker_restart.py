"""A real Redis restart: queued executions survive it and run once the broker is back (SPEC 4.2, 10)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.celery_support import ROOT, CeleryCluster, LiveDatabase, live_database, wait_for

pytestmark = pytest.mark.celery


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """A private redis-server without persistence: a restart loses every message, as a crash would."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, "redis-server to answer")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url).ping())
        except redis.ConnectionError:
            return False


@pytest.fixture(scope="module")
def live(django_db_setup: Any, django_db_blocker: Any) -> Iterator[LiveDatabase]:
    with django_db_blocker.unblock(), live_database() as database:
        yield database


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
                [
                    str(ROOT / "bin" / "respawn"),
                    *cluster_command("beat"),
                    "--schedule",
                    str(tmp_path / "beat-schedule"),
                ],
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


def point_app_at(app: Any, url: str) -> None:
    app.conf.broker_url = url
    app._pool = None
    app.amqp._producer_pool = None


def cluster_command(verb: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "celery", "-A", "courier_site", verb]
