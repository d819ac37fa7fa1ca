"""Retention (SPEC 3): expired partitions are exported, verified, then detached and dropped; failures keep them."""

from __future__ import annotations

import csv
import errno
import gzip
import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import psycopg
import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.db import OperationalError, connection
from psycopg import sql

from audit.models import AuditLogEntry
from courier_site import archival, partitions, tasks
from courier_site.archival import gzip_csv
from courier_site.archival.service import ARCHIVE_LOCK_KEY, audit_entity
from courier_site.archive_storage import ArchiveStorageError, LocalDirectoryStorage
from courier_site.celery import app, route_task
from courier_site.db import conninfo_for

pytestmark = pytest.mark.django_db

TODAY = datetime.now(UTC).date()
# Error text with what CSV must quote: commas, doubled quotes and a line break.
AWKWARD_TEXT = 'disk full, "retrying"\nsecond line'


# ---------------------------------------------------------------- helpers


def month(offset: int) -> date:
    """First day of the month offset months from this one (negative: the past)."""
    return partitions.month_start(TODAY, offset)


def partition_name(table: str, offset: int) -> str:
    return f"{table}_{month(offset):%Y_%m}"


def create_months(*offsets: int) -> None:
    with connection.cursor() as cursor:
        for offset in offsets:
            cursor.execute("SELECT create_monthly_partitions(%s::date)", [month(offset)])


_INSERTS = {
    "job_executions": (
        "INSERT INTO job_executions (id, job_id, job_version_number, triggered_by, state, error_message, created_at)"
        " VALUES (%(id)s, gen_random_uuid(), 1, 'schedule', 'failed', %(text)s, %(at)s)"
    ),
    "step_executions": (
        "INSERT INTO step_executions (id, job_execution_id, job_step_id, step_order, error_message, created_at)"
        " VALUES (%(id)s, gen_random_uuid(), gen_random_uuid(), 1, %(text)s, %(at)s)"
    ),
    "monitor_file_log": (
        "INSERT INTO monitor_file_log (id, monitor_id, file_path, file_size, last_modified, execution_id, triggered_at)"
        " VALUES (%(id)s, gen_random_uuid(), %(text)s, 10, %(at)s, gen_random_uuid(), %(at)s)"
    ),
    # Old audit months cannot be written through AuditLogEntry.objects.record (it stamps
    # now()), so the rows go in with an explicit performed_at.
    "audit_log_entries": (
        "INSERT INTO audit_log_entries (id, entity_type, entity_id, operation, performed_by, performed_at, details)"
        " VALUES (%(id)s, 'job', gen_random_uuid(), 'job_updated', %(text)s, %(at)s, '{\"field\": \"name\"}')"
    ),
    "domain_events": (
        "INSERT INTO domain_events (id, event_type, entity_type, entity_id, payload, occurred_at)"
        " VALUES (%(id)s, 'JobUpdated', 'job', gen_random_uuid(), '{\"n\": 1}', %(at)s)"
    ),
}


def fill(table: str, offset: int, rows: int, *, text: str = AWKWARD_TEXT) -> list[str]:
    """Insert rows into table's partition of that month; return their ids."""
    ids = [str(uuid.uuid4()) for _ in range(rows)]
    first_day = month(offset)
    with connection.cursor() as cursor:
        for index, row_id in enumerate(ids):
            at = datetime(first_day.year, first_day.month, 1, tzinfo=UTC) + timedelta(days=1, minutes=index)
            cursor.execute(_INSERTS[table], {"id": row_id, "text": text, "at": at})
    return ids


def fill_bulk(table: str, offset: int, rows: int) -> None:
    """Many rows of hard-to-compress text, so an export spans many gzip blocks."""
    first_day = month(offset)
    at = datetime(first_day.year, first_day.month, 2, tzinfo=UTC)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO job_executions (job_id, job_version_number, triggered_by, error_message, created_at)"
            " SELECT gen_random_uuid(), 1, 'bulk', string_agg(md5(random()::text || g::text || i::text), ''), %s"
            " FROM generate_series(1, %s) g, generate_series(1, 8) i GROUP BY g",
            [at, rows],
        )


def attached(table: str) -> list[str]:
    return [partition.name for partition in partitions.list_partitions(table)]


def table_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        return cursor.fetchone()[0]


def row_count(name: str) -> int:
    with connection.cursor() as cursor:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
        cursor.execute(query.as_string(cursor.connection))
        return cursor.fetchone()[0]


