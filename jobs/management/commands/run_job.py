"""`manage.py run_job <name|id> [--wait] [--json]`: queue a job now, optionally wait for its result."""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from courier_site.errors import CourierError
from jobs.engine import control
from jobs.lookup import find_by_name_or_id
from jobs.management.progress import ProgressLine, execution_status
from jobs.models import Job, JobExecution, StepExecution

FINISHED = ("completed", "failed", "cancelled")


def find_job(reference: str) -> Any:
    return find_by_name_or_id(Job.objects.all(), reference, "job")


class Command(BaseCommand):
    help = "Queue a job execution now (triggered_by manual:<user>); with --wait, print its final state."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job", help="job name or id")
        parser.add_argument(
            "--wait",
            action="store_true",
            help="wait until the execution ends, showing its progress on stderr; exit 1 unless completed",
        )
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
        parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait with --wait (default 3600)")
        parser.add_argument("--user", default="cli", help="name recorded as the operator (default: cli)")

    def handle(self, *args: Any, **options: Any) -> None:
        job = find_job(options["job"])
        try:
            execution = control.enqueue(job, triggered_by=f"manual:{options['user']}", requested_by=options["user"])
        except CourierError as error:
            raise CommandError(str(error)) from error
        if not options["wait"]:
            self._print(
                options,
                {
                    "execution_id": str(execution.pk),
                    "state": execution.state,
                    "job": job.name,
                    "version": execution.job_version_number,
                },
                f"Queued execution {execution.pk} of job '{job.name}' (version {execution.job_version_number}).",
            )
            return
        deadline = time.monotonic() + options["timeout"]
        progress = ProgressLine(self.stderr)
        try:
            while True:
                execution = JobExecution.objects.get(pk=execution.pk)
                if execution.state in FINISHED:
                    break
                progress.show(execution_status(execution))
                if time.monotonic() > deadline:
                    raise CommandError(
                        f"execution {execution.pk} still {execution.state} after {options['timeout']:g} s"
                    )
                time.sleep(0.25)
        finally:
            progress.close()
        steps = StepExecution.objects.filter(job_execution_id=execution.pk).order_by("created_at")
        result = {
            "execution_id": str(execution.pk),
            "job": job.name,
            "version": execution.job_version_number,
            "state": execution.state,
            "error": execution.error_message,
            "started_at": execution.started_at.isoformat() if execution.started_at else None,
            "completed_at": execution.completed_at.isoformat() if execution.completed_at else None,
            "steps": [
                {
                    "order": step.step_order,
                    "position": step.position,
                    "type_key": step.type_key,
                    "state": step.state,
                    "attempt": step.retry_attempt,
                    "duration_ms": step.duration_ms,
                    "error": step.error_message,
                }
                for step in steps
            ],
        }
        summary = f"Execution {execution.pk} of job '{job.name}' {execution.state}."
        if execution.error_message:
            summary += f" {execution.error_message}"
        self._print(options, result, summary)
        if execution.state != "completed":
            raise SystemExit(1)

    def _print(self, options: dict[str, Any], data: dict[str, Any], summary: str) -> None:
        self.stdout.write(json.dumps(data, indent=2) if options["json"] else summary)
