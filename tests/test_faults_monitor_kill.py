"""SIGKILL of the monitor watcher and the scanning worker mid-scan: every dropped file triggers exactly once."""

from __future__ import annotations

import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from monitors import services
from tests.celery_support import CeleryCluster, LiveDatabase, WorkerProcess, wait_for
from tests.engine_support import make_job
from tests.test_monitors_support import bind, drop, make_monitor

pytestmark = pytest.mark.celery

WAVE = 100  # aged files per wave: one execution each, so a scan of a wave takes a while
DRIP_SECONDS = 0.15  # a fresh file this often while processes are being killed
# What an operator may expect once the processes are back: a watcher poll after the
# stability window, or at worst the scan one polling interval after its claim.
CATCH_UP_BOUND = 35


@pytest.fixture
def cluster(
    live: LiveDatabase, django_db_blocker: Any, redis_url: str, tmp_path: Path, settings: Any
) -> Iterator[CeleryCluster]:
    redis.Redis.from_url(redis_url).flushdb()
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    (tmp_path / "data").mkdir()
    group = CeleryCluster(live, redis_url, tmp_path / "data", tmp_path)
    with django_db_blocker.unblock():
        try:
            yield group
        finally:
            group.stop_all()
            live.execute("UPDATE file_monitors SET state = 'disabled'")
            live.execute("UPDATE job_executions SET state = 'cancelled' WHERE state IN ('queued', 'running', 'paused')")
            live.execute("UPDATE process_heartbeats SET stopped_at = now() WHERE stopped_at IS NULL")


class Dropper(threading.Thread):
    """Drops a fresh file into the inbox every DRIP_SECONDS until stopped; remembers every path."""

    def __init__(self, inbox: Path) -> None:
        super().__init__(name="monitor-kill-dropper", daemon=True)
        self.inbox = inbox
        self.dropped: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        number = 0
        while not self.stopping.wait(DRIP_SECONDS):
            number += 1
            self.dropped.append(str(drop(self.inbox, f"drip-{number:04d}.csv", f"drip {number}\n", age=0)))

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


def drop_wave(inbox: Path, name: str) -> list[str]:
    return [str(drop(inbox, f"{name}-{n:04d}.csv", f"{name} {n}\n")) for n in range(WAVE)]


def start_watcher(cluster: CeleryCluster, name: str) -> WorkerProcess:
    """`manage.py run_monitor_watcher` in a session of its own, with the workers' environment."""
    watcher = cluster.spawn(name, [sys.executable, "manage.py", "run_monitor_watcher"])
    wait_for(
        lambda: (
            watcher.process.poll() is not None
            or cluster.database.scalar(
                "SELECT count(*) FROM process_heartbeats WHERE kind = 'watcher' AND pid = %s AND stopped_at IS NULL",
                (watcher.process.pid,),
            )
        ),
        30,
        f"{name} to start",
        interval=0.1,
    )
    assert watcher.process.poll() is None, watcher.output()[-3000:]
    return watcher


def start_scanner(cluster: CeleryCluster, name: str) -> WorkerProcess:
    """A worker for the clock's control tasks and the monitor scans (job runs are not the point here)."""
    return cluster.start_worker(name, concurrency=2, queues=("-control", "-monitors"))


def scan_in_progress(database: LiveDatabase, monitor_id: Any) -> bool:
    """Whether some session holds the monitor's poll lock (services.poll_lock)."""
    key = int.from_bytes(uuid.UUID(str(monitor_id)).bytes[:4], "big", signed=True)
    return bool(
        database.scalar(
            """
            SELECT count(*) FROM pg_locks
            WHERE locktype = 'advisory' AND granted AND classid = %s AND objid::bigint = %s AND objsubid = 2
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            """,
            (services.MONITOR_LOCK_CLASS, key % 2**32),
        )
    )


def kill_mid_scan(database: LiveDatabase, monitor_id: Any, *victims: WorkerProcess) -> None:
    """Wait until a scan of the monitor holds its poll lock, then SIGKILL every victim's process group."""
    wait_for(lambda: scan_in_progress(database, monitor_id), 20, "a scan of the monitor to start", interval=0.01)
    for victim in victims:
        victim.signal(signal.SIGKILL, whole_group=True)
    for victim in victims:
        victim.process.wait(10)


