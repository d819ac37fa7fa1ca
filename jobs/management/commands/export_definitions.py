"""`manage.py export_definitions`: write job and chain definitions (steps, schedules, tags) as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from jobs.models import Job, JobChain
from jobs.portability import export_jobs
from monitors.models import FileMonitor


class Command(BaseCommand):
    help = "Export job definitions as JSON (to a file or standard output); secrets are never exported."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--output", "-o", help="file to write (default: standard output)")
        parser.add_argument("--job", action="append", default=[], help="export only this job name (repeatable)")
        parser.add_argument(
            "--chain", action="append", default=[], help="export only this chain and its member jobs (repeatable)"
        )
        parser.add_argument(
            "--monitor", action="append", default=[], help="export only this monitor and what it runs (repeatable)"
        )

    def handle(self, *args: Any, **options: Any) -> None:

        jobs = Job.objects.all()
        chains = JobChain.objects.all()
        monitors = FileMonitor.objects.all()
        if options["job"] or options["chain"] or options["monitor"]:
            jobs = jobs.filter(name__in=options["job"])
            chains = chains.filter(name__in=options["chain"])
            monitors = monitors.filter(name__in=options["monitor"])
        document = export_jobs(jobs, chains, monitors)
        text = json.dumps(document, indent=2, sort_keys=False)
        if options["output"]:
            Path(options["output"]).write_text(text + "\n")
            counts = (
                f"{len(document['jobs'])} job(s), {len(document['chains'])} chain(s) "
                f"and {len(document['monitors'])} monitor(s)"
            )
            self.stderr.write(f"Exported {counts} to {options['output']}.")
        else:
            self.stdout.write(text)
