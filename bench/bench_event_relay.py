"""Event relay to a local webhook: events/s relayed and sent, and job failure -> webhook lag p95 (target < 2 s).

Two figures, each against an anchor run in this script:
- throughput: JobFailed events relayed (SKIP LOCKED batches) and sent as signed webhooks to a
  receiver on loopback, per second; anchor: the same work with one event per relay transaction.
- lag: from a job's failure on a real worker (completed_at) to the webhook's arrival, with beat
  relaying every second and the notifier woken at once; anchor: a relay polling every 30 s
  (the original design's "V2" poller), run for a few failures in the same script.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.engine_support import beat, percentile, point_celery_at, private_queues, start_worker, stop_process
from bench.support import Figure, Report, scratch_database

ANCHOR_POLL_SECONDS = 30.0


class _Receiver:
    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                execution = (json.loads(body).get("execution") or {}).get("id") or uuid.uuid4().hex
                receiver.arrivals[execution] = time.time()
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/courier"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _channel_and_rule(url: str) -> None:
    from courier_site.envelope import keyring
    from notifications.models import Channel, Rule

    Channel.objects.all().delete()
    Rule.objects.all().delete()
    channel = Channel.objects.create(
        name="bench", kind="webhook", settings={"url": url, "timeout_seconds": 5}, secret_encrypted=keyring().seal("b")
    )
    rule = Rule.objects.create(name="bench", events=["job_failed"], quiet=False)
    rule.channels.add(channel)


def _events(count: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO domain_events (event_type, entity_type, entity_id, payload)"
            " SELECT 'JobFailed', 'job_execution', gen_random_uuid(), jsonb_build_object('job_id', gen_random_uuid())"
            " FROM generate_series(1, %s)",
            [count],
        )


def _throughput(count: int, limit: int) -> tuple[float, float, float]:
    """(relay events/s, send deliveries/s, both together events/s) for count JobFailed events."""
    from audit.relay import relay_until_idle
    from notifications.delivery import send_due

    _events(count)
    started = time.perf_counter()
    handled = 0
    while handled < count:
        result = relay_until_idle(limit=limit, max_seconds=600)
        handled += result.handled
        if result.claimed == 0:
            break
    relayed = time.perf_counter()
    send_due(max_seconds=600)
    sent = time.perf_counter()
    return count / (relayed - started), count / (sent - relayed), count / (sent - started)


def _failing_job(name: str) -> Any:
    from jobs.definitions import record_version
    from jobs.models import Job, JobStep

    job = Job.objects.create(name=name)
    JobStep.objects.create(
        job=job,
        step_order=0,
        name="rename",
        type_key="file.rename",
        configuration={"path": "gone.txt", "new_name": "x"},
    )
    record_version(job, created_by="bench")
    return job


def _lags(job: Any, count: int, receiver: _Receiver, spacing: float, timeout: float) -> list[float]:
    from jobs.engine import control
    from jobs.models import JobExecution

    ids = []
    for _ in range(count):
        ids.append(str(control.enqueue(job, triggered_by="manual:bench").pk))
        time.sleep(spacing)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(execution in receiver.arrivals for execution in ids):
        time.sleep(0.05)
    finished = dict(JobExecution.objects.filter(pk__in=ids).values_list("id", "completed_at"))
    return [
        receiver.arrivals[execution] - finished[uuid.UUID(execution)].timestamp()
        for execution in ids
        if execution in receiver.arrivals and finished.get(uuid.UUID(execution))
    ]


def run(*, quick: bool = False) -> Report:
    from django.core.management import call_command

    from audit.relay import relay_until_idle
    from notifications.delivery import send_due

    count = 500 if quick else 5000
    failures = 5 if quick else 40
    report = Report("event relay and notifications")
    broker = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    broker = broker.rsplit("/", 1)[0] + "/10"
    point_celery_at(broker)
    receiver = _Receiver()
    try:
        with scratch_database(), private_queues(broker) as queue:
            call_command("migrate", verbosity=0, interactive=False)
            _channel_and_rule(receiver.url)
            anchor_relay, _, anchor_rate = _throughput(max(count // 10, 50), limit=1)
            relay_rate, send_rate, rate = _throughput(count, limit=200)
            report.figures.append(
                Figure("relayed (batches of 200)", relay_rate, "events/s", "one event per transaction", anchor_relay)
            )
            report.figures.append(
                Figure("relayed and sent", rate, "events/s", "one event per relay transaction", anchor_rate)
            )
            report.notes.append(
                f"the sender alone: {send_rate:,.0f} webhooks/s, one at a time, each on a new connection"
            )

            job = _failing_job("bench-failing-feed")
            data_dir = tempfile.mkdtemp(prefix="courier-bench-relay-")
            # Anchor: job runs only, and a relay that polls every 30 s in this process.
            jobs_worker, _ = start_worker(2, broker, data_dir, queues=[queue], hostname="bench-jobs")
            try:
                stop = threading.Event()

                def poller() -> None:
                    from django.db import connection

                    while not stop.wait(ANCHOR_POLL_SECONDS):
                        relay_until_idle()
                        send_due()
                    connection.close()

                thread = threading.Thread(target=poller, daemon=True)
                thread.start()
                anchor = _lags(job, 3 if quick else 6, receiver, spacing=4.0, timeout=ANCHOR_POLL_SECONDS * 2 + 10)
                stop.set()
                thread.join(60)
                # Courier: beat relays every second; the notifier is woken after each batch.
                relay_until_idle()
                clock, _ = start_worker(
                    2, broker, data_dir, queues=[f"{queue}-control", f"{queue}-notify"], hostname="bench-clock"
                )
                try:
                    with beat(broker):
                        ours = _lags(job, failures, receiver, spacing=0.25, timeout=60)
                finally:
                    stop_process(clock)
            finally:
                stop_process(jobs_worker)
    finally:
        receiver.close()
    report.figures.append(
        Figure(
            "failure -> webhook p95",
            percentile(ours, 0.95) if ours else float("inf"),
            "s",
            f"{ANCHOR_POLL_SECONDS:g} s poller p95",
            percentile(anchor, 0.95) if anchor else float("inf"),
            target_absolute=2.0,
            higher_is_better=False,
        )
    )
    report.figures.append(
        Figure(
            "failure -> webhook p50",
            percentile(ours, 0.5) if ours else float("inf"),
            "s",
            f"{ANCHOR_POLL_SECONDS:g} s poller p50",
            percentile(anchor, 0.5) if anchor else float("inf"),
            higher_is_better=False,
        )
    )
    report.notes.append(
        f"{count} events for throughput; {len(ours)} of {failures} failures measured ({len(anchor)} for the anchor)"
    )
    return report
