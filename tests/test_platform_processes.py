"""Worker and beat processes: schema check at start, heartbeats, start-up maintenance (real Celery, Redis)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import redis

from courier_site.partitions import month_start
from tests.celery_support import ROOT, CeleryCluster, LiveDatabase, private_broker_url, wait_for

pytestmark = pytest.mark.celery


@pytest.fixture
def cluster(live: LiveDatabase, redis_url: str, tmp_path: Path) -> Iterator[CeleryCluster]:
    broker = private_broker_url(redis_url, 12)  # apart from the engine tests' database
    redis.Redis.from_url(broker).flushdb()
    group = CeleryCluster(live, broker, tmp_path / "data", tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
        live.execute("UPDATE process_heartbeats SET stopped_at = now() WHERE stopped_at IS NULL")


def run_process(cluster: CeleryCluster, *arguments: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "courier_site", *arguments],
        cwd=ROOT,
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_worker_refuses_to_start_on_a_schema_that_is_behind(cluster: CeleryCluster) -> None:
    newest = cluster.database.scalar("SELECT max(script_name) FROM schema_versions")
    checksum = cluster.database.scalar("SELECT checksum FROM schema_versions WHERE script_name = %s", (newest,))
    cluster.database.execute("DELETE FROM schema_versions WHERE script_name = %s", (newest,))
    try:
        result = run_process(cluster, "worker", "--queues", os.environ["COURIER_QUEUE"], "--hostname", "behind@%h")
    finally:
        cluster.database.execute(
            "INSERT INTO schema_versions (script_name, checksum) VALUES (%s, %s)", (newest, checksum)
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "[E1003] database schema is behind: run migrate on the web host first" in output
    assert newest in output


def test_beat_refuses_to_start_on_a_schema_that_is_behind(cluster: CeleryCluster, tmp_path: Path) -> None:
    newest = cluster.database.scalar("SELECT max(script_name) FROM schema_versions")
    checksum = cluster.database.scalar("SELECT checksum FROM schema_versions WHERE script_name = %s", (newest,))
    cluster.database.execute("DELETE FROM schema_versions WHERE script_name = %s", (newest,))
    try:
        result = run_process(cluster, "beat", "--schedule", str(tmp_path / "beat-schedule"))
    finally:
        cluster.database.execute(
            "INSERT INTO schema_versions (script_name, checksum) VALUES (%s, %s)", (newest, checksum)
        )
    assert result.returncode != 0
    assert "database schema is behind" in result.stdout + result.stderr


def test_worker_heartbeat_is_refreshed_and_marked_stopped_on_shutdown(cluster: CeleryCluster) -> None:
    worker = cluster.start_worker("hb")
    name_like = ("hb@%",)
    first = cluster.database.scalar("SELECT last_seen_at FROM process_heartbeats WHERE process_name LIKE %s", name_like)
    wait_for(
        lambda: cluster.database.scalar(
            "SELECT last_seen_at > %s FROM process_heartbeats WHERE process_name LIKE %s", (first, "hb@%")
        ),
        10,
        "the heartbeat to be refreshed",
    )
    assert (
        cluster.database.scalar("SELECT kind FROM process_heartbeats WHERE process_name LIKE %s", name_like) == "worker"
    )

    worker.signal(signal.SIGTERM)
    worker.process.wait(30)

    assert cluster.database.scalar(
        "SELECT stopped_at IS NOT NULL FROM process_heartbeats WHERE process_name LIKE %s", name_like
    )


def test_beat_records_its_heartbeat_and_queues_partition_maintenance_at_start(cluster: CeleryCluster) -> None:
    cluster.start_worker("maint")
    # Ask for one more month ahead than migrate created, so only the beat-sent task can create it.
    cluster.database.execute("UPDATE system_settings SET value = '3' WHERE key = 'partition.months_ahead'")
    far = month_start(date.today(), 3).strftime("%Y_%m")
    cluster.database.execute(f"DROP TABLE IF EXISTS domain_events_{far}")
    beat = cluster.start_beat(wait=False)
    try:
        wait_for(
            lambda: cluster.database.scalar(
                "SELECT count(*) FROM process_heartbeats WHERE kind = 'beat' AND stopped_at IS NULL"
            ),
            30,
            "beat to report a heartbeat",
        )
        wait_for(
            lambda: cluster.database.scalar("SELECT to_regclass(%s) IS NOT NULL", (f"domain_events_{far}",)),
            30,
            "the partition task sent by beat to run",
        )
    finally:
        beat.stop()
        cluster.database.execute("UPDATE system_settings SET value = '2' WHERE key = 'partition.months_ahead'")
    assert (
        cluster.database.scalar(
            "SELECT count(*) FROM process_heartbeats WHERE kind = 'beat' AND stopped_at IS NOT NULL"
        )
        >= 1
    )
