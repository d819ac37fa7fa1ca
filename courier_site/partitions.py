"""Monthly partitions of the five history tables: creation ahead of time and health."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from django.db import connections

PARTITIONED_TABLES = ("job_executions", "step_executions", "monitor_file_log", "audit_log_entries", "domain_events")

# system_settings keys holding each table's retention in months.
RETENTION_SETTINGS = {
    "job_executions": "job.execution_partition_retention_months",
    "step_executions": "job.step_execution_partition_retention_months",
    "monitor_file_log": "monitor.file_log_partition_retention_months",
    "audit_log_entries": "audit.partition_retention_months",
    "domain_events": "events.partition_retention_months",
}
MINIMUM_MONTHS_AHEAD = 2
_BOUNDS = re.compile(r"FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)")


def month_start(day: date, offset: int = 0) -> date:
    """First day of the month `offset` months after day's month."""
    index = day.year * 12 + (day.month - 1) + offset
    return date(index // 12, index % 12 + 1, 1)


def _as_utc(value: str) -> datetime:
    # PostgreSQL prints timestamptz bounds like '2026-11-01 00:00:00+00'.
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class Partition:
    name: str
    start: datetime
    end: datetime


@dataclass
class TableHealth:
    table: str
    partitions: list[Partition] = field(default_factory=list)
    missing_months: list[str] = field(default_factory=list)
    overdue_months: list[str] = field(default_factory=list)

    @property
    def oldest(self) -> str | None:
        return self.partitions[0].start.date().isoformat() if self.partitions else None


def ensure_partitions(
    months_ahead: int = MINIMUM_MONTHS_AHEAD, *, today: date | None = None, using: str = "default"
) -> list[str]:
    """Create the partitions of the current month and the next months_ahead; return the months covered."""
    today = today or datetime.now(UTC).date()
    months = [month_start(today, offset) for offset in range(max(months_ahead, MINIMUM_MONTHS_AHEAD) + 1)]
    with connections[using].cursor() as cursor:
        # Bounds are dates cast to timestamptz in the session zone; Django's sessions run
        # in UTC (USE_TZ), so month boundaries are UTC midnights.
        for month in months:
            cursor.execute("SELECT create_monthly_partitions(%s::date)", [month])
    return [month.strftime("%Y-%m") for month in months]


def list_partitions(table: str, using: str = "default") -> list[Partition]:
    """Partitions attached to table, oldest first (a DEFAULT partition is ignored)."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            """
            SELECT child.relname, pg_get_expr(child.relpartbound, child.oid)
            FROM pg_inherits
            JOIN pg_class child ON child.oid = pg_inherits.inhrelid
            WHERE pg_inherits.inhparent = to_regclass(%s)
            """,
            [table],
        )
        rows = cursor.fetchall()
    partitions = []
    for name, bound in rows:
        match = _BOUNDS.search(bound or "")
        if match:
            partitions.append(Partition(name, _as_utc(match.group(1)), _as_utc(match.group(2))))
    return sorted(partitions, key=lambda partition: partition.start)


def _covered(partitions: list[Partition], month: date) -> bool:
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    following = month_start(month, 1)
    end = datetime(following.year, following.month, 1, tzinfo=UTC)
    return any(partition.start <= start and partition.end >= end for partition in partitions)


def table_health(
    table: str,
    *,
    retention_months: int,
    overdue_warning_months: int,
    today: date | None = None,
    using: str = "default",
) -> TableHealth:
    """Which of the next months lack a partition and which kept partitions are overdue for archival."""
    today = today or datetime.now(UTC).date()
    health = TableHealth(table, list_partitions(table, using))
    for offset in range(MINIMUM_MONTHS_AHEAD + 1):
        month = month_start(today, offset)
        if not _covered(health.partitions, month):
            health.missing_months.append(month.strftime("%Y-%m"))
    # A partition whose whole month ended before this cutoff should have been archived.
    cutoff = month_start(today, -(retention_months + overdue_warning_months))
    cutoff_at = datetime(cutoff.year, cutoff.month, 1, tzinfo=UTC)
    health.overdue_months = [p.start.strftime("%Y-%m") for p in health.partitions if p.end <= cutoff_at]
    return health
