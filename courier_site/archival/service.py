"""The partition archiver: export expired months to storage, verify the export, then detach and drop them."""

from __future__ import annotations

import gzip
import json
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import connections, transaction
from psycopg import sql

from audit.models import AuditLogEntry
from courier_site import partitions
from courier_site.archival import gzip_csv
from courier_site.archive_storage import ArchiveStorage, default_storage
from courier_site.errors import ConfigurationError, CourierError

logger = logging.getLogger(__name__)

# One archiver at a time across every host (beat task, command line); a one-key
# advisory lock beside the migration runner's 12345 and the console bootstrap's 12346.
ARCHIVE_LOCK_KEY = 12347
# DETACH needs an ACCESS EXCLUSIVE lock on the parent table; while it waits, every
# query on that table queues behind it. Give up quickly instead: the partition stays
# and the next run tries again.
DETACH_LOCK_TIMEOUT = "10s"
# COPY hands over one row per read; rows are gathered into blocks this size before
# they reach gzip, which keeps the per-row Python work small and memory bounded.
COPY_BLOCK_BYTES = 256 * 1024
GZIP_LEVEL = 6
PROGRESS_INTERVAL_SECONDS = 0.25
MANIFEST_FORMAT = "courier-partition-archive/1"


class ArchiveExportFailed(CourierError):
    """Writing a partition's export to the archive storage failed; the partition is kept."""

    code = "E1020"


class ArchiveVerificationFailed(CourierError):
    """The written export does not match the partition (rows, checksum, columns); the partition is kept."""

    code = "E1021"


class ArchiverBusy(CourierError):
    """Another archiver holds the advisory lock."""

    code = "E1022"


class PartitionDropFailed(CourierError):
    """The verified partition could not be detached and dropped (lock timeout, concurrent change)."""

    code = "E1024"


# Audit operations of the archiver; the export status is read back from them.
ARCHIVED = "partition_archived"
ARCHIVE_FAILED = "partition_archive_failed"


def audit_entity(table: str) -> str:
    # Audit rows need an entity id: one stable name per table, so its archive history
    # is one entity's history in the audit console.
    return f"partition-archive:{table}"


# ---------------------------------------------------------------- results


@dataclass
class PartitionArchive:
    """What happened (or would happen) to one expired partition."""

    table: str
    partition: str
    start: datetime
    end: datetime
    # would_archive (dry run) | archived | failed | kept (an older month of the table failed)
    status: str
    size_bytes: int = 0
    rows: int | None = None
    archive_bytes: int = 0
    sha256: str | None = None
    archive: str | None = None
    manifest: str | None = None
    error: str | None = None

    @property
    def month(self) -> str:
        return self.start.strftime("%Y-%m")

    @classmethod
    def planned(cls, table: str, partition: partitions.Partition, status: str) -> PartitionArchive:
        return cls(table, partition.name, partition.start, partition.end, status, size_bytes=partition.size_bytes)


@dataclass
class ArchiveRun:
    """The outcome of one archiver run over some tables."""

    dry_run: bool
    partitions: list[PartitionArchive] = field(default_factory=list)
    # Tables skipped as a whole, with the reason (a retention setting that makes no sense).
    table_errors: dict[str, str] = field(default_factory=dict)
    busy: bool = False

    def with_status(self, status: str) -> list[PartitionArchive]:
        return [item for item in self.partitions if item.status == status]

    @property
    def ok(self) -> bool:
        return not self.busy and not self.table_errors and not self.with_status("failed")

    def summary(self) -> str:
        """One line for the command line and the task log."""
        if self.busy:
            return f"[{ArchiverBusy.code}] another partition archiver is running; nothing was done."
        problems = "".join(f"; {table} skipped: {error}" for table, error in self.table_errors.items())
        if self.dry_run:
            planned = self.with_status("would_archive")
            if not planned:
                return f"Dry run: no partition is past retention{problems}."
            rows = sum(item.rows or 0 for item in planned)
            return (
                f"Dry run: {plural(len(planned), 'expired partition')} ({rows:,} rows, "
                f"{format_bytes(_sum_size(planned))}) would be exported and dropped; "
                f"run with --execute to archive them{problems}."
            )
        archived, failed, kept = self.with_status("archived"), self.with_status("failed"), self.with_status("kept")
        line = (
            f"Archived {plural(len(archived), 'partition')} ({sum(item.rows or 0 for item in archived):,} rows, "
            f"{format_bytes(sum(item.archive_bytes for item in archived))} written)"
        )
        if failed:
            names = ", ".join(f"{item.partition} {_code(item.error)}" for item in failed)
            line += f"; {len(failed)} failed and kept ({names})"
        if kept:
            line += f"; {plural(len(kept), 'newer expired partition')} kept until the failed month is archived"
        return line + problems + "."


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _sum_size(items: Iterable[PartitionArchive]) -> int:
    return sum(item.size_bytes for item in items)


