"""Monthly partitions of the five history tables: creation ahead of time, retention cutoff and health."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from django.db import connections

from courier_site.errors import ConfigurationError
from system.values import setting_int

PARTITIONED_TABLES = ("job_executions", "step_executions", "monitor_file_log", "audit_log_entries", "domain_events")

# system_settings keys holding each table's retention in months.
RETENTION_SETTINGS = {
    "job_executions": "job.execution_partition_retention_months",
    "step_executions": "job.step_execution_partition_retention_months",
    "monitor_file_log": "monitor.file_log_partition_retention_months",
    "audit_log_entries": "audit.partition_retention_months",
    "domain_events": "events.partition_retention_months",
}
DEFAULT_RETENTION_MONTHS = 12
DEFAULT_OVERDUE_WARNING_MONTHS = 2
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
    # pg_total_relation_size: heap, indexes and TOAST.
    size_bytes: int = 0

    @property
    def month(self) -> str:
        return self.start.strftime("%Y-%m")


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
            SELECT child.relname, pg_get_expr(child.relpartbound, child.oid),
                   coalesce(pg_total_relation_size(child.oid), 0)
            FROM pg_inherits
            JOIN pg_class child ON child.oid = pg_inherits.inhrelid
            WHERE pg_inherits.inhparent = to_regclass(%s)
            """,
            [table],
        )
        rows = cursor.fetchall()
    partitions = []
    for name, bound, size_bytes in rows:
        match = _BOUNDS.search(bound or "")
        if match:
            partitions.append(Partition(name, _as_utc(match.group(1)), _as_utc(match.group(2)), size_bytes))
    return sorted(partitions, key=lambda partition: partition.start)


def _covered(partitions: list[Partition], month: date) -> bool:
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    following = month_start(month, 1)
    end = datetime(following.year, following.month, 1, tzinfo=UTC)
    return any(partition.start <= start and partition.end >= end for partition in partitions)


def table_health(
    table: str,
    *,
    retention_months: int | None,
    overdue_warning_months: int,
    today: date | None = None,
    using: str = "default",
) -> TableHealth:
    """Which of the next months lack a partition and which kept partitions are overdue for archival.

    retention_months None (an unusable setting) skips the overdue check.
    """
    today = today or datetime.now(UTC).date()
    health = TableHealth(table, list_partitions(table, using))
    for offset in range(MINIMUM_MONTHS_AHEAD + 1):
        month = month_start(today, offset)
        if not _covered(health.partitions, month):
            health.missing_months.append(month.strftime("%Y-%m"))
    if retention_months is None:
        return health
    # Expired for longer than the grace period: the weekly archiver should have taken it.
    overdue_cutoff = expiry_cutoff(retention_months + overdue_warning_months, today)
    health.overdue_months = [p.month for p in health.partitions if p.end <= overdue_cutoff]
    return health


def retention_months(table: str, *, using: str = "default") -> int:
    """Months of table's partitions to keep besides the current one, from system_settings.

    A value below 1 would make the current month "expired"; it is refused rather than
    clamped so that a mistyped setting cannot silently change what gets dropped.
    """
    key = RETENTION_SETTINGS[table]
    months = setting_int(key, DEFAULT_RETENTION_MONTHS, using=using)
    if months < 1:
        raise ConfigurationError(f"system setting {key} must be a whole number of months, at least 1, not {months}")
    return months


def expiry_cutoff(retention: int, today: date) -> datetime:
    """Partitions ending on or before this instant are past retention.

    With 12 months' retention on any day of May 2026 the cutoff is 2025-05-01: April 2025
    and older expire, May 2025 to May 2026 (twelve full months and the current one) stay.
    The cutoff is never later than the start of the current month, whatever the setting.
    """
    cutoff = min(month_start(today, -retention), month_start(today))
    return datetime(cutoff.year, cutoff.month, 1, tzinfo=UTC)


def expired_partitions(
    table: str, *, retention: int, today: date | None = None, using: str = "default"
) -> list[Partition]:
    """table's partitions whose whole range ended before the retention cutoff, oldest first."""
    today = today or datetime.now(UTC).date()
    cutoff = expiry_cutoff(retention, today)
    return [partition for partition in list_partitions(table, using) if partition.end <= cutoff]