def created_log(database: LiveDatabase, monitor_id: Any) -> Counter[str]:
    with psycopg.connect(database.conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT file_path FROM monitor_file_log WHERE monitor_id = %s AND trigger_event = 'FileCreated'",
            (monitor_id,),
        ).fetchall()
    return Counter(path for (path,) in rows)


def triggered_in_executions(database: LiveDatabase, job_id: Any) -> Counter[str]:
    with psycopg.connect(database.conninfo, autocommit=True) as conn:
        rows = conn.execute(
            """
            SELECT item->>'path' FROM job_executions,
                   jsonb_array_elements(context_snapshot->'values'->'monitor.triggered_files') AS item
            WHERE job_id = %s
            """,
            (job_id,),
        ).fetchall()
    return Counter(path for (path,) in rows)


def state_of(database: LiveDatabase, monitor_id: Any) -> str:
    return database.scalar("SELECT state FROM file_monitors WHERE id = %s", (monitor_id,))


def test_killing_the_watcher_and_the_scanner_mid_scan_triggers_every_file_exactly_once(
    cluster: CeleryCluster, tmp_path: Path
) -> None:
    database = cluster.database
    inbox = cluster.data_dir / "inbox"
    inbox.mkdir()
    dropped = drop_wave(inbox, "first") + drop_wave(inbox, "second")
    job = make_job([("test.sleep", {"seconds": 0})], name="receives the inbox")
    monitor = make_monitor(inbox, stability_window_sec=1, polling_interval_sec=30, batch_mode=False)
    bind(monitor, job)
    dripping = Dropper(inbox)
    dripping.start()
    try:
        cluster.start_beat()
        # 1. No watcher: the scan alone, killed in the middle; the monitor shows degraded.
        scanner = start_scanner(cluster, "scanner1")
        kill_mid_scan(database, monitor.pk, scanner)
        wait_for(lambda: state_of(database, monitor.pk) == "degraded", 10, "the unwatched monitor to degrade")
        # 2. No scanner: the restarted watcher's first poll, killed in the middle.
        dropped += drop_wave(inbox, "third")
        watcher = start_watcher(cluster, "watcher1")
        kill_mid_scan(database, monitor.pk, watcher)
        # 3. and 4. Both running, the scan made due at once so that they race; both killed.
        for round_number in (2, 3):
            dropped += drop_wave(inbox, f"wave{round_number}")
            database.execute("UPDATE file_monitors SET next_poll_at = now() WHERE id = %s", (monitor.pk,))
            scanner = start_scanner(cluster, f"scanner{round_number}")
            watcher = start_watcher(cluster, f"watcher{round_number}")
            kill_mid_scan(database, monitor.pk, scanner, watcher)
        dropped += drop_wave(inbox, "last")
        start_scanner(cluster, "scanner4")
        start_watcher(cluster, "watcher4")
        time.sleep(2)  # a few more drips with everything running
    finally:
        dripping.stop()
    dropped += dripping.dropped
    expected = set(dropped)

    started = time.monotonic()
    wait_for(
        lambda: set(created_log(database, monitor.pk)) >= expected,
        CATCH_UP_BOUND,
        f"every dropped file in the file log ({len(expected - set(created_log(database, monitor.pk)))} missing)",
        interval=0.5,
    )
    caught_up = time.monotonic() - started
    # Two more scans of the unchanged inbox must fire nothing again.
    for _ in range(2):
        asked_at = database.scalar(
            "UPDATE file_monitors SET next_poll_at = now() WHERE id = %s RETURNING now()", (monitor.pk,)
        )
        wait_for(
            lambda asked_at=asked_at: database.scalar(
                "SELECT last_polled_at > %s FROM file_monitors WHERE id = %s", (asked_at, monitor.pk)
            ),
            10,
            "the scan made due to run",
        )
    wait_for(lambda: not scan_in_progress(database, monitor.pk), 10, "the last scan to end")

    logged = created_log(database, monitor.pk)
    assert not {path: n for path, n in logged.items() if n > 1}, "files logged twice after a kill"
    assert set(logged) == expected
    in_executions = triggered_in_executions(database, job.pk)
    assert not {path: n for path, n in in_executions.items() if n > 1}, "files that triggered two executions"
    assert set(in_executions) == expected
    assert caught_up < CATCH_UP_BOUND
    wait_for(lambda: state_of(database, monitor.pk) == "active", 10, "the watched monitor to be active again")
    assert database.scalar(
        "SELECT next_poll_at <= now() + interval '31 seconds' FROM file_monitors WHERE id = %s", (monitor.pk,)
    )
