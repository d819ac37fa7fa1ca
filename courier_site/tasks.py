"""Platform maintenance tasks run by Celery workers."""

from __future__ import annotations

import logging

from celery import shared_task

from courier_site import archival, partitions
from system.values import setting_int

logger = logging.getLogger(__name__)


@shared_task(name="courier_site.tasks.create_monthly_partitions", acks_late=True, max_retries=3)
def create_monthly_partitions() -> list[str]:
    """Keep partitions of every history table ready for this month and the next ones."""
    months_ahead = setting_int("partition.months_ahead", partitions.MINIMUM_MONTHS_AHEAD)
    months = partitions.ensure_partitions(months_ahead)
    logger.info("monthly partitions ready for %s", ", ".join(months))
    return months


# Catching up months of big tables takes a while; the soft limit interrupts an export
# cleanly (its partition is kept, audited, and taken again next week). Both stay below
# CELERY_VISIBILITY_TIMEOUT so that Redis does not hand the task to a second worker
# while the first is still exporting (the advisory lock would turn it away anyway).
ARCHIVE_SOFT_TIME_LIMIT = 4 * 3600


@shared_task(
    name="courier_site.tasks.archive_expired_partitions",
    acks_late=True,
    ignore_result=True,
    # No retries: a failed month is recorded and the next weekly run catches up.
    max_retries=0,
    soft_time_limit=ARCHIVE_SOFT_TIME_LIMIT,
    time_limit=ARCHIVE_SOFT_TIME_LIMIT + 300,
)
def archive_expired_partitions() -> dict[str, int]:
    """Export, verify and drop the partitions past retention of every history table (SPEC 3)."""
    run = archival.archive_expired_partitions(dry_run=False, performed_by="beat")
    log = logger.info if run.ok else logger.error
    log("partition archival: %s", run.summary())
    return {
        "archived": len(run.with_status("archived")),
        "failed": len(run.with_status("failed")),
        "kept": len(run.with_status("kept")),
        "busy": int(run.busy),
    }
