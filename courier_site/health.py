"""Health endpoints: /health/ (database, Redis, worker and beat) and /health/partitions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from audit import relay
from courier_site import heartbeats, partitions
from courier_site.archival import ExportStatus, export_status
from courier_site.errors import ConfigurationError
from system.values import setting_int


def _check_database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"status": "ok"}
    except Exception as error:  # report, never raise: this is the health page
        return {"status": "fail", "error": type(error).__name__}


def _check_redis() -> dict[str, Any]:
    try:
        client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        return {"status": "ok"}
    except Exception as error:
        return {"status": "fail", "error": type(error).__name__}


# Oldest unprocessed domain event older than this: the relay is not keeping up (or not running),
# so notifications are late; /health/ turns unhealthy.
RELAY_LAG_WARNING_SECONDS = 120


def _check_relay() -> dict[str, Any]:
    try:
        figures = relay.lag()
    except Exception as error:
        return {"status": "fail", "error": type(error).__name__}
    if figures["lag_seconds"] > RELAY_LAG_WARNING_SECONDS:
        return {
            "status": "fail",
            "error": f"the oldest unprocessed event waits for {figures['lag_seconds']:.0f} s "
            f"(more than {RELAY_LAG_WARNING_SECONDS} s): is the clock worker running?",
            **figures,
        }
    return {"status": "ok", **figures}


def _check_heartbeat(kind: str) -> dict[str, Any]:
    try:
        latest = heartbeats.newest(kind)
    except Exception as error:
        return {"status": "fail", "error": type(error).__name__}
    if latest is None:
        return {"status": "fail", "error": f"no {kind} has reported a heartbeat"}
    name, age = latest
    result = {"process": name, "age_seconds": round(age.total_seconds(), 1)}
    if heartbeats.is_fresh(age):
        return {"status": "ok", **result}
    return {
        "status": "fail",
        "error": f"last {kind} heartbeat is older than {settings.COURIER_HEARTBEAT_TIMEOUT} s",
        **result,
    }


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check_database(), "redis": _check_redis()}
    if checks["database"]["status"] == "ok":
        checks["worker"] = _check_heartbeat("worker")
        checks["beat"] = _check_heartbeat("beat")
        checks["event_relay"] = _check_relay()
    else:
        checks["worker"] = checks["beat"] = checks["event_relay"] = {
            "status": "unknown",
            "error": "database unavailable",
        }
    healthy = all(check["status"] == "ok" for check in checks.values())
    return JsonResponse(
        {"status": "healthy" if healthy else "unhealthy", "checks": checks}, status=200 if healthy else 503
    )


@dataclass
class TablePartitionHealth:
    """One history table's partitions as the console and /health/partitions show them."""

    table: str
    # healthy | warning (archival overdue or failing, unusable retention setting) | unhealthy (a coming month missing)
    status: str
    partition_count: int
    size_bytes: int  # pg_total_relation_size summed over the partitions
    oldest_partition: str | None  # first day of the oldest partition's range, ISO date
    newest_partition: str | None
    missing_months: list[str]
    archive_overdue_months: list[str]
    retention_months: int | None  # None when the setting is unusable (see problem)
    export: ExportStatus
    problem: str | None = None


def partition_health(*, today: date | None = None, using: str = "default") -> list[TablePartitionHealth]:
    """Partition health of every partitioned table, for dashboards and /health/partitions.

    Cheap enough for a page view: catalog reads per table and one indexed audit query.
    """
    overdue_after = setting_int(
        "partition.archive_overdue_warning_months", partitions.DEFAULT_OVERDUE_WARNING_MONTHS, using=using
    )
    exports = export_status(partitions.PARTITIONED_TABLES, using=using)
    tables = []
    for table in partitions.PARTITIONED_TABLES:
        problem = None
        try:
            retention: int | None = partitions.retention_months(table, using=using)
        except ConfigurationError as error:
            retention, problem = None, str(error)
        health = partitions.table_health(
            table, retention_months=retention, overdue_warning_months=overdue_after, today=today, using=using
        )
        export = exports[table]
        if health.missing_months:
            status = "unhealthy"
        elif health.overdue_months or problem or export.state == "failed":
            # A failing export warns at once, before the months it keeps become overdue.
            status = "warning"
        else:
            status = "healthy"
        tables.append(
            TablePartitionHealth(
                table=table,
                status=status,
                partition_count=len(health.partitions),
                size_bytes=sum(partition.size_bytes for partition in health.partitions),
                oldest_partition=health.oldest,
                newest_partition=health.partitions[-1].start.date().isoformat() if health.partitions else None,
                missing_months=health.missing_months,
                archive_overdue_months=health.overdue_months,
                retention_months=retention,
                export=export,
                problem=problem,
            )
        )
    return tables


def overall_status(tables: list[TablePartitionHealth]) -> str:
    statuses = {table.status for table in tables}
    return "unhealthy" if "unhealthy" in statuses else "warning" if "warning" in statuses else "healthy"


def partition_report() -> dict[str, Any]:
    """Per-table partition health: unhealthy when a coming month is missing, warning when archival is overdue.

    Archive error messages (paths, storage errors) stay out of this public report; the
    console and `manage.py partitions status` show them.
    """
    tables = partition_health()
    return {
        "status": overall_status(tables),
        "tables": {
            table.table: {
                "status": table.status,
                "partition_count": table.partition_count,
                "size_bytes": table.size_bytes,
                "oldest_partition": table.oldest_partition,
                "newest_partition": table.newest_partition,
                "missing_months": table.missing_months,
                "archive_overdue_months": table.archive_overdue_months,
                "retention_months": table.retention_months,
                "export_status": table.export.state,
                "last_archived_month": table.export.last_archived_month,
                **({"error": table.problem} if table.problem else {}),
            }
            for table in tables
        },
    }


@never_cache
@require_GET
def health_partitions(request: HttpRequest) -> JsonResponse:
    try:
        report = partition_report()
    except Exception as error:
        return JsonResponse({"status": "unhealthy", "error": type(error).__name__}, status=503)
    return JsonResponse(report, status=503 if report["status"] == "unhealthy" else 200)
