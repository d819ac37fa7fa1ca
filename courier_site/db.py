"""Helpers to reach the project's database outside Django's ORM connection, and to ride out its restarts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import TypeVar

import psycopg
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connections
from psycopg.conninfo import make_conninfo

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Pause between attempts while the database is away: quick at first (a fast restart takes a
# second or two), then no more than one connection attempt every two seconds.
FIRST_RETRY_SECONDS = 0.1
LONGEST_RETRY_SECONDS = 2.0
# SQLSTATEs of a lost connection: class 08 (connection exception), and the server ending the
# session because it shuts down (fast or immediate stop, a crash) or is still starting up.
CONNECTION_EXCEPTION_CLASS = "08"
SERVER_GOING_AWAY = frozenset({"57P01", "57P02", "57P03"})


def conninfo_for(alias: str = "default") -> str:
    """A libpq connection string for the database Django uses under alias."""
    settings = connections[alias].settings_dict
    params = {
        "dbname": settings["NAME"],
        "user": settings.get("USER") or None,
        "password": settings.get("PASSWORD") or None,
        "host": settings.get("HOST") or None,
        "port": str(settings["PORT"]) if settings.get("PORT") else None,
    }
    params.update({key: value for key, value in (settings.get("OPTIONS") or {}).items() if isinstance(value, str)})
    return make_conninfo(**{key: value for key, value in params.items() if value is not None})


def connection_lost(error: BaseException, alias: str = "default") -> bool:
    """True when error came with the loss of the connection (a restart, a failover, the network),
    not from the statement itself (a deadlock, a constraint): only the first is worth retrying."""
    if not isinstance(error, (OperationalError, InterfaceError)):
        return False
    # The error itself tells, not the connection's state now: leaving an atomic block may
    # already have opened a new connection.
    cause = error.__cause__
    sqlstate = getattr(cause, "sqlstate", None)
    if sqlstate is not None:
        return sqlstate.startswith(CONNECTION_EXCEPTION_CLASS) or sqlstate in SERVER_GOING_AWAY
    if isinstance(cause, psycopg.OperationalError):
        return True  # no answer from the server at all: the connection failed or was lost
    wrapper = connections[alias]
    return wrapper.connection is None or not wrapper.is_usable()


def forget_connection(alias: str = "default") -> None:
    """Drop a connection that died, so the next query opens a new one (Django never reconnects by itself)."""
    with suppress(DatabaseError):
        connections[alias].close()


def retry_while_database_away(operation: Callable[[], T], *, what: str, alias: str = "default") -> T:
    """Run operation, and run it again on a new connection while the database is away, for at most
    COURIER_DATABASE_OUTAGE_SECONDS; then the last error is raised.

    Only for work outside a transaction: a transaction cut off by the outage was rolled back by
    the server, so running the whole operation again is how it gets done. An operation whose
    commit may have reached the server before its reply was lost must check for that itself.
    """
    wrapper = connections[alias]
    patience = settings.COURIER_DATABASE_OUTAGE_SECONDS
    deadline = time.monotonic() + patience
    pause = FIRST_RETRY_SECONDS
    away_since: float | None = None
    while True:
        try:
            result = operation()
        except (OperationalError, InterfaceError) as error:
            if wrapper.in_atomic_block or not connection_lost(error, alias):
                raise
            forget_connection(alias)
            if time.monotonic() + pause > deadline:
                logger.error("database still unavailable after %d s while %s; giving up", patience, what)
                raise
            if away_since is None:
                away_since = time.monotonic()
                logger.warning("database unavailable while %s (%s); retrying for up to %d s", what, error, patience)
            time.sleep(pause)
            pause = min(pause * 2, LONGEST_RETRY_SECONDS)
            continue
        if away_since is not None:
            logger.warning("database back after %.1f s; %s done", time.monotonic() - away_since, what)
        return result


class OutageTolerance:
    """How one long piece of work (an execution's run) rides out a restart of the database (SPEC 10).

    Writes it cannot go on without are retried until the database is back; liveness reads and
    writes (control polls, heartbeats, progress) are skipped meanwhile, so a running step carries on.
    """

    def __init__(self, label: str, alias: str = "default") -> None:
        self.label = label
        self.alias = alias
        self.away_since: float | None = None

    def retry(self, what: str, write: Callable[[], T], done: Callable[[], bool] | None = None) -> T | None:
        """Run write (a transaction of its own), again on a new connection while the database is away.

        done tells whether an earlier attempt committed although its reply was lost with the
        connection; write is then not made twice and None is returned.
        """
        attempts = 0

        def attempt() -> T | None:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and done is not None and done():
                return None
            return write()

        return retry_while_database_away(attempt, what=f"{self.label}: {what}", alias=self.alias)

    def unless_away(self, operation: Callable[[], T]) -> T | None:
        """operation(), or None while the database is away."""
        try:
            result = operation()
        except (OperationalError, InterfaceError) as error:
            if connections[self.alias].in_atomic_block or not connection_lost(error, self.alias):
                raise
            forget_connection(self.alias)
            if self.away_since is None:
                self.away_since = time.monotonic()
                logger.warning("%s: database unavailable (%s); carrying on without it", self.label, error)
            return None
        if self.away_since is not None:
            logger.warning("%s: database back after %.1f s", self.label, time.monotonic() - self.away_since)
            self.away_since = None
        return result
