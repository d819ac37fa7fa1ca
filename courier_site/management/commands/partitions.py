"""`manage.py partitions create|status|archive`: monthly partition maintenance on demand."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper

from courier_site import archival, partitions
from courier_site.archival.service import format_bytes
from courier_site.health import TablePartitionHealth, overall_status, partition_health
from system.values import setting_int


class ProgressBar:
    """A one-line text progress bar over the partitions of an archive run, drawn on stderr.

    On a terminal the line is redrawn in place; in a log (cron, CI) one line per finished
    partition is written instead of a stream of carriage returns.
    """

    WIDTH = 30
    REDRAW_SECONDS = 0.2

    def __init__(self, stream: OutputWrapper) -> None:
        self.stream = stream
        self.interactive = stream.isatty()
        self.drawn = False
        self.last_draw = 0.0

    def __call__(self, update: archival.ArchiveProgress) -> None:
        finished = update.phase in {"done", "failed"}
        done = update.position if finished else update.position - 1
        filled = self.WIDTH * done // max(update.total, 1)
        line = (
            f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{update.total} "
            f"{update.partition} {update.phase} {format_bytes(update.bytes_written)}"
        )
        if not self.interactive:
            if finished:
                self.stream.write(line)
            return
        now = time.monotonic()
        if not finished and update.phase == "export" and now - self.last_draw < self.REDRAW_SECONDS:
            return
        self.last_draw = now
        self.stream.write(f"\r{line:<100}", ending="")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("")


class Command(BaseCommand):
    help = (
        "Monthly partitions of the history tables: create them ahead of time (create), show their health and "
        "archive status (status), or export, verify and drop the ones past retention (archive; a dry run unless "
        "--execute is given)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{create,status,archive}")
        create = actions.add_parser("create", help="create this month's partitions and the coming months'")
        create.add_argument(
            "--months-ahead",
            type=int,
            default=None,
            help="months beyond the current one (default: system setting partition.months_ahead, at least 2)",
        )
        status = actions.add_parser("status", help="partitions per table, missing and overdue months, archive status")
        status.add_argument("--json", action="store_true", help="print the report as JSON")
        archive = actions.add_parser(
            "archive",
            help="export partitions past retention to COURIER_ARCHIVE_DIR, verify, then detach and drop them",
            description=(
                "Export every partition older than its table's retention (system settings "
                "*_partition_retention_months) as gzip CSV with a SHA-256 manifest, verify the export, then detach "
                "and drop the partition. Oldest month first; a month that fails is kept, and the newer months of "
                "that table wait for the next run. Without --execute nothing is changed."
            ),
        )
        mode = archive.add_mutually_exclusive_group()
        mode.add_argument(
            "--dry-run",
            dest="execute",
            action="store_false",
            help="list what would be archived, change nothing (the default)",
        )
        mode.add_argument("--execute", dest="execute", action="store_true", help="archive and drop for real")
        # Both flags share one destination; without this argparse would take --dry-run's
        # store_false default (True) and a bare `archive` would drop partitions.
        archive.set_defaults(execute=False)
        archive.add_argument(
            "--table",
            action="append",
            choices=partitions.PARTITIONED_TABLES,
            help="only this table (repeatable; default: all five)",
        )

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "create":
            self._create(options["months_ahead"])
        elif action == "status":
            self._status(as_json=options["json"])
        else:
            self._archive(tables=options["table"] or partitions.PARTITIONED_TABLES, execute=options["execute"])

    def _create(self, months_ahead: int | None) -> None:
        if months_ahead is None:
            months_ahead = setting_int("partition.months_ahead", partitions.MINIMUM_MONTHS_AHEAD)
        months = partitions.ensure_partitions(months_ahead)
        self.stdout.write(f"Partitions ready for {len(partitions.PARTITIONED_TABLES)} tables: {', '.join(months)}.")

    def _status(self, *, as_json: bool) -> None:
        tables = partition_health()
        status = overall_status(tables)
        if as_json:
            report = {"status": status, "tables": {table.table: asdict(table) for table in tables}}
            self.stdout.write(json.dumps(report, indent=2, default=str))
        else:
            for table in tables:
                self._status_line(self.stdout, table)
            self.stdout.write(f"Partition health: {status}.")
        if status == "unhealthy":
            raise SystemExit(1)

    @staticmethod
    def _status_line(out: OutputWrapper, table: TablePartitionHealth) -> None:
        line = (
            f"{table.table:20} {table.status:9} {table.partition_count:3} partitions, "
            f"{format_bytes(table.size_bytes)}, oldest {table.oldest_partition or '-'}, "
            f"newest {table.newest_partition or '-'}"
        )
        if table.missing_months:
            line += f"; MISSING {', '.join(table.missing_months)} [E1004]"
        if table.archive_overdue_months:
            line += f"; archive overdue: {', '.join(table.archive_overdue_months)}"
        if table.problem:
            line += f"; {table.problem}"
        export = table.export
        if export.last_archived_month:
            line += f"; last archived {export.last_archived_month} on {export.last_archived_at:%Y-%m-%d}"
        else:
            line += "; never archived"
        if export.state == "failed":
            line += (
                f"; ARCHIVE FAILED {export.last_failed_month} on {export.last_failed_at:%Y-%m-%d}: {export.last_error}"
            )
        out.write(line)

    def _archive(self, *, tables: list[str] | tuple[str, ...], execute: bool) -> None:
        progress = ProgressBar(self.stderr) if execute else None
        try:
            run = archival.archive_expired_partitions(
                tables, dry_run=not execute, performed_by="cli", progress=progress
            )
        finally:
            if progress:
                progress.close()
        if run.busy:
            raise CommandError(run.summary())
        for item in run.partitions:
            self.stdout.write(self._archive_line(item))
        for table, error in run.table_errors.items():
            self.stdout.write(f"  {table}: skipped, {error}")
        self.stdout.write(run.summary())
        if not run.ok:
            raise SystemExit(1)

    @staticmethod
    def _archive_line(item: archival.PartitionArchive) -> str:
        head = f"  {item.partition:28} {item.month}"
        if item.status == "would_archive":
            return f"{head}  would archive {item.rows:,} rows ({format_bytes(item.size_bytes)} in the database)"
        if item.status == "archived":
            return f"{head}  archived {item.rows:,} rows to {item.archive} (sha256 {item.sha256})"
        if item.status == "kept":
            return f"{head}  kept: an older month of {item.table} failed"
        return f"{head}  FAILED, partition kept: {item.error}"
