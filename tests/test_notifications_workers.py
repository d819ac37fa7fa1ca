"""The event relay and notifications across processes: relays killed mid-batch, two relays at once, real workers."""

from __future__ import annotations

import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from courier_site.envelope import keyring
from jobs.engine import control
from notifications.models import Channel, Rule
from tests.celery_support import CeleryCluster, LiveDatabase, wait_for
from tests.engine_support import make_job
from tests.notify_support import webhook_receiver

pytestmark = pytest.mark.celery

EVENTS = 1500


@pytest.fixture
def cluster(live: LiveDatabase, django_db_blocker: Any, redis_url: str, tmp_path: Path) -> Iterator[CeleryCluster]:
    redis.Redis.from_url(redis_url).flushdb()
    group = CeleryCluster(live, redis_url, tmp_path / "data", tmp_path)
    live.execute("CREATE TABLE IF NOT EXISTS relay_probe (event_id UUID NOT NULL, pid INT NOT NULL)")
    live.execute("TRUNCATE relay_probe")
    with django_db_blocker.unblock():
        try:
            yield group
        finally:
            group.stop_all()
            live.execute("UPDATE process_heartbeats SET stopped_at = now() WHERE stopped_at IS NULL")
            live.execute("DELETE FROM notification_deliveries")
            live.execute("DELETE FROM notification_rules")
            live.execute("DELETE FROM notification_channels")
            live.execute("UPDATE domain_events SET processed_at = now() WHERE processed_at IS NULL")


def failing_events(live: LiveDatabase, count: int) -> str:
    """count JobFailed events for one job, and a rule that tells of each to a webhook channel."""
    channel, rule, job = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    live.execute(
        "INSERT INTO notification_channels (id, name, kind, settings) VALUES (%s, %s, 'webhook', %s)",
        (channel, f"pager-{channel.hex[:6]}", '{"url": "http://127.0.0.1:9/hook"}'),
    )
    live.execute(
        "INSERT INTO notification_rules (id, name, events, quiet) VALUES (%s, %s, ARRAY['job_failed'], false)",
        (rule, f"all-{rule.hex[:6]}"),
    )
    live.execute("INSERT INTO notification_rule_channels (rule_id, channel_id) VALUES (%s, %s)", (rule, channel))
    live.execute(
        "INSERT INTO domain_events (event_type, entity_type, entity_id, payload, occurred_at)"
        " SELECT 'JobFailed', 'job_execution', gen_random_uuid(), jsonb_build_object('job_id', %s::text),"
        " now() - make_interval(secs => %s - n) FROM generate_series(1, %s) AS n",
        (str(job), count, count),
    )
    return str(job)


def relay_process(cluster: CeleryCluster, name: str, batch: int = 50, pause: float = 0.05) -> Any:
    command = [sys.executable, "-m", "tests.relay_probe", "--batch", str(batch), "--pause", str(pause)]
    return cluster.spawn(name, command)


def handled(live: LiveDatabase, job: str) -> int:
    return live.scalar(
        "SELECT count(*) FROM domain_events WHERE processed_at IS NOT NULL AND payload->>'job_id' = %s", (job,)
    )


def test_a_relay_killed_mid_batch_loses_nothing_and_its_successor_handles_every_event(
    cluster: CeleryCluster, live: LiveDatabase
) -> None:
    job = failing_events(live, EVENTS)
    first = relay_process(cluster, "relay-1")
    wait_for(lambda: handled(live, job) >= 200, 60, "the first relay to commit some batches")
    first.signal(signal.SIGKILL)
    first.process.wait(10)
    at_kill = handled(live, job)
    assert 0 < at_kill < EVENTS, "the relay must die in the middle of its work"

    second = relay_process(cluster, "relay-2", pause=0)
    second.process.wait(120)
    assert second.process.returncode == 0, second.output()[-3000:]

    assert handled(live, job) == EVENTS
    assert live.scalar("SELECT count(*) FROM domain_events WHERE processed_at IS NULL") == 0
    # Writes of the killed batch went with its transaction: each event's subscribers committed once.
    assert live.scalar("SELECT count(DISTINCT event_id) FROM relay_probe") == EVENTS
    assert live.scalar("SELECT count(*) FROM relay_probe") == EVENTS
    assert live.scalar("SELECT count(*) FROM notification_deliveries") == EVENTS
    assert live.scalar("SELECT count(DISTINCT event_id) FROM notification_deliveries") == EVENTS


def test_two_relays_at_once_never_handle_one_event_twice(cluster: CeleryCluster, live: LiveDatabase) -> None:
    job = failing_events(live, EVENTS)
    relays = [relay_process(cluster, f"relay-{n}", batch=25, pause=0.01) for n in (1, 2)]
    for process in relays:
        process.process.wait(120)
        assert process.process.returncode == 0, process.output()[-3000:]

    assert handled(live, job) == EVENTS
    assert live.scalar("SELECT count(*) FROM relay_probe") == EVENTS
    assert live.scalar("SELECT count(DISTINCT event_id) FROM relay_probe") == EVENTS
    # Both took part (SKIP LOCKED let each take the batches the other had not claimed).
    assert live.scalar("SELECT count(DISTINCT pid) FROM relay_probe") == 2
    assert (
        live.scalar("SELECT count(DISTINCT processed_by) FROM domain_events WHERE payload->>'job_id' = %s", (job,)) == 2
    )


def test_a_job_failing_on_a_worker_reaches_the_webhook_through_beat_relay_and_sender(
    cluster: CeleryCluster, live: LiveDatabase, django_db_blocker: Any, settings: Any, tmp_path: Path
) -> None:
    settings.COURIER_DATA_DIR = tmp_path / "data"
    with webhook_receiver(200) as receiver:
        channel = Channel.objects.create(
            name="pager",
            kind="webhook",
            settings={"url": receiver.url, "timeout_seconds": 5},
            secret_encrypted=keyring().seal("s3cret-for-workers"),
        )
        rule = Rule.objects.create(name="failures", events=["job_failed"], quiet=False)
        rule.channels.add(channel)
        job = make_job([("test.flaky", {"key": uuid.uuid4().hex, "failures": 99})], name="nightly-partner-feed")
        cluster.start_worker("all", concurrency=2, queues=("", "-control", "-monitors", "-notify"))
        cluster.start_beat()

        execution = control.enqueue(job, triggered_by="manual:tester", requested_by="tester")
        wait_for(
            lambda: live.scalar("SELECT state FROM job_executions WHERE id = %s", (execution.pk,)) == "failed",
            30,
            "the execution to fail on the worker",
        )
        failed_at = time.monotonic()
        (call,) = receiver.wait_for(1, 20)
    assert call.json["execution"]["id"] == str(execution.pk)
    assert call.json["job"]["name"] == "nightly-partner-feed"
    # Beat relays every second and the sender is woken at once: a few seconds at most.
    assert call.at - failed_at < 10
