"""Celery worker hooks: refuse to start on a schema that is behind, keep partitions ready, heartbeat, recovery."""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import signals
from django.conf import settings

from courier_site.errors import SchemaBehind

logger = logging.getLogger("courier.worker")
_heartbeat: Any = None
_recovery: Any = None


def ensure_schema_current() -> None:
    """Exit the process when the database lacks scripts this build ships."""
    from courier_site.db import conninfo_for
    from courier_site.sqlmigrations import check_schema_current

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
    global _heartbeat, _recovery
    from django.db import connection

    from courier_site import heartbeats, partitions
    from jobs.engine.recovery import RecoveryLoop, recover_lost_executions
    from keystore.pgp import remove_abandoned_homes
    from system.values import setting_int

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
    # Executions left running by a worker that died are recovered at every worker start,
    # and again periodically: the dead worker's heartbeat may not have expired yet.
    try:
        recover_lost_executions()
        remove_abandoned_homes()  # GnuPG homes (secret keys, agents) of processes killed outright
    except Exception:
        logger.exception("could not recover lost executions at worker start")
    finally:
        connection.close()
    _recovery = RecoveryLoop(extra=remove_abandoned_homes)
    _recovery.start()


@signals.worker_shutting_down.connect
def _on_worker_shutting_down(**_: Any) -> None:
    # Marking this worker stopped tells its running executions (in the pool processes)
    # to checkpoint and hand over within a second, instead of running to their end.
    if _heartbeat is not None:
        _heartbeat.stop()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    if _recovery is not None:
        _recovery.stop()
    if _heartbeat is not None:
        _heartbeat.stop()


@signals.worker_process_init.connect
def _warm_pool_process(**_: Any) -> None:
    # Import every step type (archive libraries included) when a pool process starts,
    # not when its first execution is picked up: pickup latency stays flat.
    from jobs.steps.base import registered_types

    registered_types()
