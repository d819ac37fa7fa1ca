"""Platform maintenance tasks run by Celery workers."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import DatabaseError, transaction

from audit.models import AuditLogEntry
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


PARTITION_MISSING = "partition_missing"
PARTITIONS_READY = "partitions_ready"


def _partition_entity(table: str) -> str:
    return f"partitions:{table}"


@shared_task(name="courier_site.tasks.check_partitions", acks_late=True, ignore_result=True)
def check_partitions() -> dict[str, list[str]]:
    """Hourly: make missing partitions, and tell (event PartitionMissing) of a table still lacking one.

    A table that lacked one and is whole again is recorded as PartitionsReady, which ends the
    failing streak of quiet notification rules.
    """
    months_ahead = setting_int("partition.months_ahead", partitions.MINIMUM_MONTHS_AHEAD)
    try:
        partitions.ensure_partitions(months_ahead)
    except Exception:  # the check below tells which table is still short
        logger.exception("creating the coming monthly partitions failed")
    missing: dict[str, list[str]] = {}
    for table in partitions.PARTITIONED_TABLES:
        months = partitions.table_health(table, retention_months=None, overdue_warning_months=0).missing_months
        entity = _partition_entity(table)
        last = (
            AuditLogEntry.objects.for_entity("system", entity)
            .filter(operation__in=(PARTITION_MISSING, PARTITIONS_READY))
            .values_list("operation", flat=True)
            .first()
        )
        if months:
            missing[table] = months
        try:
            _record_partition_state(table, entity, months, last)
        except DatabaseError:  # the audit or event table itself lacks this month: the log must do
            logger.exception("could not record the partition state of %s", table)
    return missing


def _record_partition_state(table: str, entity: str, months: list[str], last: str | None) -> None:
    if months:
        logger.error("[E1004] %s has no partition for %s", table, ", ".join(months))
        with transaction.atomic():
            AuditLogEntry.objects.record(
                entity_type="system",
                entity_id=entity,
                operation=PARTITION_MISSING,
                performed_by="beat",
                details={
                    "table": table,
                    "missing_months": months,
                    "error": f"[E1004] {table} has no partition for {', '.join(months)}: inserts for those "
                    "months fail until `manage.py partitions create` succeeds",
                },
                event_type="PartitionMissing",
            )
    elif last == PARTITION_MISSING:
        with transaction.atomic():
            AuditLogEntry.objects.record(
                entity_type="system",
                entity_id=entity,
                operation=PARTITIONS_READY,
                performed_by="beat",
                details={"table": table},
                event_type="PartitionsReady",
            )


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
