"""Celery tasks of file monitors; thin callers of monitors.services."""

from __future__ import annotations

import logging

from celery import shared_task

from monitors import services

logger = logging.getLogger(__name__)


# Runs on the control queue every 2 s: cheap (one indexed claim), and it lets a local
# file that became stable between regular scans trigger within its stability window.
@shared_task(name="monitors.poll_due_monitors", acks_late=False, ignore_result=True, expires=10)
def poll_due_monitors() -> int:
    """Claim the monitors whose scan is due and poll each in a task of its own."""
    services.degrade_unwatched()
    claimed = services.claim_due()
    for monitor_id in claimed:
        poll_monitor.delay(monitor_id)
    return len(claimed)


# A poll lists a directory (remote ones over SFTP/FTP): bounded by the connection's
# timeouts, so a soft limit well above them catches a hung server.
@shared_task(name="monitors.poll_monitor", acks_late=True, ignore_result=True, soft_time_limit=600, time_limit=660)
def poll_monitor(monitor_id: str) -> str:
    result = services.poll(monitor_id)
    if result.triggered:
        logger.info(
            "monitor %s: %d file(s) triggered %d execution(s)",
            monitor_id,
            len(result.triggered),
            len(result.executions),
        )
    return result.outcome


@shared_task(name="monitors.prune_file_log", acks_late=True, ignore_result=True)
def prune_file_log() -> int:
    deleted = services.prune_file_log()
    logger.info("pruned %d monitor file log rows", deleted)
    return deleted
