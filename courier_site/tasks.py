"""Platform maintenance tasks run by Celery workers."""

from __future__ import annotations

import logging

from celery import shared_task

from courier_site import partitions
from system.values import setting_int

logger = logging.getLogger(__name__)


@shared_task(name="courier_site.tasks.create_monthly_partitions", acks_late=True, max_retries=3)
def create_monthly_partitions() -> list[str]:
    """Keep partitions of every history table ready for this month and the next ones."""
    months_ahead = setting_int("partition.months_ahead", partitions.MINIMUM_MONTHS_AHEAD)
    months = partitions.ensure_partitions(months_ahead)
    logger.info("monthly partitions ready for %s", ", ".join(months))
    return months
