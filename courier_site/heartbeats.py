"""Process heartbeats of workers and beat, stored in PostgreSQL so every host sees them."""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, connection

logger = logging.getLogger(__name__)

_UPSERT = """
INSERT INTO process_heartbeats (process_name, kind, hostname, pid, started_at, last_seen_at, stopped_at, schema_version)
VALUES (%s, %s, %s, %s, now(), now(), NULL, %s)
ON CONFLICT (process_name) DO UPDATE
SET last_seen_at = now(), stopped_at = NULL, pid = EXCLUDED.pid, hostname = EXCLUDED.hostname,
    schema_version = EXCLUDED.schema_version,
    started_at = CASE WHEN process_heartbeats.pid = EXCLUDED.pid THEN process_heartbeats.started_at ELSE now() END
"""


def latest_script_name() -> str | None:
    names = sorted(path.name for path in settings.COURIER_SQL_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    return names[-1] if names else None


def process_name(kind: str, name: str | None = None) -> str:
    return name or f"{kind}@{socket.gethostname()}:{os.getpid()}"


def beat(kind: str, name: str) -> None:
    """Record that the named process is alive now."""
    with connection.cursor() as cursor:
        cursor.execute(_UPSERT, [name, kind, socket.gethostname(), os.getpid(), latest_script_name()])


def mark_stopped(name: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("UPDATE process_heartbeats SET stopped_at = now() WHERE process_name = %s", [name])


def newest(kind: str) -> tuple[str, timedelta] | None:
    """Name and age of the most recent live heartbeat of this kind, or None."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT process_name, now() - last_seen_at FROM process_heartbeats
            WHERE kind = %s AND stopped_at IS NULL ORDER BY last_seen_at DESC LIMIT 1
            """,
            [kind],
        )
        row = cursor.fetchone()
    return (row[0], row[1]) if row else None


def is_fresh(age: timedelta) -> bool:
    return age <= timedelta(seconds=settings.COURIER_HEARTBEAT_TIMEOUT)


def expired_before(now: datetime) -> datetime | None:
    """Heartbeats older than this count as gone; None while the database has been up for less than
    the timeout, since nobody could write a heartbeat while it was down (a restart is no crash)."""
    timeout = settings.COURIER_HEARTBEAT_TIMEOUT
    with connection.cursor() as cursor:
        # The database's own clock on both sides: the caller's `now` may be another host's, or frozen.
        cursor.execute("SELECT now() - pg_postmaster_start_time() < make_interval(secs => %s)", [timeout])
        restarted_lately = cursor.fetchone()[0]
    return None if restarted_lately else now - timedelta(seconds=timeout)


class HeartbeatThread(threading.Thread):
    """Refreshes a process's heartbeat every COURIER_HEARTBEAT_INTERVAL seconds until stopped."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(name=f"courier-heartbeat-{kind}", daemon=True)
        self.kind = kind
        self.process = name
        self.stopping = threading.Event()
        self.stop_requested = False

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    close_old_connections()
                    beat(self.kind, self.process)
                except Exception:  # the database may be restarting; try again next round
                    connection.close()
                self.stopping.wait(settings.COURIER_HEARTBEAT_INTERVAL)
            # Written from this thread, on its own connection: stop() runs in signal handlers,
            # which may interrupt a database call of the main thread on the main connection.
            try:
                close_old_connections()
                mark_stopped(self.process)
            except Exception:
                logger.warning("could not record that %s stopped", self.process, exc_info=True)
        finally:
            connection.close()

    def stop(self) -> None:
        """Record the stop and end the thread (within 5 s). Safe to call again, also from a signal
        handler that interrupts an earlier call: a second SIGTERM must not deadlock the process."""
        if self.stop_requested:
            return
        self.stop_requested = True
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=5)