def set_setting(key: str, value: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("UPDATE system_settings SET value = %s WHERE key = %s", [value, key])
        assert cursor.rowcount == 1, key


def domain_event_count(event_type: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM domain_events WHERE event_type = %s", [event_type])
        return cursor.fetchone()[0]


def archive_audit(table: str, operation: str) -> list[AuditLogEntry]:
    return list(AuditLogEntry.objects.for_entity("system", audit_entity(table)).filter(operation=operation))


def read_archive(path: str) -> tuple[list[str], list[list[str]]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as text:
        records = list(csv.reader(text))
    return records[0], records[1:]


@pytest.fixture
def storage(tmp_path: Path) -> LocalDirectoryStorage:
    return LocalDirectoryStorage(tmp_path / "archive")


@pytest.fixture
def archive_dir(tmp_path: Path, settings) -> Path:
    """COURIER_ARCHIVE_DIR of this test, for the command and the task (default storage)."""
    settings.COURIER_ARCHIVE_DIR = tmp_path / "archive"
    return settings.COURIER_ARCHIVE_DIR


def run_archive(storage: LocalDirectoryStorage, *tables: str, dry_run: bool = False) -> archival.ArchiveRun:
    return archival.archive_expired_partitions(
        tables or partitions.PARTITIONED_TABLES, dry_run=dry_run, storage=storage, performed_by="test"
    )


class FullDisk(OSError):
    def __init__(self) -> None:
        super().__init__(errno.ENOSPC, "No space left on device")


class _FillsUp:
    """A stream that accepts `room` bytes, then fails like a full disk."""

    def __init__(self, target: BinaryIO, room: int) -> None:
        self.target, self.room = target, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise FullDisk()
        self.room -= len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


class FullDiskStorage(LocalDirectoryStorage):
    """Runs out of space part-way through the export of one partition."""

    def __init__(self, root: Path, partition: str, room: int) -> None:
        super().__init__(root)
        self.partition, self.room = partition, room

    @contextmanager
    def write_stream(self, key: str) -> Iterator[BinaryIO]:
        with super().write_stream(key) as stream:
            yield _FillsUp(stream, self.room) if f"/{self.partition}." in key else stream


class CorruptingStorage(LocalDirectoryStorage):
    """Stores archives with one byte flipped, as a faulty disk or network share might."""

    @contextmanager
    def write_stream(self, key: str) -> Iterator[BinaryIO]:
        buffer = io.BytesIO()
        yield buffer
        data = bytearray(buffer.getvalue())
        if key.endswith(".csv.gz"):
            data[len(data) // 2] ^= 0xFF
        with super().write_stream(key) as stream:
            stream.write(bytes(data))


class ReencodingStorage(LocalDirectoryStorage):
    """Stores the same rows gzip-compressed its own way (another level, no name): other bytes, other SHA-256."""

    @contextmanager
    def write_stream(self, key: str) -> Iterator[BinaryIO]:
        buffer = io.BytesIO()
        yield buffer
        data = buffer.getvalue()
        if key.endswith(".csv.gz"):
            data = gzip.compress(gzip.decompress(data), compresslevel=1, mtime=0)
        with super().write_stream(key) as stream:
            stream.write(data)


class LateWriterStorage(LocalDirectoryStorage):
    """While the manifest is written (after verification, before the drop), a row lands in the partition."""

    def __init__(self, root: Path, table: str, offset: int) -> None:
        super().__init__(root)
        self.table, self.offset = table, offset

    @contextmanager
    def write_stream(self, key: str) -> Iterator[BinaryIO]:
        with super().write_stream(key) as stream:
            yield stream
        if key.endswith(".manifest.json"):
            fill(self.table, self.offset, 1, text="late row")


# ---------------------------------------------------------------- archiving


def test_expired_partitions_are_archived_oldest_first_and_retained_months_stay(
    storage: LocalDirectoryStorage,
) -> None:
    create_months(-15, -14, -13, -12)
    fill("job_executions", -15, 3)
    fill("job_executions", -14, 5)
    fill("job_executions", -12, 4)

    run = run_archive(storage, "job_executions")

    assert [(item.partition, item.status, item.rows) for item in run.partitions] == [
        (partition_name("job_executions", -15), "archived", 3),
        (partition_name("job_executions", -14), "archived", 5),
        (partition_name("job_executions", -13), "archived", 0),
    ]
    for offset in (-15, -14, -13):
        assert not table_exists(partition_name("job_executions", offset))
    # Twelve months' retention keeps month -12 and everything newer, the current month included.
    assert attached("job_executions")[:2] == [
        partition_name("job_executions", -12),
        partition_name("job_executions", 0),
    ]
    assert row_count(partition_name("job_executions", -12)) == 4
    assert run.ok


def test_the_archive_is_gzip_csv_with_a_header_and_every_row(storage: LocalDirectoryStorage) -> None:
    create_months(-14)
    ids = fill("step_executions", -14, 7)

    run = run_archive(storage, "step_executions")

    header, rows = read_archive(run.partitions[0].archive)
    assert header[:4] == ["id", "job_execution_id", "job_step_id", "step_order"]
    assert sorted(row[0] for row in rows) == sorted(ids)
    # Commas, quotes and line breaks inside a value survive the round trip.
    assert {row[header.index("error_message")] for row in rows} == {AWKWARD_TEXT}


def test_the_manifest_records_rows_bytes_columns_and_the_sha256_of_the_archive(
    storage: LocalDirectoryStorage,
) -> None:
    create_months(-14)
    fill("domain_events", -14, 6)

    run = run_archive(storage, "domain_events")

    item = run.partitions[0]
    manifest = json.loads(Path(item.manifest).read_text())
    archive = Path(item.archive).read_bytes()
    assert manifest["table"] == "domain_events"
    assert manifest["partition"] == partition_name("domain_events", -14)
    assert manifest["month"] == month(-14).strftime("%Y-%m")
    assert manifest["range_start"].startswith(month(-14).isoformat())
    assert manifest["range_end"].startswith(month(-13).isoformat())
    assert manifest["row_count"] == 6
    assert manifest["bytes"] == len(archive)
    assert manifest["sha256"] == hashlib.sha256(archive).hexdigest() == item.sha256
    assert manifest["file"] == Path(item.archive).name
    assert [column["name"] for column in manifest["columns"]] == read_archive(item.archive)[0]
    assert datetime.fromisoformat(manifest["exported_at"]) > datetime.now(UTC) - timedelta(minutes=5)
    assert storage.verify(f"domain_events/{manifest['file']}", manifest["sha256"])


def test_audit_partitions_leave_by_detach_and_drop_despite_the_append_only_guard(
    storage: LocalDirectoryStorage,
) -> None:
    create_months(-14, -13)
    fill("audit_log_entries", -14, 4)
    fill("audit_log_entries", -13, 2)

    run = run_archive(storage, "audit_log_entries")

    assert [item.status for item in run.partitions] == ["archived", "archived"]
    assert not table_exists(partition_name("audit_log_entries", -14))
    assert [row[0] for row in read_archive(run.partitions[0].archive)[1]] != []


def test_each_archived_partition_is_audited_with_its_archive(storage: LocalDirectoryStorage) -> None:
    create_months(-14)
    fill("monitor_file_log", -14, 2)

    run = run_archive(storage, "monitor_file_log")

    (entry,) = archive_audit("monitor_file_log", "partition_archived")
    assert entry.entity_type == "system"
    assert entry.performed_by == "test"
    assert entry.details["partition"] == partition_name("monitor_file_log", -14)
    assert entry.details["rows"] == 2
    assert entry.details["sha256"] == run.partitions[0].sha256
    assert entry.details["archive"] == run.partitions[0].archive


def test_retention_is_read_per_table_from_system_settings(storage: LocalDirectoryStorage) -> None:
    create_months(-7)
    set_setting("job.execution_partition_retention_months", "6")

    run = run_archive(storage)

    # monitor.file_log_partition_retention_months ships as 6, the others as 12.
    assert sorted(item.table for item in run.with_status("archived")) == ["job_executions", "monitor_file_log"]
    assert table_exists(partition_name("step_executions", -7))
    assert table_exists(partition_name("audit_log_entries", -7))


def test_the_current_month_is_never_expired_whatever_the_retention() -> None:
    create_months(-1)

    expired = partitions.expired_partitions("domain_events", retention=0)
    negative = partitions.expired_partitions("domain_events", retention=-3)

    assert [partition.name for partition in expired] == [partition_name("domain_events", -1)]
    assert negative == expired


def test_a_retention_below_one_month_is_refused_and_that_table_left_alone(storage: LocalDirectoryStorage) -> None:
    create_months(-14)
    set_setting("events.partition_retention_months", "0")

    run = run_archive(storage)

    assert "[E1005]" in run.table_errors["domain_events"]
    assert "events.partition_retention_months" in run.table_errors["domain_events"]
    assert table_exists(partition_name("domain_events", -14))
    assert table_exists(partition_name("domain_events", 0))
    assert not run.ok
    assert len(run.with_status("archived")) == 4


# ---------------------------------------------------------------- dry run


def test_a_dry_run_lists_expired_partitions_and_changes_nothing(storage: LocalDirectoryStorage) -> None:
    create_months(-14, -13)
    fill("job_executions", -14, 3)

    run = run_archive(storage, "job_executions", dry_run=True)

    assert [(item.partition, item.status, item.rows) for item in run.partitions] == [
        (partition_name("job_executions", -14), "would_archive", 3),
        (partition_name("job_executions", -13), "would_archive", 0),
    ]
    assert row_count(partition_name("job_executions", -14)) == 3
    assert table_exists(partition_name("job_executions", -13))
    assert not storage.root.exists()
    assert archive_audit("job_executions", "partition_archived") == []
    assert run.summary().startswith("Dry run: 2 expired partitions (3 rows")


def test_the_archive_command_is_a_dry_run_by_default(archive_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create_months(-14)
    fill("job_executions", -14, 2)

    call_command("partitions", "archive", "--table", "job_executions")

    output = capsys.readouterr().out
    assert f"{partition_name('job_executions', -14)}" in output and "would archive 2 rows" in output
    assert "run with --execute" in output
    assert row_count(partition_name("job_executions", -14)) == 2
    assert not archive_dir.exists()


def test_the_archive_command_executes_with_a_progress_bar_and_a_summary(
    archive_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    create_months(-14)
    fill("audit_log_entries", -14, 3)

    call_command("partitions", "archive", "--execute", "--table", "audit_log_entries")

    captured = capsys.readouterr()
    name = partition_name("audit_log_entries", -14)
    assert f"[{'#' * 30}] 1/1 {name} done" in captured.err
    assert captured.out.strip().splitlines()[-1].startswith("Archived 1 partition (3 rows, ")
    assert not table_exists(name)
    assert len(list((archive_dir / "audit_log_entries").glob(f"{name}.*.csv.gz"))) == 1
    assert archive_audit("audit_log_entries", "partition_archived")[0].performed_by == "cli"


# ---------------------------------------------------------------- failures


def test_a_failing_export_keeps_the_partition_and_stops_that_tables_catch_up(tmp_path: Path) -> None:
    create_months(-16, -15, -14)
    fill("job_executions", -16, 2)
    fill_bulk("job_executions", -15, 3000)
    fill("job_executions", -14, 2)
    fill("domain_events", -15, 2)
    failing = partition_name("job_executions", -15)
    storage = FullDiskStorage(tmp_path / "archive", failing, room=64 * 1024)

    run = run_archive(storage, "job_executions", "domain_events")

    statuses = {item.partition: item.status for item in run.partitions}
    assert statuses[partition_name("job_executions", -16)] == "archived"
    assert statuses[failing] == "failed"
    # Oldest first: the newer expired month waits until the failed one is archived.
    assert statuses[partition_name("job_executions", -14)] == "kept"
    assert row_count(partition_name("job_executions", -14)) == 2
    # Other tables carry on.
    assert statuses[partition_name("domain_events", -15)] == "archived"
    assert row_count(failing) == 3000
    assert not run.ok
    (failed,) = run.with_status("failed")
    assert failed.error.startswith("[E1020] export of ") and "No space left on device" in failed.error
    assert list((tmp_path / "archive" / "job_executions").glob(f"{failing}.*")) == []


def test_a_failed_export_is_audited_with_its_error(tmp_path: Path) -> None:
    create_months(-14)
    fill_bulk("job_executions", -14, 2000)
    storage = FullDiskStorage(tmp_path / "archive", partition_name("job_executions", -14), room=32 * 1024)

    run_archive(storage, "job_executions")

    (entry,) = archive_audit("job_executions", "partition_archive_failed")
    assert entry.details["partition"] == partition_name("job_executions", -14)
    assert entry.details["phase"] == "export"
    assert "[E1020]" in entry.details["error"]
    assert domain_event_count("PartitionArchiveFailed") == 1


def test_an_unusable_archive_directory_drops_nothing_and_the_command_fails(
    tmp_path: Path, settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # A file where the directory should be: refused even for root, unlike a chmod.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings.COURIER_ARCHIVE_DIR = blocker
    create_months(-14)
    fill("step_executions", -14, 2)

    with pytest.raises(SystemExit) as exit_info:
        call_command("partitions", "archive", "--execute")

    assert exit_info.value.code == 1
    output = capsys.readouterr().out
    assert "FAILED, partition kept: [E1020]" in output
    assert "5 failed and kept" in output.splitlines()[-1]
    assert row_count(partition_name("step_executions", -14)) == 2
    for table in partitions.PARTITIONED_TABLES:
        assert table_exists(partition_name(table, -14))


def test_an_archive_that_does_not_read_back_intact_keeps_the_partition(tmp_path: Path) -> None:
    create_months(-14)
    fill("monitor_file_log", -14, 50)
    storage = CorruptingStorage(tmp_path / "archive")

    run = run_archive(storage, "monitor_file_log")

    (item,) = run.partitions
    assert item.status == "failed"
    assert item.error.startswith("[E1021]")
    assert row_count(partition_name("monitor_file_log", -14)) == 50
    assert list((tmp_path / "archive").rglob("*.csv.gz")) == []


def test_an_archive_whose_checksum_differs_from_what_was_written_keeps_the_partition(tmp_path: Path) -> None:
    create_months(-14)
    fill("domain_events", -14, 5)

    run = run_archive(ReencodingStorage(tmp_path / "archive"), "domain_events")

    (item,) = run.partitions
    assert item.status == "failed"
    assert "[E1021]" in item.error and "SHA-256" in item.error
    assert row_count(partition_name("domain_events", -14)) == 5


def test_verify_archive_checks_the_row_count_against_the_manifest(storage: LocalDirectoryStorage) -> None:
    create_months(-14)
    fill("step_executions", -14, 3)
    manifest = json.loads(Path(run_archive(storage, "step_executions").partitions[0].manifest).read_text())
    key = f"step_executions/{manifest['file']}"
    columns = [column["name"] for column in manifest["columns"]]

    archival.verify_archive(storage, key, sha256=manifest["sha256"], rows=3, columns=columns)
    with pytest.raises(archival.ArchiveVerificationFailed, match=r"\[E1021\].* holds 3 rows, the partition 4"):
        archival.verify_archive(storage, key, sha256=manifest["sha256"], rows=4, columns=columns)
    with pytest.raises(archival.ArchiveVerificationFailed, match="header"):
        archival.verify_archive(storage, key, sha256=manifest["sha256"], rows=3, columns=columns[:-1])


def test_rows_written_after_the_export_stop_the_drop(tmp_path: Path) -> None:
    create_months(-14)
    fill("job_executions", -14, 3)
    storage = LateWriterStorage(tmp_path / "archive", "job_executions", -14)

    run = run_archive(storage, "job_executions")

    (item,) = run.partitions
    assert item.status == "failed"
    assert "[E1021]" in item.error and "changed after the export" in item.error
    # The detach was rolled back: the partition is attached again with every row.
    assert partition_name("job_executions", -14) in attached("job_executions")
    assert row_count(partition_name("job_executions", -14)) == 4
    assert list((tmp_path / "archive").rglob("*")) == [tmp_path / "archive" / "job_executions"]


def test_an_archive_is_kept_when_the_drop_may_have_committed(
    storage: LocalDirectoryStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_months(-14)
    fill("job_executions", -14, 2)
    drop = archival.PartitionArchiver._detach_and_drop

    def drop_then_lose_the_connection(self: archival.PartitionArchiver, table: str, item: object) -> None:
        # As when the connection breaks after COMMIT was sent: the drop happened, the error arrives anyway.
        drop(self, table, item)
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(archival.PartitionArchiver, "_detach_and_drop", drop_then_lose_the_connection)

    (item,) = run_archive(storage, "job_executions").partitions

    assert item.status == "failed" and item.error.startswith("[E1024] drop of ")
    assert not table_exists(partition_name("job_executions", -14))
    assert len(read_archive(item.archive)[1]) == 2
    assert Path(item.manifest).exists()


def test_a_second_archiver_is_turned_away_while_one_runs(storage: LocalDirectoryStorage, archive_dir: Path) -> None:
    create_months(-14)
    with psycopg.connect(conninfo_for(), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [ARCHIVE_LOCK_KEY])
        try:
            run = run_archive(storage)
            with pytest.raises(CommandError, match=r"\[E1022\]"):
                call_command("partitions", "archive", "--execute")
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", [ARCHIVE_LOCK_KEY])

    assert run.busy and run.partitions == []
    assert table_exists(partition_name("job_executions", -14))


def test_the_archiver_releases_its_lock_after_a_run(storage: LocalDirectoryStorage) -> None:
    run_archive(storage)

    with psycopg.connect(conninfo_for(), autocommit=True) as other:
        got = other.execute("SELECT pg_try_advisory_lock(%s)", [ARCHIVE_LOCK_KEY]).fetchone()[0]
        other.execute("SELECT pg_advisory_unlock(%s)", [ARCHIVE_LOCK_KEY])
    assert got is True


# ---------------------------------------------------------------- weekly task, status


def test_the_weekly_task_archives_with_the_same_service(archive_dir: Path) -> None:
    create_months(-14)
    fill("domain_events", -14, 3)

    result = tasks.archive_expired_partitions.apply().get()

    assert result == {"archived": 5, "failed": 0, "kept": 0, "busy": 0}
    assert not table_exists(partition_name("domain_events", -14))
    (entry,) = archive_audit("domain_events", "partition_archived")
    assert entry.performed_by == "beat" and entry.details["rows"] == 3
    assert len(list((archive_dir / "domain_events").glob("*.manifest.json"))) == 1


def test_the_weekly_task_is_scheduled_on_the_default_queue() -> None:
    entry = app.conf.beat_schedule["weekly-archive-expired-partitions"]

    assert entry["task"] == "courier_site.tasks.archive_expired_partitions"
    assert entry["task"] in app.tasks
    assert route_task(entry["task"], (), {}, {}) == {"queue": django_settings.COURIER_QUEUE}


def test_export_status_names_the_last_archived_month_and_a_newer_failure(tmp_path: Path) -> None:
    create_months(-15, -14)
    fill_bulk("job_executions", -14, 2000)
    storage = FullDiskStorage(tmp_path / "archive", partition_name("job_executions", -14), room=32 * 1024)

    run_archive(storage, "job_executions")

    status = archival.export_status()["job_executions"]
    assert status.last_archived_month == month(-15).strftime("%Y-%m")
    assert status.last_failed_month == month(-14).strftime("%Y-%m")
    assert status.state == "failed"
    assert "[E1020]" in status.last_error
    assert archival.export_status()["step_executions"].state == "never"


def test_partitions_status_shows_the_export_status(
    storage: LocalDirectoryStorage, capsys: pytest.CaptureFixture[str]
) -> None:
    create_months(-14)
    run_archive(storage, "audit_log_entries")

    call_command("partitions", "status")

    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert f"last archived {month(-14):%Y-%m} on " in lines["audit_log_entries"]
    assert "never archived" in lines["job_executions"]


# ---------------------------------------------------------------- storage and the CSV counter


def test_an_interrupted_write_leaves_nothing_under_the_key(storage: LocalDirectoryStorage) -> None:
    with pytest.raises(FullDisk), storage.write_stream("t/part.csv.gz") as stream:
        stream.write(b"half an archive")
        raise FullDisk()

    assert not storage.exists("t/part.csv.gz")
    assert list(storage.root.rglob("*.partial")) == []


@pytest.mark.parametrize("key", ["../escape.csv.gz", "/etc/passwd", "t//x", "t/./x", ""])
def test_archive_keys_cannot_leave_the_archive_directory(storage: LocalDirectoryStorage, key: str) -> None:
    with pytest.raises(ArchiveStorageError, match=r"\[E1023\]"):
        storage.path(key)


def test_the_record_counter_sees_quoted_line_breaks_at_every_chunk_boundary() -> None:
    data = b'id,note\n1,"a\nb"\n2,"say ""hi""\n"\n3,\n'
    for split in range(len(data) + 1):
        counter = gzip_csv.CsvRecordCounter()
        counter.feed(data[:split])
        counter.feed(data[split:])
        assert (counter.records, counter.complete, counter.header()) == (4, True, ["id", "note"]), split


@pytest.mark.parametrize("data", [b'id,note\n1,"open quote\n', b"id,note\n1,no newline at the end"])
def test_the_record_counter_notices_data_that_stops_inside_a_record(data: bytes) -> None:
    counter = gzip_csv.CsvRecordCounter()
    counter.feed(data)

    assert not counter.complete


def test_a_truncated_archive_is_reported_by_read_back() -> None:
    whole = gzip.compress(b"id\n1\n2\n")

    assert gzip_csv.read_back(io.BytesIO(whole)).rows == 2
    with pytest.raises(EOFError):
        gzip_csv.read_back(io.BytesIO(whole[:-6]))
