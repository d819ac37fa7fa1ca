"""`manage.py cleanup_work_dirs [--dry-run] [--older-than-days N]`: remove orphaned execution work directories."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from courier_site.formatting import human_bytes
from jobs.engine.recovery import cleanup_orphan_work_dirs
from jobs.engine.workdirs import work_root
from system.values import setting_int


def tree_bytes(folder: Path) -> int:
    """Bytes of the files under folder (what removing it frees); files vanishing meanwhile count as 0."""
    total = 0
    for parent, _folders, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except OSError:
                continue
    return total


class Command(BaseCommand):
    help = (
        "Remove the work directories of executions that are neither queued, running nor paused and were "
        "untouched for job.temp_cleanup_days (what the daily task does), and print how much that freed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
        parser.add_argument(
            "--older-than-days",
            type=int,
            default=None,
            help="age in days instead of the job.temp_cleanup_days setting",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["older_than_days"]
        if days is not None and days < 0:
            raise CommandError("--older-than-days must be 0 or more")
        if days is None:
            days = setting_int("job.temp_cleanup_days", 7)
        root = work_root()
        found = cleanup_orphan_work_dirs(dry_run=True, older_than_days=days)
        sizes = {name: tree_bytes(root / name) for name in found}
        if options["dry_run"]:
            for name in found:
                self.stdout.write(f"{root / name}  {human_bytes(sizes[name])}")
            self.stdout.write(
                f"Would remove {len(found)} orphaned work director{'y' if len(found) == 1 else 'ies'} older than "
                f"{days} day(s) under {root}, {human_bytes(sum(sizes.values()))}."
            )
            return
        removed = cleanup_orphan_work_dirs(older_than_days=days)
        freed = sum(sizes.get(name, 0) for name in removed)
        self.stdout.write(
            f"Removed {len(removed)} orphaned work director{'y' if len(removed) == 1 else 'ies'} older than "
            f"{days} day(s) under {root}, {human_bytes(freed)} freed."
        )
