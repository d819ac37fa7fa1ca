"""Local file monitors polled against real directories: readiness, events, dedup, batch vs individual, file log."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from audit.models import AuditLogEntry
from jobs.models import ChainExecution, JobChain, JobChainMember, JobExecution
from monitors import detection, services, tasks
from monitors.models import MonitorDirectoryState, MonitorFileLog
from tests.engine_support import make_job
from tests.test_monitors_support import (
    WRITE,
    bind,
    drop,
    executions_of,
    make_monitor,
    monitor_values,
    run_queued,
    set_age,
    triggered_names,
)

pytestmark = pytest.mark.django_db

CREATED, MODIFIED, EXISTS = detection.FILE_CREATED, detection.FILE_MODIFIED, detection.FILE_EXISTS


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


@pytest.fixture
def job():
    return make_job(WRITE, name="process inbox")


# ---------------------------------------------------------------- readiness and events


def test_a_stable_new_file_queues_one_execution_with_file_created(inbox: Path, job) -> None:
    monitor = make_monitor(inbox)
    bind(monitor, job)
    drop(inbox, "invoice.csv", b"id,amount\n1,10\n")

    result = services.poll(monitor.pk)

    [execution] = executions_of(job)
    assert result.outcome == "polled" and result.executions == [str(execution.pk)]
    assert execution.state == "queued" and execution.triggered_by == f"monitor:{monitor.pk}"
    values = monitor_values(execution)
    assert values["monitor.id"] == str(monitor.pk) and values["monitor.name"] == monitor.name
    assert values["monitor.trigger_event"] == "FileCreated"
    assert triggered_names(execution) == ["invoice.csv"]


def test_an_announced_file_does_not_trigger_again_on_the_next_poll(inbox: Path, job) -> None:
    monitor = make_monitor(inbox)
    bind(monitor, job)
    drop(inbox, "invoice.csv")
    services.poll(monitor.pk)

    result = services.poll(monitor.pk)

    assert result.outcome == "polled" and result.triggered == []
    assert len(executions_of(job)) == 1


def test_a_file_still_being_written_waits_until_its_stability_window_has_passed(inbox: Path, job) -> None:
    monitor = make_monitor(inbox, stability_window_sec=5)
    bind(monitor, job)
    growing = drop(inbox, "big.bin", b"x" * 1000, age=0)

    first = services.poll(monitor.pk)
    with growing.open("ab") as handle:
        handle.write(b"y" * 500)
    second = services.poll(monitor.pk)
    set_age(growing, 6)  # no write for longer than the window
    third = services.poll(monitor.pk)

    assert first.triggered == [] and second.triggered == []
    assert first.pending_until is not None and first.pending_until > time.time()
    [execution] = executions_of(job)
    assert [item.file.size for item in third.triggered] == [1500]
    assert monitor_values(execution)["monitor.triggered_files"][0]["size"] == 1500


def test_a_pending_file_brings_the_next_poll_forward_to_when_it_can_be_stable(inbox: Path, job) -> None:
    monitor = make_monitor(inbox, stability_window_sec=5, polling_interval_sec=600)
    bind(monitor, job)
    drop(inbox, "fresh.csv", age=1)

    services.poll(monitor.pk)

    monitor.refresh_from_db()
    due_in = (monitor.next_poll_at - timezone.now()).total_seconds()
    assert 3 < due_in < 5  # about 4 s (5 s window, written 1 s ago), not the 600 s interval


def test_a_modified_file_triggers_file_modified_once_per_change(inbox: Path, job) -> None:
    monitor = make_monitor(inbox, trigger_events=CREATED | MODIFIED)
    bind(monitor, job)
    path = drop(inbox, "rates.csv", b"v1", age=120)
    services.poll(monitor.pk)
    drop(inbox, "rates.csv", b"version 2", age=60)

    modified = services.poll(monitor.pk)
    again = services.poll(monitor.pk)

    assert [(item.file.path, item.event) for item in modified.triggered] == [(str(path), "FileModified")]
    assert again.triggered == []
    assert [monitor_values(execution)["monitor.trigger_event"] for execution in executions_of(job)] == [
        "FileCreated",
        "FileModified",
    ]


def test_a_modified_file_does_not_trigger_without_the_file_modified_flag(inbox: Path, job) -> None:
    monitor = make_monitor(inbox, trigger_events=CREATED)
    bind(monitor, job)
    drop(inbox, "rates.csv", b"v1", age=120)
    services.poll(monitor.pk)
    drop(inbox, "rates.csv", b"version 2", age=60)

    result = services.poll(monitor.pk)

    assert result.triggered == [] and len(executions_of(job)) == 1


def test_a_deleted_file_that_reappears_triggers_file_created_again(inbox: Path, job) -> None:
    monitor = make_monitor(inbox)
    bind(monitor, job)
    path = drop(inbox, "daily.csv", b"monday")
    services.poll(monitor.pk)
    path.unlink()
    gone = services.poll(monitor.pk)
    drop(inbox, "daily.csv", b"tuesday")

    back = services.poll(monitor.pk)

    assert gone.triggered == []
    assert [item.event for item in back.triggered] == ["FileCreated"]
    assert len(executions_of(job)) == 2


def test_file_exists_triggers_at_every_poll(inbox: Path, job) -> None:
    monitor = make_monitor(inbox, trigger_events=EXISTS)
    bind(monitor, job)
    drop(inbox, "standing-order.csv")

    results = [services.poll(monitor.pk) for _ in range(3)]

    assert [[item.event for item in result.triggered] for result in results] == [["FileExists"]] * 3
    assert len(executions_of(job)) == 3


def test_file_patterns_select_the_files_matching_any_glob(inbox: Path, job) -> None:
    monitor = make_monitor(inbox, file_patterns=["*.csv", "INV_*"])
    bind(monitor, job)
    for name in ("orders.csv", "INV_0042.pgp", "notes.txt", "inv_lower.pgp"):
        drop(inbox, name)

    services.poll(monitor.pk)

    [execution] = executions_of(job)
    assert triggered_names(execution) == ["INV_0042.pgp", "orders.csv"]


def test_a_relative_local_path_is_a_folder_of_the_data_directory(inbox: Path, job) -> None:
    monitor = make_monitor({"type": "local", "path": "inbox"})
    bind(monitor, job)
    path = drop(inbox, "a.csv")

    services.poll(monitor.pk)

    [execution] = executions_of(job)
    assert monitor_values(execution)["monitor.triggered_files"][0]["path"] == str(path)


def test_subdirectories_of_the_watched_directory_do_not_trigger(inbox: Path, job) -> None:
    monitor = make_monitor(inbox)
    bind(monitor, job)
    (inbox / "archive").mkdir()
    drop(inbox / "archive", "old.csv")

    result = services.poll(monitor.pk)

    assert result.triggered == [] and executions_of(job) == []


# ---------------------------------------------------------------- batch and individual mode


def test_batch_mode_queues_one_execution_listing_every_file(inbox: Path, job) -> None:
    monitor = make_monitor(inbox, batch_mode=True)
    bind(monitor, job)
    first = drop(inbox, "a.csv", b"1234", age=90)
    drop(inbox, "b.csv", b"123456789", age=60)

    services.poll(monitor.pk)

    [execution] = executions_of(job)
    files = monitor_values(execution)["monitor.triggered_files"]
    assert [(item["name"], item["size"]) for item in files] == [("a.csv", 4), ("b.csv", 9)]
    assert files[0]["path"] == str(first)
    assert timezone.datetime.fromisoformat(files[0]["modified"]).timestamp() == pytest.approx(
        first.stat().st_mtime, abs=1e-3
    )
    assert monitor_values(execution)["monitor.triggered_at"]


def test_individual_mode_queues_one_execution_per_file(inbox: Path, job) -> None:
    monitor = make_monitor(inbox, batch_mode=False)
    bind(monitor, job)
    drop(inbox, "a.csv")
    drop(inbox, "b.csv")

    result = services.poll(monitor.pk)

    executions = executions_of(job)
    assert len(result.executions) == 2
    assert sorted(triggered_names(execution)[0] for execution in executions) == ["a.csv", "b.csv"]
    assert all(len(triggered_names(execution)) == 1 for execution in executions)


def test_every_bound_job_gets_an_execution_of_its_own(inbox: Path, job) -> None:
    other = make_job(WRITE, name="archive inbox")
    monitor = make_monitor(inbox)
    bind(monitor, job)
    bind(monitor, other)
    drop(inbox, "a.csv")

    services.poll(monitor.pk)

    assert len(executions_of(job)) == 1 and len(executions_of(other)) == 1


def test_a_bound_job_reads_the_triggered_file_through_its_context(inbox: Path) -> None:
    job = make_job([("test.write", {"name": "copy.txt", "text": "context:monitor.triggered_files[0].name"})])
    monitor = make_monitor(inbox)
    bind(monitor, job)
    drop(inbox, "statement.csv")
    [execution_id] = services.poll(monitor.pk).executions

    execution = run_queued(execution_id)

    assert execution.state == "completed", execution.error_message
    assert execution.context_snapshot["values"]["0.text"] == "statement.csv"


def test_a_batch_job_processes_every_triggered_file_through_the_triggered_paths(inbox: Path, data_dir: Path) -> None:
    import zipfile

    archive_path = data_dir / "out" / "all.zip"
    job = make_job([("file.zip", {"source_path": "context:monitor.triggered_paths", "output_path": str(archive_path)})])
    monitor = make_monitor(inbox, batch_mode=True)
    bind(monitor, job)
    for name in ("a.csv", "b.csv", "c.csv"):
        drop(inbox, name, name)
    [execution_id] = services.poll(monitor.pk).executions

    execution = run_queued(execution_id)

    assert execution.state == "completed", execution.error_message
    with zipfile.ZipFile(archive_path) as archive:
        assert sorted(archive.namelist()) == ["a.csv", "b.csv", "c.csv"]


def test_a_bound_chain_runs_members_that_see_the_monitor_context(inbox: Path) -> None:
    member_job = make_job([("test.write", {"name": "note.txt", "text": "context:monitor.triggered_files[0].name"})])
    chain = JobChain.objects.create(name="inbox chain")
    JobChainMember.objects.create(chain=chain, job=member_job, execution_order=0)
    monitor = make_monitor(inbox)
    bind(monitor, chain=chain)
    drop(inbox, "payroll.csv")

    [chain_execution_id] = services.poll(monitor.pk).executions

    chain_execution = ChainExecution.objects.get(pk=chain_execution_id)
    assert chain_execution.triggered_by == f"monitor:{monitor.pk}"
    member = JobExecution.objects.get(chain_execution_id=chain_execution.pk)
    assert monitor_values(member)["monitor.id"] == str(monitor.pk)
    finished = run_queued(member.pk)
    assert finished.state == "completed", finished.error_message
    assert finished.context_snapshot["values"]["0.text"] == "payroll.csv"


def test_a_disabled_bound_job_is_refused_and_the_refusal_audited(inbox: Path, job) -> None:
    job.is_enabled = False
    job.save()
    monitor = make_monitor(inbox)
    bind(monitor, job)
    drop(inbox, "a.csv")

    result = services.poll(monitor.pk)

    assert result.executions == [] and executions_of(job) == []
    refusal = AuditLogEntry.objects.get(entity_id=monitor.pk, operation="trigger_refused")
    assert "disabled" in refusal.details["refused"][0]


def test_a_file_refused_while_its_job_is_disabled_triggers_once_the_job_is_enabled(inbox: Path, job) -> None:
    job.is_enabled = False
    job.save()
    monitor = make_monitor(inbox)
    bind(monitor, job)
    drop(inbox, "late.csv")

    assert services.poll(monitor.pk).executions == []
    assert services.poll(monitor.pk).executions == []
    # The refusal is audited once, not at every poll while the file waits.
    assert AuditLogEntry.objects.filter(entity_id=monitor.pk, operation="trigger_refused").count() == 1

    job.is_enabled = True
    job.save()
    assert len(services.poll(monitor.pk).executions) == 1
    assert services.poll(monitor.pk).executions == []


# ---------------------------------------------------------------- file log and dedup across restarts


def test_each_triggered_file_is_written_to_the_file_log_with_its_execution(inbox: Path, job) -> None:
    monitor = make_monitor(inbox, batch_mode=False)
    bind(monitor, job)
    path = drop(inbox, "a.csv", b"12345")

    [execution_id] = services.poll(monitor.pk).executions

    [row] = MonitorFileLog.objects.filter(monitor_id=monitor.pk)
    assert (row.file_path, row.file_size, row.trigger_event) == (str(path), 5, "FileCreated")
    assert str(row.execution_id) == execution_id
    assert row.last_modified.timestamp() == pytest.approx(path.stat().st_mtime, abs=1e-5)


def test_only_the_latest_directory_snapshot_is_kept(inbox: Path, job) -> None:
    monitor = make_monitor(inbox)
    bind(monitor, job)
    drop(inbox, "a.csv")
    services.poll(monitor.pk)
    drop(inbox, "b.csv")

    services.poll(monitor.pk)

    [snapshot] = MonitorDirectoryState.objects.filter(monitor=monitor)
    assert sorted(Path(path).name for path in snapshot.directory_listing) == ["a.csv", "b.csv"]


def _lose_snapshot(monitor) -> None:
    """What a restart after a lost monitor_directory_state row looks like to the next poll."""
    MonitorDirectoryState.objects.filter(monitor=monitor).delete()


def test_a_lost_snapshot_does_not_trigger_file_created_again(inbox: Path, job) -> None:
    monitor = make_monitor(inbox)
    bind(monitor, job)
    drop(inbox, "a.csv")
    services.poll(monitor.pk)
    _lose_snapshot(monitor)

    result = services.poll(monitor.pk)

    assert result.triggered == [] and len(executions_of(job)) == 1


def test_a_lost_snapshot_does_not_report_an_unchanged_file_as_modified(inbox: Path, job) -> None:
    monitor = make_monitor(inbox, trigger_events=CREATED | MODIFIED)
    bind(monitor, job)
    path = drop(inbox, "a.csv")
    # A modification time with nanoseconds, as ext4 and xfs keep them.
    stamp_ns = (int(time.time()) - 60) * 10**9 + 123_456_789
    os.utime(path, ns=(stamp_ns, stamp_ns))
    services.poll(monitor.pk)
    _lose_snapshot(monitor)

    result = services.poll(monitor.pk)

    assert result.triggered == [] and len(executions_of(job)) == 1


def test_a_file_changed_while_the_snapshot_was_lost_triggers_file_modified(inbox: Path, job) -> None:
    monitor = make_monitor(inbox, trigger_events=CREATED | MODIFIED)
    bind(monitor, job)
    drop(inbox, "a.csv", b"v1", age=120)
    services.poll(monitor.pk)
    _lose_snapshot(monitor)
    drop(inbox, "a.csv", b"version 2", age=60)

    result = services.poll(monitor.pk)

    assert [item.event for item in result.triggered] == ["FileModified"]


# ---------------------------------------------------------------- file log pruning


def _log_row(monitor, triggered_at) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT create_monthly_partitions(%s::date)", [triggered_at.date()])
    MonitorFileLog.objects.create(
        monitor=monitor,
        file_path="/in/a.csv",
        file_size=1,
        last_modified=triggered_at,
        execution_id=monitor.pk,
        trigger_event="FileCreated",
        triggered_at=triggered_at,
    )


def _set_retention_days(days: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("UPDATE system_settings SET value = %s WHERE key = 'monitor.file_log_retention_days'", [days])
        assert cursor.rowcount == 1


def test_pruning_removes_file_log_rows_older_than_the_retention_days(inbox: Path) -> None:
    _set_retention_days(7)
    monitor = make_monitor(inbox)
    now = timezone.now()
    _log_row(monitor, now - timedelta(days=8))
    _log_row(monitor, now - timedelta(days=6))

    deleted = services.prune_file_log()

    assert deleted == 1
    [kept] = MonitorFileLog.objects.filter(monitor_id=monitor.pk)
    assert kept.triggered_at == pytest.approx(now - timedelta(days=6), abs=timedelta(seconds=1))


# ---------------------------------------------------------------- the Celery task


def test_the_poll_task_polls_the_monitor_it_is_given(inbox: Path, job) -> None:
    monitor = make_monitor(inbox)
    bind(monitor, job)
    drop(inbox, "a.csv")

    outcome = tasks.poll_monitor(str(monitor.pk))

    assert outcome == "polled" and len(executions_of(job)) == 1


def test_the_beat_task_polls_the_due_monitors_only(inbox: Path, job, monkeypatch: pytest.MonkeyPatch) -> None:
    from courier_site.celery import app
    from monitors.models import FileMonitor

    monkeypatch.setitem(app.conf, "task_always_eager", True)  # poll_monitor runs here, not on a worker
    due = make_monitor(inbox)
    later = make_monitor(inbox)
    bind(due, job)
    bind(later, job)
    FileMonitor.objects.filter(pk=later.pk).update(next_poll_at=timezone.now() + timedelta(minutes=5))
    drop(inbox, "a.csv")

    polled = tasks.poll_due_monitors()

    assert polled == 1
    [execution] = executions_of(job)
    assert monitor_values(execution)["monitor.id"] == str(due.pk)
