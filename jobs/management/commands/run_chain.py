"""`manage.py run_chain <name|id> [--wait] [--json]`: start a chain now, optionally wait for its result."""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from courier_site.errors import CourierError
from jobs import chains
from jobs.lookup import find_by_name_or_id
from jobs.management.progress import ProgressLine, chain_status
from jobs.models import ChainExecution, JobChain


def find_chain(reference: str) -> Any:
    return find_by_name_or_id(JobChain.objects.all(), reference, "chain")


class Command(BaseCommand):
    help = "Start a chain execution now (triggered_by manual:<user>); with --wait, print every member's outcome."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("chain", help="chain name or id")
        parser.add_argument(
            "--wait",
            action="store_true",
            help="wait until the chain ends, showing its progress on stderr; exit 1 unless completed",
        )
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
        parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait with --wait (default 3600)")
        parser.add_argument("--user", default="cli", help="name recorded as the operator (default: cli)")

    def handle(self, *args: Any, **options: Any) -> None:
        chain = find_chain(options["chain"])
        try:
            execution = chains.trigger(chain, triggered_by=f"manual:{options['user']}", by=options["user"])
        except CourierError as error:
            raise CommandError(str(error)) from error
        if options["wait"]:
            deadline = time.monotonic() + options["timeout"]
            progress = ProgressLine(self.stderr)
            try:
                while not execution.is_finished:
                    progress.show(chain_status(execution))
                    if time.monotonic() > deadline:
                        raise CommandError(
                            f"chain execution {execution.pk} still {execution.state} after {options['timeout']:g} s"
                        )
                    time.sleep(0.25)
                    execution = ChainExecution.objects.get(pk=execution.pk)
            finally:
                progress.close()
        result = {
            "chain_execution_id": str(execution.pk),
            "chain": chain.name,
            "state": execution.state,
            "error": execution.error_message,
            "started_at": execution.started_at.isoformat() if execution.started_at else None,
            "completed_at": execution.completed_at.isoformat() if execution.completed_at else None,
            "members": [
                {
                    "order": run.execution_order,
                    "job": run.job.name,
                    "state": run.state,
                    "job_execution_id": str(run.job_execution_id) if run.job_execution_id else None,
                    "note": run.note,
                }
                for run in execution.member_runs.select_related("job").order_by("execution_order")
            ],
        }
        if options["json"]:
            self.stdout.write(json.dumps(result, indent=2))
        else:
            verb = execution.state if options["wait"] else "started"
            summary = f"Chain execution {execution.pk} of '{chain.name}' {verb}."
            if execution.error_message:
                summary += f" {execution.error_message}"
            self.stdout.write(summary)
            for member in result["members"]:
                self.stdout.write(f"  member {member['order']} {member['job']}: {member['state']}")
        if options["wait"] and execution.state != "completed":
            raise SystemExit(1)
