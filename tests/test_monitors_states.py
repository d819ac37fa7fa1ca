"""Monitor states (failures, error, acknowledge, pause/resume/disable/enable), claims, watcher state and validation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone
from psycopg import sql

from audit.models import AuditLogEntry, DomainEvent
from courier_site import heartbeats
from monitors import detection, services
from monitors.models import FileMonitor
from tests.engine_support import make_job
from tests.test_monitors_support import WRITE, bind, drop, executions_of, make_monitor

pytestmark = pytest.mark.django_db


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


def failing_monitor(data_dir: Path, **fields) -> FileMonitor:
    """A monitor on a directory that does not exist: every poll fails."""
    return make_monitor(data_dir / "not-there", **fields)


def failures_audited(monitor: FileMonitor) -> list[int]:
    # Sorted by count: the rows of one test transaction share their performed_at.
    rows = AuditLogEntry.objects.filter(entity_id=monitor.pk, operation="poll_failed")
    return sorted(row.details["failure_count"] for row in rows)


# ---------------------------------------------------------------- failures and error


def test_a_failed_poll_counts_the_failure_and_audits_it_with_the_count(data_dir: Path) -> None:
    monitor = failing_monitor(data_dir)

    results = [services.poll(monitor.pk) for _ in range(2)]

    monitor.refresh_from_db()
    assert [result.outcome for result in results] == ["failed", "failed"]
    assert monitor.consecutive_failure_count == 2 and monitor.state == "active"
    assert "[E5001]" in monitor.last_error and "does not exist" in monitor.last_error
    assert failures_audited(monitor) == [1, 2]


def test_max_consecutive_failures_in_a_row_put_the_monitor_in_error(data_dir: Path) -> None:
    monitor = failing_monitor(data_dir, max_consecutive_failures=3)

    states = []
    for _ in range(3):
        services.poll(monitor.pk)
        monitor.refresh_from_db()
        states.append(monitor.state)

    assert states == ["active", "active", "error"]
    audited = AuditLogEntry.objects.filter(entity_id=monitor.pk, operation="poll_failed")
    assert sorted((row.details["failure_count"], row.details["state"]) for row in audited) == [
        (1, "active"),
        (2, "active"),
        (3, "error"),
    ]
    assert DomainEvent.objects.filter(entity_id=monitor.pk, event_type="MonitorErrored").count() == 1


def test_a_monitor_in_error_is_not_polled_until_acknowledged(data_dir: Path) -> None:
    monitor = failing_monitor(data_dir, max_consecutive_failures=1)
    services.poll(monitor.pk)

    result = services.poll(monitor.pk)

    monitor.refresh_from_db()
    assert result.outcome == "skipped"
    assert monitor.state == "error" and monitor.consecutive_failure_count == 1


def test_a_successful_poll_resets_the_failure_count(data_dir: Path) -> None:
    monitor = failing_monitor(data_dir)
    services.poll(monitor.pk)
    services.poll(monitor.pk)
    (data_dir / "not-there").mkdir()

    result = services.poll(monitor.pk)

    monitor.refresh_from_db()
    assert result.outcome == "polled"
    assert (monitor.consecutive_failure_count, monitor.last_error) == (0, None)
    recovered = AuditLogEntry.objects.get(entity_id=monitor.pk, operation="poll_recovered")
    assert recovered.details == {"after_failures": 2}


def test_acknowledge_moves_an_errored_monitor_back_to_active_and_it_polls_again(data_dir: Path) -> None:
    monitor = failing_monitor(data_dir, max_consecutive_failures=1)
    services.poll(monitor.pk)
    (data_dir / "not-there").mkdir()

    services.change_state(monitor.pk, "acknowledge", by="operator")
    result = services.poll(monitor.pk)

    monitor.refresh_from_db()
    assert result.outcome == "polled" and monitor.state == "active"
    acknowledged = AuditLogEntry.objects.get(entity_id=monitor.pk, operation="acknowledged")
    assert acknowledged.performed_by == "operator" and acknowledged.details["from"] == "error"


def test_a_local_path_outside_the_allowed_roots_fails_the_poll_with_e2040(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monitor = make_monitor(outside)

    result = services.poll(monitor.pk)

    assert result.outcome == "failed" and "[E2040]" in result.error


@contextmanager
def current_file_log_partition_detached() -> Iterator[None]:
    """The file log without a partition for this month (rolled back with the test anyway)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT relname, pg_get_expr(relpartbound, oid) FROM pg_class
            WHERE relname = 'monitor_file_log_' || to_char(now(), 'YYYY_MM')
            """
        )
        name, bounds = cursor.fetchone()
        partition = sql.Identifier(name)
        cursor.execute(sql.SQL("ALTER TABLE monitor_file_log DETACH PARTITION {}").format(partition))
        yield
        cursor.execute(sql.SQL("ALTER TABLE monitor_file_log ATTACH PARTITION {} " + bounds).format(partition))


def test_a_poll_that_cannot_be_stored_counts_as_a_failure_and_its_files_trigger_later(inbox: Path) -> None:
    job = make_job(WRITE)
    monitor = make_monitor(inbox)
    bind(monitor, job)
    drop(inbox, "a.csv")
    with current_file_log_partition_detached():
        failed = services.poll(monitor.pk)
    retried = services.poll(monitor.pk)

    assert failed.outcome == "failed" and "no partition" in failed.error
    assert failures_audited(monitor) == [1]
    assert [item.file.name for item in retried.triggered] == ["a.csv"]
    assert len(executions_of(job)) == 1


# ---------------------------------------------------------------- operator actions

AUDITED_AS = {
    "pause": "paused",
    "resume": "resumed",
    "disable": "disabled",
    "enable": "enabled",
    "acknowledge": "acknowledged",
}


@pytest.mark.parametrize(
    ("start", "action", "end"),
    [
        ("active", "pause", "paused"),
        ("degraded", "pause", "paused"),
        ("paused", "resume", "active"),
        ("active", "disable", "disabled"),
        ("paused", "disable", "disabled"),
        ("error", "disable", "disabled"),
        ("disabled", "enable", "active"),
        ("error", "acknowledge", "active"),
    ],
)
def test_operator_actions_move_the_monitor_and_are_audited(inbox: Path, start: str, action: str, end: str) -> None:
    monitor = make_monitor(inbox, state=start)

    services.change_state(monitor.pk, action, by="operator")

    monitor.refresh_from_db()
    assert monitor.state == end
    entry = AuditLogEntry.objects.get(entity_id=monitor.pk, operation=AUDITED_AS[action])
    assert entry.details["from"] == start and entry.details["to"] == end


@pytest.mark.parametrize(
    ("start", "action"),
    [
        ("active", "resume"),
        ("active", "acknowledge"),
        ("active", "enable"),
        ("paused", "pause"),
        ("paused", "enable"),
        ("disabled", "pause"),
        ("disabled", "resume"),
        ("error", "resume"),
        ("error", "enable"),
        # error -> active only by acknowledge: pausing and resuming must not get around it
        ("error", "pause"),
    ],
)
def test_actions_that_do_not_apply_to_the_state_are_refused_with_e5002(inbox: Path, start: str, action: str) -> None:
    monitor = make_monitor(inbox, state=start)

    with pytest.raises(services.MonitorStateRefused, match=rf"\[E5002\] monitor '.*' is {start}"):
        services.change_state(monitor.pk, action, by="operator")

    monitor.refresh_from_db()
    assert monitor.state == start


def test_a_paused_monitor_is_not_polled(inbox: Path) -> None:
    job = make_job(WRITE)
    monitor = make_monitor(inbox)
    bind(monitor, job)
    drop(inbox, "a.csv")
    services.change_state(monitor.pk, "pause", by="operator")

    result = services.poll(monitor.pk)

    assert result.outcome == "skipped" and executions_of(job) == []


def test_a_resumed_monitor_is_due_at_once(inbox: Path) -> None:
    monitor = make_monitor(inbox, state="paused")
    FileMonitor.objects.filter(pk=monitor.pk).update(next_poll_at=timezone.now() + timedelta(hours=1))

    services.change_state(monitor.pk, "resume", by="operator")

    assert str(monitor.pk) in services.claim_due()


# ---------------------------------------------------------------- claims


def test_claim_due_takes_due_polling_monitors_once_and_pushes_them_ahead(inbox: Path) -> None:
    past = timezone.now() - timedelta(seconds=1)
    due = [make_monitor(inbox, state=state) for state in ("active", "degraded")]
    not_due = make_monitor(inbox)
    not_polling = [make_monitor(inbox, state=state) for state in ("paused", "disabled", "error")]
    FileMonitor.objects.filter(pk__in=[m.pk for m in due + not_polling]).update(next_poll_at=past)
    FileMonitor.objects.filter(pk=not_due.pk).update(next_poll_at=timezone.now() + timedelta(minutes=1))

    first = services.claim_due()
    second = services.claim_due()

    assert sorted(first) == sorted(str(monitor.pk) for monitor in due)
    assert second == []
    pushed = FileMonitor.objects.get(pk=due[0].pk).next_poll_at
    assert pushed > timezone.now() + timedelta(seconds=50)


def test_a_deleted_monitor_is_neither_claimed_nor_polled(inbox: Path) -> None:
    monitor = make_monitor(inbox)
    FileMonitor.objects.filter(pk=monitor.pk).delete()

    assert services.claim_due() == []
    assert services.poll(monitor.pk).outcome == "skipped"


# ---------------------------------------------------------------- watcher state


def test_local_monitors_show_degraded_while_no_watcher_reports(inbox: Path, settings) -> None:
    local = make_monitor(inbox)
    remote = make_monitor({"type": "remote", "connection_id": "00000000-0000-0000-0000-000000000001", "path": "in"})

    changed = services.degrade_unwatched()

    local.refresh_from_db()
    remote.refresh_from_db()
    assert changed == 1
    assert (local.state, remote.state) == ("degraded", "active")
    assert AuditLogEntry.objects.get(entity_id=local.pk, operation="watcher_off").details["to"] == "degraded"


def test_a_fresh_watcher_heartbeat_keeps_local_monitors_active(inbox: Path) -> None:
    monitor = make_monitor(inbox)
    heartbeats.beat("watcher", "watcher@test")

    changed = services.degrade_unwatched()

    monitor.refresh_from_db()
    assert changed == 0 and monitor.state == "active"


def test_a_stopped_watcher_does_not_count_as_watching(inbox: Path) -> None:
    monitor = make_monitor(inbox)
    heartbeats.beat("watcher", "watcher@test")
    heartbeats.mark_stopped("watcher@test")

    services.degrade_unwatched()

    monitor.refresh_from_db()
    assert monitor.state == "degraded"


def test_watcher_state_changes_only_between_active_and_degraded(inbox: Path) -> None:
    degraded = make_monitor(inbox, state="degraded")
    paused = make_monitor(inbox, state="paused")

    services.set_watcher_state(degraded.pk, True, reason="watching")
    services.set_watcher_state(paused.pk, True, reason="watching")

    degraded.refresh_from_db()
    paused.refresh_from_db()
    assert (degraded.state, paused.state) == ("active", "paused")


# ---------------------------------------------------------------- validation


def unsaved_monitor(inbox: Path, **fields) -> FileMonitor:
    values = {
        "name": "inbox",
        "watch_target": {"type": "local", "path": str(inbox)},
        "trigger_events": detection.FILE_CREATED,
        "polling_interval_sec": 60,
        "stability_window_sec": 5,
        "file_patterns": [],
        **fields,
    }
    return FileMonitor(**values)


def test_a_sound_definition_passes_the_check(inbox: Path) -> None:
    services.check_definition(unsaved_monitor(inbox, file_patterns=["*.csv"], trigger_events=7))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"polling_interval_sec": 29}, r"\[E5000\] the polling interval must be 30 seconds or more"),
        ({"stability_window_sec": 0}, r"\[E5000\] the stability window must be at least 1 second"),
        ({"trigger_events": 0}, r"\[E5000\] choose at least one trigger event"),
        ({"trigger_events": 8}, r"\[E5000\] choose at least one trigger event"),
        ({"file_patterns": "*.csv"}, r"\[E5000\] file patterns must be a list of globs"),
        ({"max_consecutive_failures": 0}, r"\[E5000\] max consecutive failures must be 1 or more"),
        ({"watch_target": {"type": "local"}}, r"\[E5000\] the watch target needs the path"),
        ({"watch_target": {"type": "ftp", "path": "/in"}}, r"\[E5000\] watch target type must be local or remote"),
        ({"watch_target": {"type": "remote", "path": "/in"}}, r"\[E5000\] a remote watch target needs a connection"),
    ],
)
def test_definitions_that_can_never_poll_are_refused_with_e5000(inbox: Path, fields: dict, message: str) -> None:
    with pytest.raises(services.InvalidMonitor, match=message):
        services.check_definition(unsaved_monitor(inbox, **fields))


def test_a_local_path_outside_the_allowed_roots_is_refused_with_e2040(inbox: Path, tmp_path: Path) -> None:
    from jobs.errors import PathNotAllowed

    monitor = unsaved_monitor(inbox, watch_target={"type": "local", "path": str(inbox / ".." / ".." / "etc")})

    with pytest.raises(PathNotAllowed, match=r"\[E2040\] monitor path .* is outside COURIER_DATA_DIR"):
        services.check_definition(monitor)


def test_a_remote_target_on_a_deleted_connection_is_refused(inbox: Path) -> None:
    from connections.models import Connection

    connection = Connection(
        name="gone partner", protocol="sftp", host="127.0.0.1", port=22, auth_method="password", username="x"
    )
    connection.set_password("x")
    connection.save()
    connection.delete()
    monitor = unsaved_monitor(inbox, watch_target={"type": "remote", "connection_id": str(connection.pk), "path": "in"})

    with pytest.raises(services.InvalidMonitor, match=r"\[E5000\] connection .* does not exist \(or is deleted\)"):
        services.check_definition(monitor)


def test_a_remote_target_on_a_disabled_connection_is_refused(inbox: Path) -> None:
    from connections.models import Connection

    connection = Connection(
        name="paused partner",
        protocol="sftp",
        host="127.0.0.1",
        port=22,
        auth_method="password",
        username="x",
        status="disabled",
    )
    connection.set_password("x")
    connection.save()
    monitor = unsaved_monitor(inbox, watch_target={"type": "remote", "connection_id": str(connection.pk), "path": "in"})

    with pytest.raises(services.InvalidMonitor, match=r"\[E5000\] connection 'paused partner' is disabled"):
        services.check_definition(monitor)
