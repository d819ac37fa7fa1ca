"""`manage.py test_connection <name|id>`: connect, authenticate, list, and report (exit 1 on failure)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from connections.diagnostics import test_connection
from connections.models import Connection


class Command(BaseCommand):
    help = "Test a connection: latency, banner, host key or certificate, and actionable errors E3000-E3004."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("connection", help="connection name or id")
        parser.add_argument("--path", default=".", help="remote path to list (default: the login directory)")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        reference = options["connection"]
        try:
            connection = Connection.objects.select_related("ssh_key").get(pk=uuid.UUID(reference))
        except (ValueError, Connection.DoesNotExist):
            matches = list(Connection.objects.select_related("ssh_key").filter(name=reference)[:2])
            if len(matches) != 1:
                raise CommandError(f"no single connection named or with id {reference!r}") from None
            connection = matches[0]
        result = test_connection(connection, by="cli", path=options["path"])
        if options["json"]:
            self.stdout.write(json.dumps(result, indent=2, default=str))
        elif result["ok"]:
            extra = result.get("host_key_fingerprint") or result.get("thumbprint_sha256") or ""
            self.stdout.write(f"OK {result['endpoint']} in {result['latency_ms']} ms; {result['banner']!s:.60} {extra}")
        else:
            self.stdout.write(f"FAILED {result['endpoint']}: {result['error']}\n  {result['hint']}")
        if not result["ok"]:
            raise SystemExit(1)
