"""`manage.py partitions create|status`: monthly partition maintenance on demand."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from courier_site import partitions
from courier_site.health import partition_report
from system.values import setting_int


class Command(BaseCommand):
    help = "Create monthly partitions ahead of time (create) or show partition health per table (status)."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{create,status}")
        create = actions.add_parser("create", help="create this month's partitions and the coming months'")
        create.add_argument(
            "--months-ahead",
            type=int,
            default=None,
            help="months beyond the current one (default: system setting partition.months_ahead, at least 2)",
        )
        status = actions.add_parser("status", help="partitions per table, missing and overdue months")
        status.add_argument("--json", action="store_true", help="print the report as JSON")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "create":
            months_ahead = options["months_ahead"]
            if months_ahead is None:
                months_ahead = setting_int("partition.months_ahead", partitions.MINIMUM_MONTHS_AHEAD)
            months = partitions.ensure_partitions(months_ahead)
            self.stdout.write(f"Partitions ready for {len(partitions.PARTITIONED_TABLES)} tables: {', '.join(months)}.")
            return
        report = partition_report()
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
            return
        for table, info in report["tables"].items():
            line = (
                f"{table:20} {info['status']:9} {info['partition_count']:3} partitions, "
                f"oldest {info['oldest_partition'] or '-'}, newest {info['newest_partition'] or '-'}"
            )
            if info["missing_months"]:
                line += f"; MISSING {', '.join(info['missing_months'])} [E1004]"
            if info["archive_overdue_months"]:
                line += f"; archive overdue: {', '.join(info['archive_overdue_months'])}"
            self.stdout.write(line)
        self.stdout.write(f"Partition health: {report['status']}.")
        if report["status"] == "unhealthy":
            raise SystemExit(1)
