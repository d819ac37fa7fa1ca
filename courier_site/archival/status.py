"""Export status per table (last archived month, last failure), read from the audit log."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from audit.models import AuditLogEntry
from audit.querysets import entity_uuid
from courier_site import partitions
from courier_site.archival.service import ARCHIVE_FAILED, ARCHIVED, audit_entity


@dataclass
class ExportStatus:
    """The latest archive outcome of one table, read from the audit log."""

    table: str
    last_archived_month: str | None = None
    last_archived_at: datetime | None = None
    last_failed_month: str | None = None
    last_failed_at: datetime | None = None
    last_error: str | None = None

    @property
    def state(self) -> str:
        """failed when the newest outcome is a failure, ok after a success, never before either."""
        if self.last_failed_at is None:
            return "ok" if self.last_archived_at else "never"
        if self.last_archived_at is None or self.last_failed_at > self.last_archived_at:
            return "failed"
        # Audit rows carry their transaction's start time, so outcomes written in one
        # transaction tie; months go oldest first, so a failure at or after the last
        # archived month is the newer outcome.
        if self.last_failed_at == self.last_archived_at:
            return "failed" if (self.last_failed_month or "") >= (self.last_archived_month or "") else "ok"
        return "ok"


def export_status(
    tables: Iterable[str] = partitions.PARTITIONED_TABLES, using: str = "default"
) -> dict[str, ExportStatus]:
    """Last archived month and last failure per table (one query on ix_audit_entity)."""
    tables = tuple(tables)
    entities = {entity_uuid(audit_entity(table)): table for table in tables}
    statuses = {table: ExportStatus(table) for table in tables}
    latest = (
        AuditLogEntry.objects.using(using)
        .filter(
            entity_type=AuditLogEntry.EntityType.SYSTEM,
            entity_id__in=list(entities),
            operation__in=(ARCHIVED, ARCHIVE_FAILED),
        )
        .order_by("entity_id", "operation", "-performed_at")
        .distinct("entity_id", "operation")
        .values_list("entity_id", "operation", "performed_at", "details")
    )
    for entity_id, operation, performed_at, details in latest:
        status = statuses[entities[entity_id]]
        details = details or {}
        if operation == ARCHIVED:
            status.last_archived_month, status.last_archived_at = details.get("month"), performed_at
        else:
            status.last_failed_month, status.last_failed_at = details.get("month"), performed_at
            status.last_error = details.get("error")
    return statuses
