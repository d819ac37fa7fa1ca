"""`manage.py relay_events`: drain the domain events waiting for the relay once, and print a summary."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from audit.relay import DEFAULT_BATCH, lag, relay_until_idle


class Command(BaseCommand):
    help = "Hand every due domain event to the subscribers (notifications) now, in batches, then report the lag."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="events per transaction")
        parser.add_argument("--max-seconds", type=float, default=300.0, help="stop after this long")

    def handle(self, *args: Any, **options: Any) -> None:
        result = relay_until_idle(limit=max(options["batch"], 1), max_seconds=options["max_seconds"])
        after = lag()
        self.stdout.write(
            f"relayed {result.handled} events, {result.retrying} to retry, {result.failed} failed; "
            f"{after['waiting']} waiting, oldest {after['lag_seconds']} s"
        )
