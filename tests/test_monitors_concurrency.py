"""Monitors polled from several threads at once, and the inotify watcher running in a thread of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from audit.models import AuditLogEntry
from courier_site import heartbeats
from jobs.models import JobExecution
from monitors import services
from monitors.models import FileMonitor
from monitors.watcher import MonitorWatcher
from tests.celery_support import ROOT, wait_for
from tests.child_processes import tied_to_test_run
from tests.engine_support import make_job
from tests.test_monitors_support import WRITE, bind, drop, executions_of, make_monitor

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path: Path) -> Path:
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    settings.COURIER_DATA_DIR.mkdir()
    return settings.COURIER_DATA_DIR


@pytest.fixture
def inbox(data_dir: Path) -> Path:
    folder = data_dir / "inbox"
    folder.mkdir()
    return folder


def at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads released together; each thread closes its own database connection."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[index] = call()
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(index, call)) for index, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    return results


def state_of(monitor: FileMonitor) -> str:
    return FileMonitor.objects.get(pk=monitor.pk).state


def wait_taken_up(*monitors: FileMonitor) -> None:
    """Until the watcher watches the monitors and made its first poll of each (after the window)."""

    def ready() -> bool:
        rows = FileMonitor.objects.filter(pk__in=[monitor.pk for monitor in monitors])
        return all(row.state == "active" and row.last_polled_at is not None for row in rows)

    wait_for(ready, 5, "the watcher took up the monitors and polled them once")


# ---------------------------------------------------------------- several pollers


def test_two_pollers_at_once_queue_one_execution(inbox: Path) -> None:
    job = make_job(WRITE)
    monitor = make_monitor(inbox)
    bind(monitor, job)
    drop(inbox, "invoice.csv")

    outcomes = at_once([lambda: services.poll(monitor.pk).outcome] * 2)

    assert set(outcomes) <= {"polled", "busy"} and "polled" in outcomes
    assert len(executions_of(job)) == 1


def test_a_poll_while_another_process_polls_the_monitor_returns_busy(inbox: Path) -> None:
    job = make_job(WRITE)
    monitor = make_monitor(inbox)
    bind(monitor, job)
    drop(inbox, "invoice.csv")
    holding, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        try:
            with services.poll_lock(monitor.pk) as got:
                assert got
                holding.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert holding.wait(10)
        result = services.poll(monitor.pk)
    finally:
        release.set()
        holder.join(10)

    assert result.outcome == "busy" and executions_of(job) == []
    assert services.poll(monitor.pk).outcome == "polled"  # the lock went with the other poll


def test_two_claimers_at_once_claim_each_due_monitor_once(inbox: Path) -> None:
    monitors = [make_monitor(inbox) for _ in range(12)]
    FileMonitor.objects.update(next_poll_at=timezone.now() - timedelta(seconds=1))

    first, second = at_once([services.claim_due] * 2)

    assert set(first).isdisjoint(second)
    assert sorted(first + second) == sorted(str(monitor.pk) for monitor in monitors)


# ---------------------------------------------------------------- the inotify watcher


@contextmanager
def running_watcher(refresh_seconds: float = 0.2) -> Iterator[MonitorWatcher]:
    """MonitorWatcher.run in a thread, stopped (and its connection closed) on exit."""
    watcher = MonitorWatcher(refresh_seconds=refresh_seconds)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            watcher.run(stop)
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=run, name="monitor-watcher-test")
    thread.start()
    try:
        yield watcher
    finally:
        stop.set()
        thread.join(15)
        # Raised even when the test body failed: a dead watcher thread explains most timeouts.
        if errors:
            raise AssertionError(f"the watcher thread failed: {errors[0]!r}") from errors[0]
    assert not thread.is_alive()


def test_the_watcher_queues_an_execution_once_a_new_file_is_stable(inbox: Path) -> None:
    job = make_job(WRITE)
    monitor = make_monitor(inbox, stability_window_sec=1, polling_interval_sec=3600, state="degraded")
    bind(monitor, job)
    with running_watcher():
        wait_taken_up(monitor)
        path = inbox / "invoice.csv"
        with path.open("wb") as handle:
            for _ in range(5):
                handle.write(b"row\n" * 1000)
                handle.flush()
                time.sleep(0.1)
        completed = time.time()

        [execution] = wait_for(lambda: executions_of(job), 5, "an execution was queued")

    latency = execution.queued_at.timestamp() - completed
    assert 0.9 <= latency <= 1 + 1.5, latency  # stability window, plus at most 1.5 s
    assert execution.context_snapshot["values"]["monitor.triggered_files"][0]["size"] == 20_000


def test_a_monitor_whose_directory_cannot_be_watched_is_degraded_until_it_exists(data_dir: Path) -> None:
    missing = data_dir / "later"
    monitor = make_monitor(missing, stability_window_sec=1)
    with running_watcher():
        wait_for(lambda: state_of(monitor) == "degraded", 5, "the monitor went degraded")
        missing.mkdir()
        wait_for(lambda: state_of(monitor) == "active", 5, "the monitor came back to active")


def test_a_watched_directory_that_is_removed_degrades_the_monitor_until_it_comes_back(inbox: Path) -> None:
    job = make_job(WRITE)
    monitor = make_monitor(inbox, stability_window_sec=1, polling_interval_sec=3600, state="degraded")
    bind(monitor, job)
    with running_watcher():
        wait_for(lambda: state_of(monitor) == "active", 5, "the watcher took up the monitor")
        inbox.rmdir()
        wait_for(lambda: state_of(monitor) == "degraded", 5, "the monitor went degraded")
        inbox.mkdir()
        wait_for(lambda: state_of(monitor) == "active", 5, "the monitor came back to active")
        drop(inbox, "after.csv", age=0)

        wait_for(lambda: executions_of(job), 5, "a file in the recreated directory was picked up")


def test_pausing_one_of_two_monitors_on_a_directory_keeps_the_other_watched(inbox: Path) -> None:
    job = make_job(WRITE)
    kept = make_monitor(inbox, stability_window_sec=1, polling_interval_sec=3600, state="degraded")
    paused = make_monitor(inbox, stability_window_sec=1, polling_interval_sec=3600, state="degraded")
    bind(kept, job)
    with running_watcher():
        wait_taken_up(kept, paused)
        services.change_state(paused.pk, "pause", by="operator")
        time.sleep(0.6)  # a few refreshes of the watcher
        drop(inbox, "invoice.csv", age=0)

        wait_for(lambda: executions_of(job), 5, "the remaining monitor still saw the file")


def test_the_watcher_puts_a_watched_monitor_marked_degraded_back_to_active(inbox: Path) -> None:
    monitor = make_monitor(inbox, stability_window_sec=1, state="degraded")
    with running_watcher():
        wait_for(lambda: state_of(monitor) == "active", 5, "the watcher took up the monitor")
        # What degrade_unwatched does when the watcher's heartbeat was late for a while.
        services.set_watcher_state(monitor.pk, False, reason="no monitor watcher process is running")

        wait_for(lambda: state_of(monitor) == "active", 5, "the watcher claimed the monitor back")


def test_a_stopped_watcher_leaves_its_monitors_degraded(inbox: Path) -> None:
    monitor = make_monitor(inbox, stability_window_sec=1, state="degraded")
    with running_watcher():
        wait_for(lambda: state_of(monitor) == "active", 5, "the watcher took up the monitor")

    assert state_of(monitor) == "degraded"


def test_the_watcher_does_not_poll_a_paused_monitor(inbox: Path) -> None:
    job = make_job(WRITE)
    monitor = make_monitor(inbox, stability_window_sec=1, state="paused")
    bind(monitor, job)
    with running_watcher():
        drop(inbox, "invoice.csv", age=0)
        time.sleep(1.6)

    assert JobExecution.objects.filter(job=job).count() == 0


# ---------------------------------------------------------------- the management command


def _database_url() -> str:
    settings = connection.settings_dict
    password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
    host = settings.get("HOST") or "127.0.0.1"
    return f"postgresql://{settings['USER']}{password}@{host}:{settings.get('PORT') or 5432}/{settings['NAME']}"


def test_the_watcher_command_watches_until_sigterm_and_reports_a_heartbeat(inbox: Path, data_dir: Path) -> None:
    job = make_job(WRITE)
    monitor = make_monitor(inbox, stability_window_sec=1, polling_interval_sec=3600, state="degraded")
    bind(monitor, job)
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "COURIER_DATA_DIR": str(data_dir),
        "COURIER_HEARTBEAT_INTERVAL": "1",
        "COURIER_STEP_MODULES": "tests.engine_support",
        "DJANGO_SETTINGS_MODULE": "courier_site.settings",
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        tied_to_test_run([sys.executable, "manage.py", "run_monitor_watcher"]),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: process.poll() is not None or state_of(monitor) == "active", 20, "the command started")
        assert process.poll() is None
        assert heartbeats.newest("watcher") is not None
        drop(inbox, "invoice.csv", age=0)
        wait_for(lambda: executions_of(job), 5, "the command's watcher queued an execution")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)

    assert process.returncode == 0, output
    assert "Monitor watcher stopped." in output
    assert state_of(monitor) == "degraded"  # nothing watches it any more
    assert heartbeats.newest("watcher") is None


def test_an_inotify_queue_overflow_degrades_the_monitor_and_scans_what_was_missed(inbox: Path) -> None:
    import logging

    job = make_job(WRITE)
    monitor = make_monitor(inbox, stability_window_sec=1, polling_interval_sec=3600, state="degraded")
    bind(monitor, job)
    with running_watcher(refresh_seconds=30) as watcher:
        wait_for(lambda: state_of(monitor) == "active", 5, "the watcher took up the monitor")
        wait_for(lambda: not watcher.due, 5, "the first poll of the directory")
        # The kernel drops the events of the next file: as if the queue overflowed.
        _, watch, _ = watcher.watches[str(monitor.pk)]
        watcher.observer.unschedule(watch)
        drop(inbox, "lost-event.csv")
        time.sleep(1.5)
        executions_before = len(executions_of(job))
        assert executions_before == 0  # nothing saw the file
        # What watchdog reports when the kernel queue overflowed (its only signal of it).
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )

        wait_for(lambda: state_of(monitor) == "degraded", 5, "the monitor shows degraded after the overflow")
        wait_for(lambda: len(executions_of(job)) > executions_before, 5, "the overflow scan triggered the file")
    assert AuditLogEntry.objects.filter(entity_id=monitor.pk, operation="watcher_off").exists()
