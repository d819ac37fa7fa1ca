"""`manage.py rotate_master_key`: re-wrap every stored secret under the current master key."""

from __future__ import annotations

import base64
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from psycopg import sql

from audit.models import AuditLogEntry
from courier_site.envelope import SecretDecryptionError, keyring

# Every column that holds a sealed secret.
SECRET_COLUMNS = (
    ("connections", "password_encrypted"),
    ("ssh_keys", "private_key_data"),
    ("pgp_keys", "private_key_data"),
)


class Command(BaseCommand):
    help = (
        "Re-wrap every stored secret with COURIER_MASTER_KEY. Put the old key in COURIER_PREVIOUS_MASTER_KEYS "
        "first; remove it once this command reports no secret left under it. --generate prints a new key."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--generate", action="store_true", help="print a new random master key and exit")
        parser.add_argument("--dry-run", action="store_true", help="count what would be re-wrapped")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["generate"]:
            self.stdout.write(base64.b64encode(os.urandom(32)).decode())
            return
        ring = keyring()
        rewrapped = checked = 0
        with transaction.atomic(), connection.cursor() as cursor:
            for table, column in SECRET_COLUMNS:
                cursor.execute(
                    sql.SQL("SELECT id, {column} FROM {table} WHERE {column} IS NOT NULL FOR UPDATE")
                    .format(column=sql.Identifier(column), table=sql.Identifier(table))
                    .as_string(cursor.connection)
                )
                for row_id, blob in cursor.fetchall():
                    checked += 1
                    if not ring.needs_rewrap(blob):
                        continue
                    try:
                        fresh = ring.rewrap(blob)
                    except SecretDecryptionError as error:
                        raise CommandError(f"{table} {row_id}: {error}; nothing was changed") from error
                    rewrapped += 1
                    if not options["dry_run"]:
                        cursor.execute(
                            sql.SQL("UPDATE {table} SET {column} = %s WHERE id = %s")
                            .format(column=sql.Identifier(column), table=sql.Identifier(table))
                            .as_string(cursor.connection),
                            [fresh, row_id],
                        )
            if options["dry_run"]:
                transaction.set_rollback(True)
            else:
                AuditLogEntry.objects.record(
                    entity_type="system",
                    entity_id="master-key",
                    operation="master_key_rotated",
                    performed_by="cli",
                    details={"secrets_rewrapped": rewrapped, "key_id": ring.current.key_id.hex()},
                )
        verb = "Would re-wrap" if options["dry_run"] else "Re-wrapped"
        self.stdout.write(
            f"{verb} {rewrapped} of {checked} stored secrets under master key {ring.current.key_id.hex()}."
        )
