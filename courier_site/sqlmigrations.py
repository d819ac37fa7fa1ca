"""Forward-only runner for the numbered SQL scripts in sql/ (SPEC 2)."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from courier_site.errors import MigrationChecksumChanged, MigrationScriptFailed, SchemaBehind

# Every runner on every host takes this session-level lock first, so concurrent
# deploys serialise: the second waits, then finds nothing left to apply.
ADVISORY_LOCK_KEY = 12345
SCRIPT_NAME = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")

_CREATE_SCHEMA_VERSIONS = """
CREATE TABLE IF NOT EXISTS schema_versions (
    script_name   TEXT PRIMARY KEY,
    checksum      TEXT NOT NULL,
    applied_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    execution_ms  INT
)
"""


@dataclass(frozen=True)
class Script:
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def discover(sql_dir: Path) -> list[Script]:
    """The numbered scripts of sql_dir in the order they apply."""
    scripts = [Script(path.name, path.read_text()) for path in sql_dir.iterdir() if SCRIPT_NAME.match(path.name)]
    return sorted(scripts, key=lambda script: script.name)


def applied_scripts(conn: psycopg.Connection) -> dict[str, str]:
    """Applied script names mapped to their checksums; empty when the table is absent."""
    exists = conn.execute("SELECT to_regclass('schema_versions') IS NOT NULL").fetchone()[0]
    if not exists:
        return {}
    return dict(conn.execute("SELECT script_name, checksum FROM schema_versions").fetchall())


@contextmanager
def deploy_lock(conninfo: str) -> Iterator[psycopg.Connection]:
    """A session holding the migration advisory lock until the block ends.

    `manage.py migrate` holds it across everything it does (these scripts, Django's own
    tables, the role groups and the partitions), so N deploys started at once on an empty
    database run one after another instead of racing to create the same tables.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # Partition bounds and now() are interpreted in the session time zone; UTC keeps
        # month boundaries identical whatever the server's default is.
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            yield conn
        finally:
            if not conn.closed:
                conn.execute(sql.SQL("SELECT pg_advisory_unlock({})").format(sql.Literal(ADVISORY_LOCK_KEY)))


def apply(conninfo: str, sql_dir: Path, log: Callable[[str], None] = lambda message: None) -> list[str]:
    """Apply every pending script of sql_dir under the advisory lock; return the names applied."""
    with deploy_lock(conninfo) as conn:
        return apply_locked(conn, sql_dir, log)


def apply_locked(
    conn: psycopg.Connection, sql_dir: Path, log: Callable[[str], None] = lambda message: None
) -> list[str]:
    """Apply every pending script of sql_dir on a session that holds deploy_lock, one transaction each.

    Raises MigrationChecksumChanged when an applied script was edited, and
    MigrationScriptFailed (naming the script and the SQL error) when one fails;
    scripts before it stay applied.
    """
    scripts = discover(sql_dir)
    applied_now: list[str] = []
    conn.execute(_CREATE_SCHEMA_VERSIONS)
    applied = applied_scripts(conn)
    for script in scripts:
        recorded = applied.get(script.name)
        if recorded is not None and recorded != script.checksum:
            raise MigrationChecksumChanged(
                f"script {script.name} was changed after it was applied "
                f"(recorded checksum {recorded[:12]}…, file now {script.checksum[:12]}…); "
                "applied scripts are never edited: restore it and add a new numbered script"
            )
    for script in scripts:
        if script.name in applied:
            continue
        log(f"applying {script.name}")
        started = time.monotonic()
        try:
            with conn.transaction():
                conn.execute(script.text)
                conn.execute(
                    "INSERT INTO schema_versions (script_name, checksum, execution_ms) VALUES (%s, %s, %s)",
                    (script.name, script.checksum, int((time.monotonic() - started) * 1000)),
                )
        except psycopg.Error as error:
            raise MigrationScriptFailed(
                f"script {script.name} failed and was rolled back: {error.diag.message_primary or error}"
            ) from error
        applied_now.append(script.name)
    return applied_now


def missing_scripts(conn: psycopg.Connection, sql_dir: Path) -> list[str]:
    """Scripts shipped in sql_dir that the database has not applied."""
    applied = applied_scripts(conn)
    return [script.name for script in discover(sql_dir) if script.name not in applied]


def check_schema_current(conninfo: str, sql_dir: Path) -> None:
    """Refuse to go on when the database lacks scripts this build ships (worker start)."""
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        missing = missing_scripts(conn, sql_dir)
    if missing:
        raise SchemaBehind(
            "database schema is behind: run migrate on the web host first "
            f"(missing {len(missing)} script(s): {', '.join(missing)})"
        )
