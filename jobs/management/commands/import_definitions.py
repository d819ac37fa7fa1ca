"""`manage.py import_definitions FILE`: create or update job definitions from an export, all or nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from courier_site.errors import CourierError
from jobs.portability import import_jobs


class Command(BaseCommand):
    help = "Import job definitions exported by export_definitions; invalid files change nothing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="JSON file written by export_definitions")
        parser.add_argument("--dry-run", action="store_true", help="check and report without writing")
        parser.add_argument("--user", default="cli", help="name recorded as the operator (default: cli)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            document = json.loads(Path(options["file"]).read_text())
        except (OSError, ValueError) as error:
            raise CommandError(f"[E2060] cannot read {options['file']}: {error}") from error
        try:
            report = import_jobs(document, by=options["user"], dry_run=options["dry_run"])
        except CourierError as error:
            raise CommandError(str(error)) from error
        prefix = "Dry run: would import" if options["dry_run"] else "Imported"
        self.stdout.write(
            f"{prefix} {len(report['created'])} new, {len(report['updated'])} updated, "
            f"{len(report['unchanged'])} unchanged job(s); {len(report['chains'])} chain(s), "
            f"{len(report['monitors'])} monitor(s)."
        )
        if report["tags_created"] or report["tags_updated"]:
            self.stdout.write(
                f"Tags: {len(report['tags_created'])} new, {len(report['tags_updated'])} with changed details."
            )
        if report.get("notification_rules") or report.get("notification_channels"):
            self.stdout.write(
                f"Notifications: {len(report['notification_channels'])} channel(s), "
                f"{len(report['notification_rules'])} rule(s)."
            )
        if report.get("channels_needing_secret"):
            names = ", ".join(report["channels_needing_secret"])
            self.stdout.write(f"Set the password or generate the signing secret of these channels: {names}.")
        if report["connections_needing_password"]:
            names = ", ".join(report["connections_needing_password"])
            self.stdout.write(f"Set the password of these connections in the console: {names}.")
