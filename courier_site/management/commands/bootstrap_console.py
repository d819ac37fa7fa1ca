"""`manage.py bootstrap_console`: the first console login, created once and printed once."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import connection, transaction

from audit.models import AuditLogEntry
from courier_site.roles import ADMIN


class Command(BaseCommand):
    help = (
        "Create the first Admin login when the console has no users yet and print its password once. "
        "Does nothing when any user exists."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="admin", help="login name of the first Admin (default: admin)")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        User = get_user_model()
        with transaction.atomic(), connection.cursor() as cursor:
            # Two processes starting at once must not both create a first login.
            cursor.execute("SELECT pg_advisory_xact_lock(12346)")
            if User.objects.exists():
                self.stdout.write("Console users already exist; no login created.")
                return
            password = secrets.token_urlsafe(15)
            user = User.objects.create_user(username=username, password=password, is_staff=True)
            user.groups.add(Group.objects.get(name=ADMIN))
            AuditLogEntry.objects.record(
                entity_type="user",
                entity_id=user.pk,
                operation="first_login_created",
                performed_by="system",
                details={"username": username, "role": ADMIN},
            )
        banner = "=" * 60
        self.stdout.write(
            f"{banner}\nFirst console login (shown once, change it after signing in):\n"
            f"  user:     {username}\n  password: {password}\n{banner}"
        )
