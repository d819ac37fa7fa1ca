"""`manage.py migrate`: apply the SQL scripts of sql/, then Django's own migrations, then partitions."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import CommandError
from django.core.management.commands.migrate import Command as DjangoMigrateCommand

from courier_site import partitions, sqlmigrations
from courier_site.db import conninfo_for
from courier_site.errors import CourierError
from system.values import setting_int


class Command(DjangoMigrateCommand):
    help = (
        "Under one advisory lock, apply Courier's numbered SQL scripts (sql/), then Django's "
        "migrations, then make sure monthly partitions exist for this month and the next two."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        database = options["database"]
        verbosity = options["verbosity"]

        def log(message: str) -> None:
            if verbosity >= 1:
                self.stdout.write(f"  SQL {message}")

        # One lock over the whole command: our scripts, Django's tables (django_migrations is
        # created with CREATE TABLE, which two sessions cannot race on), the role groups that
        # post_migrate writes and the partitions. A second deploy waits, then finds nothing to do.
        with sqlmigrations.deploy_lock(conninfo_for(database)) as locked:
            if verbosity >= 1:
                self.stdout.write(self.style.MIGRATE_HEADING("Applying SQL scripts from sql/:"))
            try:
                applied = sqlmigrations.apply_locked(locked, settings.COURIER_SQL_DIR, log)
            except CourierError as error:
                raise CommandError(str(error)) from error
            if verbosity >= 1 and not applied:
                self.stdout.write("  No SQL scripts to apply.")

            super().handle(*args, **options)

            months_ahead = setting_int("partition.months_ahead", partitions.MINIMUM_MONTHS_AHEAD, using=database)
            months = partitions.ensure_partitions(months_ahead, using=database)
        if verbosity >= 1:
            self.stdout.write(f"SQL scripts applied: {len(applied)}; partitions ready for {', '.join(months)}.")
