"""Health endpoints: /health/ (database, Redis, worker and beat) and /health/partitions."""

from __future__ import annotations

from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from courier_site import heartbeats, partitions
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
    else:
        checks["worker"] = checks["beat"] = {"status": "unknown", "error": "database unavailable"}
    healthy = all(check["status"] == "ok" for check in checks.values())
    return JsonResponse(
        {"status": "healthy" if healthy else "unhealthy", "checks": checks}, status=200 if healthy else 503
    )


def partition_report() -> dict[str, Any]:
    """Per-table partition health: unhealthy when a coming month is missing, warning when archival is overdue."""
    overdue_after = setting_int("partition.archive_overdue_warning_months", 2)
    tables = {}
    for table in partitions.PARTITIONED_TABLES:
        retention = setting_int(partitions.RETENTION_SETTINGS[table], 12)
        health = partitions.table_health(table, retention_months=retention, overdue_warning_months=overdue_after)
        if health.missing_months:
            status = "unhealthy"
        elif health.overdue_months:
            status = "warning"
        else:
            status = "healthy"
        tables[table] = {
            "status": status,
            "partition_count": len(health.partitions),
            "oldest_partition": health.oldest,
            "newest_partition": health.partitions[-1].start.date().isoformat() if health.partitions else None,
            "missing_months": health.missing_months,
            "archive_overdue_months": health.overdue_months,
            "retention_months": retention,
        }
    statuses = {table["status"] for table in tables.values()}
    overall = "unhealthy" if "unhealthy" in statuses else "warning" if "warning" in statuses else "healthy"
    return {"status": overall, "tables": tables}


@never_cache
@require_GET
def health_partitions(request: HttpRequest) -> JsonResponse:
    try:
        report = partition_report()
    except Exception as error:
        return JsonResponse({"status": "unhealthy", "error": type(error).__name__}, status=503)
    return JsonResponse(report, status=503 if report["status"] == "unhealthy" else 200)
