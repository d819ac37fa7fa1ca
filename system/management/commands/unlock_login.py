"""`manage.py unlock_login`: lift a sign-in lock on a username or a client address before it ends."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from system.models import LoginThrottle


class Command(BaseCommand):
    help = (
        "Lift the sign-in lock (and forget the failed attempts) of a username or a client address, "
        "e.g. when an attacker locked an Admin out. Audited as login_unlocked."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name_or_address", help="the username (any letter case) or the client IP address")
        parser.add_argument("--by", default="system", help="name recorded in the audit log (default: system)")

    def handle(self, *args: Any, name_or_address: str, by: str, **options: Any) -> None:
        scopes = LoginThrottle.objects.unlock(name_or_address, by=by)
        if scopes:
            self.stdout.write(f"Unlocked {name_or_address} ({' and '.join(scopes)}).")
        else:
            self.stdout.write(f"Nothing was counted against {name_or_address}; no change.")
