"""Celery worker hooks of the platform: refuse to start on a schema that is behind, keep partitions ready, heartbeat.

The job engine's own worker hooks (crash recovery, warm pool processes) live in jobs.worker.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import signals
from django.conf import settings
from django.db import connection

from courier_site import heartbeats, partitions
from courier_site.db import conninfo_for
from courier_site.errors import SchemaBehind
from courier_site.sqlmigrations import check_schema_current
from system.values import setting_int

logger = logging.getLogger("courier.worker")
_heartbeat: heartbeats.HeartbeatThread | None = None


def ensure_schema_current() -> None:
    """Exit the process when the database lacks scripts this build ships."""
    try:
        check_schema_current(conninfo_for(), settings.COURIER_SQL_DIR)
    except SchemaBehind as error:
        logger.critical("%s", error)
        print(f"courier: {error}", file=sys.stderr, flush=True)
        # SystemExit passes through Celery's signal dispatch, which logs and swallows Exceptions.
        raise SystemExit(3) from error


@signals.worker_init.connect
def _check_schema_before_start(**_: Any) -> None:
    ensure_schema_current()


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    global _heartbeat
    # Partitions at every worker start, so a long beat outage cannot exhaust them.
    try:
        partitions.ensure_partitions(setting_int("partition.months_ahead", partitions.MINIMUM_MONTHS_AHEAD))
    except Exception:
        logger.exception("could not create monthly partitions at worker start")
    finally:
        connection.close()
    name = heartbeats.process_name("worker", getattr(sender, "hostname", None))
    _heartbeat = heartbeats.HeartbeatThread("worker", name)
    _heartbeat.start()


@signals.worker_shutting_down.connect
def _on_worker_shutting_down(**_: Any) -> None:
    # Marking this worker stopped tells its running executions (in the pool processes)
    # to checkpoint and hand over within a second, instead of running to their end.
    if _heartbeat is not None:
        _heartbeat.stop()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
