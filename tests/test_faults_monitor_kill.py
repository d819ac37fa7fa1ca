"""The monitor watcher and the scanner worker killed outright in the middle of a scan, while files keep arriving:
every file triggers exactly once, and the monitor is active again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.celery_support import ROOT, CeleryCluster, LiveDatabase, WorkerProcess, live_database, wait_for

pytestmark = pytest.mark.celery

# Files arrive in bursts of this many, this often, until the test has killed everything twice.
BURST = 60
BURST_SECONDS = 0.25
# Which process holds a monitor's poll lock (monitors.services.MONITOR_LOCK_CLASS), by the
# application name each process gives PostgreSQL.
LOCK_HOLDER = """
    SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.classid = 7001 AND l.granted AND a.datname = current_database()
"""


class Dropper:
    """Drops numbered files into a folder in bursts, in a thread of its own, until stopped."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.names: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for _ in range(BURST):
                name = f"order-{len(self.names):05d}.csv"
                (self.folder / name).write_text(f"order {name}\n")
                self.names.append(name)
            self.stop.wait(BURST_SECONDS)

    def __enter__(self) -> Dropper:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)


class Processes:
    """The watcher, a scanner worker, a clock worker and beat, each in a process group of its own."""

    def __init__(self, cluster: CeleryCluster, log_dir: Path) -> None:
        self.cluster = cluster
        self.log_dir = log_dir
        self.started: list[WorkerProcess] = []
        self.starts = Counter[str]()

    def _spawn(self, name: str, command: list[str]) -> WorkerProcess:
        self.starts[name] += 1
        log_path = self.log_dir / f"{name}-{self.starts[name]}.log"
        # PGAPPNAME: pg_stat_activity tells which process holds the poll lock.
        env = {**self.cluster.env(), "PGAPPNAME": f"courier-{name}"}
        with log_path.open("w") as log:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        worker = WorkerProcess(name, process, log_path)
        self.started.append(worker)
        return worker

    def celery_worker(self, name: str, queue_suffix: str) -> WorkerProcess:
        queue = f"{os.environ['COURIER_QUEUE']}{queue_suffix}"
        hostname = f"{name}-{self.starts[name] + 1}"  # a new name per start: its own heartbeat row
        command = [sys.executable, "-m", "celery", "-A", "courier_site", "worker", "--loglevel", "INFO"]
        command += ["--queues", queue, "--concurrency", "2", "--hostname", f"{hostname}@%h"]
        worker = self._spawn(name, [*command, "--without-gossip", "--without-mingle"])
        wait_for(
            lambda: (
                worker.process.poll() is not None
                or self.cluster.database.scalar(
                    "SELECT count(*) FROM process_heartbeats WHERE process_name LIKE %s AND stopped_at IS NULL",
                    (f"{hostname}@%",),
                )
            ),
            60,
            f"worker {name} to start",
            interval=0.2,
        )
        assert worker.process.poll() is None, worker.output()[-3000:]
        return worker

    def watcher(self) -> WorkerProcess:
        return self._spawn("watcher", [sys.executable, "manage.py", "run_monitor_watcher"])

    def beat(self) -> WorkerProcess:
        schedule = self.log_dir / "beat-schedule"
        return self._spawn("beat", [sys.executable, "-m", "celery", "-A", "courier_site", "beat", "-s", str(schedule)])

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


def kill(worker: WorkerProcess) -> None:
    """SIGKILL the whole process group (a Celery worker's pool children included) and reap it."""
    worker.signal(signal.SIGKILL, whole_group=True)
    worker.process.wait(10)


@pytest.fixture(scope="module")
def live(django_db_setup: Any, django_db_blocker: Any) -> Iterator[LiveDatabase]:
    with django_db_blocker.unblock(), live_database() as database:
        yield database


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
            live.execute("UPDATE file_monitors SET state = 'disabled'")
            live.execute("UPDATE job_executions SET state = 'cancelled' WHERE state IN ('queued', 'running', 'paused')")
            live.execute("UPDATE process_heartbeats SET stopped_at = now() WHERE stopped_at IS NULL")