def _code(message: str | None) -> str:
    return message.split("]", 1)[0] + "]" if message and message.startswith("[E") else ""


def format_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@dataclass
class ArchiveProgress:
    """Reported to the progress callback while a run works through its partitions."""

    position: int  # 1-based, over every partition the run will try
    total: int
    partition: str
    phase: str  # export | verify | drop | done | failed
    bytes_written: int = 0


ProgressCallback = Callable[[ArchiveProgress], None]


# ---------------------------------------------------------------- the archiver


class PartitionArchiver:
    """Exports expired partitions of the history tables to archive storage and drops them.

    Per table, months are taken oldest first. A month whose export, verification or
    drop fails is kept, reported and audited, and the newer expired months of that
    table wait for the next run: the table never gets a hole in its retained history,
    and a failure (full disk, unreachable storage) usually repeats anyway. The other
    tables carry on.
    """

    def __init__(
        self,
        *,
        storage: ArchiveStorage | None = None,
        performed_by: str = "system",
        today: date | None = None,
        using: str = "default",
        progress: ProgressCallback | None = None,
    ) -> None:
        self.storage = storage or default_storage()
        self.performed_by = performed_by
        self.today = today or datetime.now(UTC).date()
        self.using = using
        self.progress = progress or (lambda update: None)

    # ---- planning

    def plan(self, tables: Iterable[str]) -> tuple[list[tuple[str, partitions.Partition]], dict[str, str]]:
        """Expired partitions of tables, oldest first within each table, and tables refused with the reason."""
        planned: list[tuple[str, partitions.Partition]] = []
        refused: dict[str, str] = {}
        for table in tables:
            try:
                retention = partitions.retention_months(table, using=self.using)
            except ConfigurationError as error:
                refused[table] = str(error)
                continue
            for partition in partitions.expired_partitions(
                table, retention=retention, today=self.today, using=self.using
            ):
                planned.append((table, partition))
        return planned, refused

    # ---- running

    def run(self, tables: Iterable[str] = partitions.PARTITIONED_TABLES, *, dry_run: bool = True) -> ArchiveRun:
        """Archive (or with dry_run only list) every expired partition of tables."""
        tables = tuple(tables)
        unknown = [table for table in tables if table not in partitions.PARTITIONED_TABLES]
        if unknown:
            raise ConfigurationError(f"not a partitioned history table: {', '.join(unknown)}")
        if dry_run:
            return self._dry_run(tables)
        with archive_lock(self.using) as acquired:
            if not acquired:
                logger.warning("partition archiver already running elsewhere; skipped")
                return ArchiveRun(dry_run=False, busy=True)
            return self._execute(tables)

    def _dry_run(self, tables: tuple[str, ...]) -> ArchiveRun:
        planned, refused = self.plan(tables)
        run = ArchiveRun(dry_run=True, table_errors=refused)
        for table, partition in planned:
            item = PartitionArchive.planned(table, partition, "would_archive")
            item.rows = self._count_rows(partition.name)
            run.partitions.append(item)
        return run

    def _execute(self, tables: tuple[str, ...]) -> ArchiveRun:
        planned, refused = self.plan(tables)
        run = ArchiveRun(dry_run=False, table_errors=refused)
        for table, error in refused.items():
            logger.error("partition archival of %s skipped: %s", table, error)
        failed_tables: set[str] = set()
        for position, (table, partition) in enumerate(planned, start=1):
            if table in failed_tables:
                run.partitions.append(PartitionArchive.planned(table, partition, "kept"))
                continue
            item = self._archive(table, partition, position, len(planned))
            run.partitions.append(item)
            if item.status == "failed":
                failed_tables.add(table)
        logger.info("partition archival: %s", run.summary())
        return run

    def _archive(self, table: str, partition: partitions.Partition, position: int, total: int) -> PartitionArchive:
        item = PartitionArchive.planned(table, partition, "failed")
        exported_at = datetime.now(UTC)
        written: list[str] = []
        phase = "export"

        def report(step: str, bytes_written: int = 0) -> None:
            self.progress(ArchiveProgress(position, total, partition.name, step, bytes_written))

        try:
            report(phase)
            data_key, manifest_key = self._keys(table, partition, exported_at)
            columns = self._columns(partition.name)
            rows, sha256, archive_bytes, plain_bytes = self._export(partition, data_key, exported_at, report)
            written.append(data_key)
            phase = "verify"
            report(phase, archive_bytes)
            verify_archive(self.storage, data_key, sha256=sha256, rows=rows, columns=[name for name, _ in columns])
            item.rows, item.sha256, item.archive_bytes = rows, sha256, archive_bytes
            manifest = self._manifest(item, data_key, exported_at, plain_bytes, columns)
            with self.storage.write_stream(manifest_key) as stream:
                stream.write(json.dumps(manifest, indent=2).encode() + b"\n")
            written.append(manifest_key)
            item.archive, item.manifest = self.storage.location(data_key), self.storage.location(manifest_key)
            phase = "drop"
            report(phase, archive_bytes)
            self._detach_and_drop(table, item)
        except Exception as error:
            item.error = self._describe(error, phase, partition.name)
            # A failed COMMIT leaves the drop's outcome unknown: the archive may be the
            # only copy left, so it goes only while the partition is seen to still exist.
            if phase != "drop" or self._still_exists(partition.name):
                self._discard(written)
            logger.error("partition archival of %s failed: %s", partition.name, item.error)
            self._audit_failure(item, phase)
            report("failed")
            if isinstance(error, SoftTimeLimitExceeded):
                raise
            return item
        except BaseException:
            # Interrupted (Ctrl-C, worker shutdown) before the drop: the partition is still
            # there, so its unused archive objects go. During the drop, keep them.
            if phase != "drop":
                self._discard(written)
            raise
        item.status = "archived"
        report("done", item.archive_bytes)
        return item

    # ---- steps

    def _keys(self, table: str, partition: partitions.Partition, exported_at: datetime) -> tuple[str, str]:
        # The export time in the name means an archive is never overwritten, even if a
        # month's partition is recreated (a restore) and archived again later.
        stem = f"{table}/{partition.name}.{exported_at:%Y%m%dT%H%M%SZ}"
        for attempt in range(1, 100):
            candidate = stem if attempt == 1 else f"{stem}-{attempt}"
            data_key, manifest_key = f"{candidate}.csv.gz", f"{candidate}.manifest.json"
            if not self.storage.exists(data_key) and not self.storage.exists(manifest_key):
                return data_key, manifest_key
        raise ArchiveExportFailed(f"no free archive name for {partition.name} under {stem}")

    def _manifest(
        self,
        item: PartitionArchive,
        data_key: str,
        exported_at: datetime,
        plain_bytes: int,
        columns: list[tuple[str, str]],
    ) -> dict[str, Any]:
        """The JSON stored beside an archive: enough to check it and to load it back without Courier."""
        return {
            "format": MANIFEST_FORMAT,
            "table": item.table,
            "partition": item.partition,
            "month": item.month,
            "range_start": item.start.isoformat(),
            "range_end": item.end.isoformat(),
            "row_count": item.rows,
            "file": data_key.rsplit("/", 1)[-1],
            "bytes": item.archive_bytes,
            "uncompressed_bytes": plain_bytes,
            "sha256": item.sha256,
            "compression": "gzip",
            "content": "PostgreSQL COPY CSV with a header row",
            "columns": [{"name": name, "type": type_name} for name, type_name in columns],
            "exported_at": exported_at.isoformat(),
            "exported_by": self.performed_by,
        }

    def _columns(self, partition_name: str) -> list[tuple[str, str]]:
        """Column names and types of the partition, in the order SELECT * returns them."""
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                """
                SELECT attname, format_type(atttypid, atttypmod)
                FROM pg_attribute
                WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped
                ORDER BY attnum
                """,
                [partition_name],
            )
            return [(name, type_name) for name, type_name in cursor.fetchall()]

    def _count_rows(self, partition_name: str) -> int:
        with connections[self.using].cursor() as cursor:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(partition_name))
            cursor.execute(query.as_string(cursor.connection))
            return cursor.fetchone()[0]

    def _export(
        self,
        partition: partitions.Partition,
        key: str,
        exported_at: datetime,
        report: Callable[[str, int], None],
    ) -> tuple[int, str, int, int]:
        """Stream the partition through gzip into storage; return rows, SHA-256, archive and plain bytes."""
        # Storage outermost: any failure below (database, gzip, disk) leaves no object behind.
        with self.storage.write_stream(key) as raw:
            sink = gzip_csv.HashingWriter(raw)
            compressed = gzip.GzipFile(
                filename=f"{partition.name}.csv",
                mode="wb",
                compresslevel=GZIP_LEVEL,
                fileobj=sink,
                mtime=int(exported_at.timestamp()),
            )
            with compressed:
                rows, plain_bytes = self._copy_out(partition.name, compressed, lambda: report("export", sink.size))
        return rows, sink.digest.hexdigest(), sink.size, plain_bytes

    def _copy_out(self, partition_name: str, target: gzip.GzipFile, tick: Callable[[], None]) -> tuple[int, int]:
        """Client-side COPY of the partition as CSV into target, in blocks; return rows and bytes copied."""
        wrapper = connections[self.using]
        query = sql.SQL("COPY (SELECT * FROM {}) TO STDOUT WITH (FORMAT csv, HEADER)").format(
            sql.Identifier(partition_name)
        )
        copied = 0
        last_tick = time.monotonic()
        block = bytearray()
        # A single read-only statement; the atomic block only matters when the caller
        # already holds a transaction, where a COPY cancelled mid-way must roll back to a
        # savepoint instead of poisoning it.
        with transaction.atomic(using=self.using):
            wrapper.ensure_connection()
            with wrapper.wrap_database_errors, wrapper.connection.cursor() as cursor:
                with cursor.copy(query) as copy:
                    for chunk in copy:
                        block += chunk
                        if len(block) < COPY_BLOCK_BYTES:
                            continue
                        target.write(block)
                        copied += len(block)
                        block.clear()
                        if time.monotonic() - last_tick >= PROGRESS_INTERVAL_SECONDS:
                            tick()
                            last_tick = time.monotonic()
                    target.write(block)
                    copied += len(block)
                return cursor.rowcount, copied

    def _detach_and_drop(self, table: str, item: PartitionArchive) -> None:
        """Detach and drop the partition in one transaction, if it still holds exactly the archived rows."""
        try:
            with transaction.atomic(using=self.using), connections[self.using].cursor() as cursor:
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [DETACH_LOCK_TIMEOUT])
                detach = sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                    sql.Identifier(table), sql.Identifier(item.partition)
                )
                cursor.execute(detach.as_string(cursor.connection))
                # Detached, the table is ours alone until commit: count it now, so rows written
                # or deleted after the export (a late insert, the monitor log prune) cannot be
                # dropped unarchived. A mismatch rolls the detach back.
                count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(item.partition))
                cursor.execute(count.as_string(cursor.connection))
                current_rows = cursor.fetchone()[0]
                if current_rows != item.rows:
                    raise ArchiveVerificationFailed(
                        f"{item.partition} holds {current_rows} rows, the archive {item.rows}: "
                        "it changed after the export"
                    )
                cursor.execute(
                    sql.SQL("DROP TABLE {}").format(sql.Identifier(item.partition)).as_string(cursor.connection)
                )
                AuditLogEntry.objects.using(self.using).record(
                    entity_type=AuditLogEntry.EntityType.SYSTEM,
                    entity_id=audit_entity(table),
                    operation=ARCHIVED,
                    performed_by=self.performed_by,
                    details=self._audit_details(item),
                    event_type="PartitionArchived",
                )
        except CourierError:
            raise
        except Exception as error:
            raise PartitionDropFailed(
                f"{item.partition} was exported but could not be detached and dropped: {type(error).__name__}: {error}"
            ) from error

    # ---- failure handling

    def _describe(self, error: Exception, phase: str, partition_name: str) -> str:
        if isinstance(error, CourierError):
            return str(error)
        if isinstance(error, SoftTimeLimitExceeded):
            detail = "interrupted by the task time limit"
        else:
            detail = f"{type(error).__name__}: {error}"
        codes = {"verify": ArchiveVerificationFailed.code, "drop": PartitionDropFailed.code}
        code = codes.get(phase, ArchiveExportFailed.code)
        return f"[{code}] {phase} of {partition_name} failed: {detail}"

    def _still_exists(self, partition_name: str) -> bool:
        """Whether the partition is certainly still in the database (False when that cannot be checked)."""
        try:
            with connections[self.using].cursor() as cursor:
                cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [partition_name])
                return bool(cursor.fetchone()[0])
        except Exception:
            logger.exception("could not check whether %s still exists; keeping its archive", partition_name)
            return False

    def _discard(self, keys: list[str]) -> None:
        """Remove archive objects of a partition that stays in the database."""
        for key in reversed(keys):
            try:
                self.storage.delete(key)
            except Exception:
                logger.exception("could not remove unused archive object %s", key)

    def _audit_failure(self, item: PartitionArchive, phase: str) -> None:
        AuditLogEntry.objects.using(self.using).record(
            entity_type=AuditLogEntry.EntityType.SYSTEM,
            entity_id=audit_entity(item.table),
            operation=ARCHIVE_FAILED,
            performed_by=self.performed_by,
            details={**self._audit_details(item), "phase": phase, "error": item.error},
            event_type="PartitionArchiveFailed",
        )

    @staticmethod
    def _audit_details(item: PartitionArchive) -> dict[str, Any]:
        return {
            "table": item.table,
            "partition": item.partition,
            "month": item.month,
            "range_start": item.start.isoformat(),
            "range_end": item.end.isoformat(),
            "rows": item.rows,
            "bytes": item.archive_bytes,
            "sha256": item.sha256,
            "archive": item.archive,
            "manifest": item.manifest,
        }


