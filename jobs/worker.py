"""Celery worker hooks of the job engine: crash recovery at start and periodically, warm pool processes.

Connected from JobsConfig.ready(): Celery sets Django up before the worker is ready, so
these handlers are in place for worker_ready and for every pool process it forks.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from django.db import connection

from jobs.engine.recovery import RecoveryLoop, recover_lost_executions
from jobs.steps.base import registered_types
from keystore.pgp import remove_abandoned_homes

logger = logging.getLogger("courier.worker")
_recovery: RecoveryLoop | None = None


def _on_worker_ready(**_: Any) -> None:
    global _recovery
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


def _on_worker_shutdown(**_: Any) -> None:
    if _recovery is not None:
        _recovery.stop()


def _warm_pool_process(**_: Any) -> None:
    # Import every step type (archive libraries included) when a pool process starts,
    # not when its first execution is picked up: pickup latency stays flat.
    registered_types()


def connect() -> None:
    signals.worker_ready.connect(_on_worker_ready, dispatch_uid="courier-jobs-worker-ready", weak=False)
    signals.worker_shutdown.connect(_on_worker_shutdown, dispatch_uid="courier-jobs-worker-shutdown", weak=False)
    signals.worker_process_init.connect(_warm_pool_process, dispatch_uid="courier-jobs-warm-pool", weak=False)
