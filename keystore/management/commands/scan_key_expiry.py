"""`manage.py scan_key_expiry`: move keys near expiry to expiring and expired keys to retired."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from keystore.lifecycle import scan_expiry


class Command(BaseCommand):
    help = "Mark PGP keys expiring within key.expiration_warning_days, and retire expired ones (audited)."

    def handle(self, *args: Any, **options: Any) -> None:
        moved = scan_expiry()
        self.stdout.write(f"{len(moved['expiring'])} key(s) now expiring, {len(moved['retired'])} retired.")