def verify_archive(storage: ArchiveStorage, key: str, *, sha256: str, rows: int, columns: list[str]) -> None:
    """Read a stored archive back: checksum, gzip integrity, header and row count must all match, else [E1021].

    The archiver calls it before dropping a partition; with a manifest's values it
    checks an archive later, e.g. before a restore.
    """
    where = storage.location(key)
    try:
        with storage.read_stream(key) as stream:
            found = gzip_csv.read_back(stream)
    except (OSError, EOFError, zlib.error) as error:
        raise ArchiveVerificationFailed(
            f"archive {where} cannot be read back: {type(error).__name__}: {error}"
        ) from error
    if found.sha256 != sha256:
        raise ArchiveVerificationFailed(f"archive {where} does not match the SHA-256 computed while writing it")
    if not found.complete:
        raise ArchiveVerificationFailed(f"archive {where} is empty or ends inside a CSV record")
    if found.header != columns:
        raise ArchiveVerificationFailed(f"archive {where} header does not list the partition's columns")
    if found.rows != rows:
        raise ArchiveVerificationFailed(f"archive {where} holds {found.rows} rows, the partition {rows}")


@contextmanager
def archive_lock(using: str = "default") -> Iterator[bool]:
    """A session advisory lock held for the whole run, exports included (not just one transaction)."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [ARCHIVE_LOCK_KEY])
        acquired = cursor.fetchone()[0]
    try:
        yield acquired
    finally:
        if acquired:
            with connections[using].cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [ARCHIVE_LOCK_KEY])


def archive_expired_partitions(
    tables: Iterable[str] = partitions.PARTITIONED_TABLES,
    *,
    dry_run: bool = True,
    performed_by: str = "system",
    storage: ArchiveStorage | None = None,
    today: date | None = None,
    progress: ProgressCallback | None = None,
) -> ArchiveRun:
    """Export, verify and drop the partitions past retention (SPEC 3); the command and the weekly task call this."""
    archiver = PartitionArchiver(storage=storage, performed_by=performed_by, today=today, progress=progress)
    return archiver.run(tables, dry_run=dry_run)