@pytest.fixture
def processes(cluster: CeleryCluster, tmp_path: Path) -> Iterator[Processes]:
    group = Processes(cluster, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


def wait_for_scan_by(live: LiveDatabase, holder: str, timeout: float = 30) -> None:
    """Until a process named holder is in the middle of a scan (it holds the monitor's poll lock)."""
    with psycopg.connect(live.conninfo, autocommit=True) as conn:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (holder,) in conn.execute(LOCK_HOLDER).fetchall():
                return
            time.sleep(0.002)
    raise AssertionError(f"timed out after {timeout} s: no scan by {holder} seen")


def triggered_files(live: LiveDatabase, monitor_id: Any) -> tuple[list[str], list[str]]:
    """File names in the file log, and in the triggered_files of the monitor's executions (duplicates kept)."""
    logged = live.scalar(
        "SELECT coalesce(json_agg(file_path), '[]') FROM monitor_file_log WHERE monitor_id = %s", (monitor_id,)
    )
    in_context = live.scalar(
        "SELECT coalesce(json_agg(item->>'path'), '[]') FROM job_executions e, "
        "json_array_elements((e.context_snapshot->'values'->'monitor.triggered_files')::json) item "
        "WHERE e.triggered_by = %s",
        (f"monitor:{monitor_id}",),
    )
    return [Path(path).name for path in logged], [Path(path).name for path in in_context]


def test_killing_the_watcher_and_the_scanner_mid_scan_triggers_every_file_exactly_once(
    cluster: CeleryCluster, processes: Processes
) -> None:
    from monitors.models import FileMonitor
    from tests.engine_support import make_job
    from tests.test_monitors_support import bind, make_monitor

    inbox = cluster.data_dir / "inbox"
    inbox.mkdir(parents=True)
    monitor = make_monitor(inbox, stability_window_sec=1, polling_interval_sec=30)
    bind(monitor, make_job([("test.write", {"name": "seen.txt", "text": "context:monitor.trigger_event"})]))
    live = cluster.database
    processes.celery_worker("clock", "-control")
    scanner = processes.celery_worker("scanner", "-monitors")
    watcher = processes.watcher()
    processes.beat()
    wait_for(lambda: FileMonitor.objects.get(pk=monitor.pk).state == "active", 30, "the watcher to take the monitor")

    with Dropper(inbox) as dropper:
        # 1. The watcher is caught scanning: it and the scanner die at once, files keep coming.
        wait_for_scan_by(live, "courier-watcher")
        kill(watcher)
        kill(scanner)
        time.sleep(1.5)
        scanner = processes.celery_worker("scanner", "-monitors")
        watcher = processes.watcher()

        # 2. Without a watcher the scan is the authority: the scanner is caught scanning and dies.
        wait_for(lambda: FileMonitor.objects.get(pk=monitor.pk).state == "active", 30, "the watcher to come back")
        kill(watcher)
        live.execute("UPDATE file_monitors SET next_poll_at = now() WHERE id = %s", (monitor.pk,))
        wait_for_scan_by(live, "courier-scanner")
        kill(scanner)
        time.sleep(1.5)
        processes.celery_worker("scanner", "-monitors")
        processes.watcher()
        time.sleep(1.0)
    dropped = set(dropper.names)
    assert len(dropped) >= 5 * BURST

    wait_for(lambda: set(triggered_files(live, monitor.pk)[0]) >= dropped, 60, "every dropped file to trigger")
    # One more scan over the full directory, by the scan task itself: still nothing fires twice.
    polled_before = FileMonitor.objects.get(pk=monitor.pk).last_polled_at
    live.execute("UPDATE file_monitors SET next_poll_at = now() WHERE id = %s", (monitor.pk,))
    wait_for(
        lambda: FileMonitor.objects.get(pk=monitor.pk).last_polled_at > polled_before, 30, "a scan after the last file"
    )

    logged, in_context = triggered_files(live, monitor.pk)
    assert [name for name, count in Counter(logged).items() if count > 1] == []
    assert set(logged) == dropped
    assert sorted(in_context) == sorted(logged)  # each file in exactly one execution's context too
    wait_for(lambda: FileMonitor.objects.get(pk=monitor.pk).state == "active", 30, "the monitor to be active again")
    assert processes.starts == {"clock": 1, "scanner": 3, "watcher": 3, "beat": 1}
