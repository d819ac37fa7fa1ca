"""`manage.py rotate_master_key`: re-wrap every stored secret under the current master key."""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections import Counter
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from psycopg import sql
from psycopg.types.json import Jsonb

from audit.models import AuditLogEntry
from courier_site.envelope import Keyring, SecretDecryptionError, keyring
from jobs.secrets import SEALED_KEY, is_sealed

# Every column that holds a sealed secret.
SECRET_COLUMNS = (
    ("connections", "password_encrypted"),
    ("ssh_keys", "private_key_data"),
    ("pgp_keys", "private_key_data"),
    ("notification_channels", "secret_encrypted"),
)
# JSON columns holding step configurations whose secret settings (archive passwords …) are
# sealed in place by jobs.secrets as {"sealed": "<base64 blob>"}: the steps themselves, and
# every saved version of their job, since executions run the version they pinned.
STEP_CONFIGURATION_COLUMNS = (
    ("job_steps", "configuration"),
    ("job_versions", "config_snapshot"),
)


class _Rotation:
    """Re-wraps blobs under the current master key and counts them per column."""

    def __init__(self, ring: Keyring) -> None:
        self.ring = ring
        self.checked: Counter[str] = Counter()
        self.rewrapped: Counter[str] = Counter()

    def blob(self, where: str, row_id: Any, blob: bytes | memoryview) -> bytes | None:
        """The blob under the current master key, or None when it already is."""
        self.checked[where] += 1
        if not self.ring.needs_rewrap(blob):
            return None
        try:
            fresh = self.ring.rewrap(blob)
        except SecretDecryptionError as error:
            raise CommandError(f"{where} {row_id}: {error}; nothing was changed") from error
        self.rewrapped[where] += 1
        return fresh

    def sealed_values(self, where: str, row_id: Any, value: Any) -> Any:
        """value with every sealed secret inside it (at any depth) re-wrapped."""
        if is_sealed(value):
            try:
                blob = base64.b64decode(value[SEALED_KEY], validate=True)
            except (binascii.Error, ValueError):
                error = SecretDecryptionError("a sealed step secret is not valid base64")
                raise CommandError(f"{where} {row_id}: {error}; nothing was changed") from None
            fresh = self.blob(where, row_id, blob)
            return value if fresh is None else {SEALED_KEY: base64.b64encode(fresh).decode()}
        if isinstance(value, dict):
            return {key: self.sealed_values(where, row_id, item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.sealed_values(where, row_id, item) for item in value]
        return value

    def step_configurations(self, table: str, where: str, row_id: Any, value: Any) -> Any:
        """A job_steps configuration, or a job_versions snapshot with each of its steps' configurations, re-wrapped."""
        if table == "job_steps":
            return self.sealed_values(where, row_id, value)
        if not isinstance(value, dict) or not isinstance(value.get("steps"), list):
            return value
        steps = [
            {**step, "configuration": self.sealed_values(where, row_id, step["configuration"])}
            if isinstance(step, dict) and "configuration" in step
            else step
            for step in value["steps"]
        ]
        return {**value, "steps": steps}


class Command(BaseCommand):
    help = (
        "Re-wrap every stored secret with COURIER_MASTER_KEY: connection passwords, key store private keys, "
        "and secret step settings in job steps and job versions. Put the old key in "
        "COURIER_PREVIOUS_MASTER_KEYS first; remove it once this command reports no secret left under it. "
        "--generate prints a new key."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--generate", action="store_true", help="print a new random master key and exit")
        parser.add_argument("--dry-run", action="store_true", help="count what would be re-wrapped")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["generate"]:
            self.stdout.write(base64.b64encode(os.urandom(32)).decode())
            return
        ring = keyring()
        rotation = _Rotation(ring)
        dry_run = options["dry_run"]
        verb = "would re-wrap" if dry_run else "re-wrapped"
        # One transaction for every table: a secret that cannot be opened anywhere leaves all of them untouched.
        with transaction.atomic(), connection.cursor() as cursor:
            for table, column in SECRET_COLUMNS:
                where = f"{table}.{column}"
                cursor.execute(
                    sql.SQL("SELECT id, {column} FROM {table} WHERE {column} IS NOT NULL FOR UPDATE")
                    .format(column=sql.Identifier(column), table=sql.Identifier(table))
                    .as_string(cursor.connection)
                )
                for row_id, blob in cursor.fetchall():
                    fresh = rotation.blob(where, row_id, blob)
                    if fresh is not None and not dry_run:
                        cursor.execute(
                            sql.SQL("UPDATE {table} SET {column} = %s WHERE id = %s")
                            .format(column=sql.Identifier(column), table=sql.Identifier(table))
                            .as_string(cursor.connection),
                            [fresh, row_id],
                        )
                self._progress(where, rotation, verb)
            for table, column in STEP_CONFIGURATION_COLUMNS:
                where = f"{table}.{column}"
                # Only rows with a sealed value somewhere: versions pile up, and most steps hold no secret.
                cursor.execute(
                    sql.SQL("SELECT id, {column} FROM {table} WHERE {column}::text LIKE %s FOR UPDATE")
                    .format(column=sql.Identifier(column), table=sql.Identifier(table))
                    .as_string(cursor.connection),
                    [f'%"{SEALED_KEY}"%'],
                )
                for row_id, stored in cursor.fetchall():
                    value = json.loads(stored) if isinstance(stored, str | bytes) else stored
                    fresh_value = rotation.step_configurations(table, where, row_id, value)
                    if fresh_value != value and not dry_run:
                        cursor.execute(
                            sql.SQL("UPDATE {table} SET {column} = %s WHERE id = %s")
                            .format(column=sql.Identifier(column), table=sql.Identifier(table))
                            .as_string(cursor.connection),
                            [Jsonb(fresh_value), row_id],
                        )
                self._progress(where, rotation, verb)
            rewrapped, checked = sum(rotation.rewrapped.values()), sum(rotation.checked.values())
            if dry_run:
                transaction.set_rollback(True)
            else:
                AuditLogEntry.objects.record(
                    entity_type="system",
                    entity_id="master-key",
                    operation="master_key_rotated",
                    performed_by="cli",
                    details={
                        "secrets_rewrapped": rewrapped,
                        "rewrapped_by_column": dict(rotation.rewrapped),
                        "key_id": ring.current.key_id.hex(),
                    },
                )
        self.stdout.write(
            f"{verb.capitalize()} {rewrapped} of {checked} stored secrets under master key {ring.current.key_id.hex()}."
        )

    def _progress(self, where: str, rotation: _Rotation, verb: str) -> None:
        self.stdout.write(f"  {where}: {verb} {rotation.rewrapped[where]} of {rotation.checked[where]}")
