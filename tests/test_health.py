"""/health/ and /health/partitions as a load balancer or monitoring system sees them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client

from courier_site import archival, heartbeats
from courier_site.archive_storage import LocalDirectoryStorage
from courier_site.health import partition_health
from courier_site.partitions import month_start

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_heartbeats() -> None:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM process_heartbeats")


def test_health_is_unavailable_without_worker_and_beat(client: Client) -> None:
    response = client.get("/health/")
    body = response.json()
    assert response.status_code == 503
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["redis"]["status"] == "ok"
    assert body["checks"]["worker"]["status"] == "fail"
    assert body["checks"]["beat"]["status"] == "fail"


def test_health_is_ok_with_fresh_heartbeats(client: Client) -> None:
    heartbeats.beat("worker", "worker@test")
    heartbeats.beat("beat", "beat@test")

    response = client.get("/health/")

    assert response.status_code == 200
    assert response.json()["status"] == "healthy"
    assert response.json()["checks"]["worker"]["process"] == "worker@test"


def test_an_expired_heartbeat_makes_health_fail(client: Client, settings) -> None:
    heartbeats.beat("worker", "worker@test")
    heartbeats.beat("beat", "beat@test")
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE process_heartbeats SET last_seen_at = now() - interval '5 minutes' WHERE kind = 'worker'"
        )

    response = client.get("/health/")

    assert response.status_code == 503
    assert "older than" in response.json()["checks"]["worker"]["error"]


def test_unreachable_redis_fails_without_leaking_the_broker_password(client: Client, settings) -> None:
    heartbeats.beat("worker", "worker@test")
    heartbeats.beat("beat", "beat@test")
    settings.CELERY_BROKER_URL = "redis://:very-secret-broker-password@127.0.0.1:1/0"

    response = client.get("/health/")

    assert response.status_code == 503
    assert response.json()["checks"]["redis"]["status"] == "fail"
    assert b"very-secret-broker-password" not in response.content


def test_partitions_are_healthy_after_migrate(client: Client) -> None:
    response = client.get("/health/partitions")
    body = response.json()
    assert response.status_code == 200 and body["status"] == "healthy"
    assert set(body["tables"]) == {
        "job_executions",
        "step_executions",
        "monitor_file_log",
        "audit_log_entries",
        "domain_events",
    }
    assert all(table["partition_count"] >= 3 for table in body["tables"].values())


def test_a_missing_coming_month_is_unhealthy_and_named(client: Client) -> None:
    from datetime import date

    from courier_site.partitions import month_start

    month = month_start(date.today(), 2).strftime("%Y_%m")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE step_executions_{month}")  # rolled back with the test transaction

    response = client.get("/health/partitions")

    assert response.status_code == 503
    table = response.json()["tables"]["step_executions"]
    assert table["status"] == "unhealthy"
    assert table["missing_months"] == [month.replace("_", "-")]


def test_partitions_kept_past_retention_give_a_warning(client: Client) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE audit_log_entries_2020_01 PARTITION OF audit_log_entries "
            "FOR VALUES FROM ('2020-01-01') TO ('2020-02-01')"
        )

    response = client.get("/health/partitions")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "warning"
    assert body["tables"]["audit_log_entries"]["archive_overdue_months"] == ["2020-01"]
    assert body["tables"]["audit_log_entries"]["oldest_partition"] == "2020-01-01"


def _create_month(offset: int) -> str:
    """Partitions of every table for the month offset months from this one; returns 'YYYY-MM'."""
    first_day = month_start(datetime.now(UTC).date(), offset)
    with connection.cursor() as cursor:
        cursor.execute("SELECT create_monthly_partitions(%s::date)", [first_day])
    return first_day.strftime("%Y-%m")


def test_an_expired_month_only_warns_once_the_grace_months_have_passed(client: Client) -> None:
    # Twelve months' retention plus two months' grace (the shipped settings).
    within_grace = _create_month(-14)
    overdue = _create_month(-15)

    body = client.get("/health/partitions").json()

    table = body["tables"]["job_executions"]
    assert body["status"] == "warning"
    assert table["archive_overdue_months"] == [overdue]
    assert within_grace not in table["archive_overdue_months"]
    # monitor_file_log keeps six months: both months are overdue there.
    assert body["tables"]["monitor_file_log"]["archive_overdue_months"] == [overdue, within_grace]


def test_the_overdue_grace_period_comes_from_system_settings(client: Client) -> None:
    _create_month(-15)
    with connection.cursor() as cursor:
        cursor.execute("UPDATE system_settings SET value = '3' WHERE key = 'partition.archive_overdue_warning_months'")

    body = client.get("/health/partitions").json()

    assert body["tables"]["job_executions"]["status"] == "healthy"
    assert body["tables"]["monitor_file_log"]["status"] == "warning"


def test_health_partitions_reports_size_and_export_status(client: Client) -> None:
    table = client.get("/health/partitions").json()["tables"]["domain_events"]

    assert table["size_bytes"] > 0
    assert table["export_status"] == "never"
    assert table["last_archived_month"] is None


def test_a_failing_export_warns_without_publishing_its_error(client: Client, tmp_path: Path) -> None:
    blocker = tmp_path / "archive-is-a-file"
    blocker.write_text("")
    _create_month(-14)
    archival.archive_expired_partitions(["step_executions"], dry_run=False, storage=LocalDirectoryStorage(blocker))

    response = client.get("/health/partitions")

    table = response.json()["tables"]["step_executions"]
    assert response.status_code == 200
    assert (table["status"], table["export_status"]) == ("warning", "failed")
    assert str(tmp_path).encode() not in response.content
    assert b"E1020" not in response.content


def test_an_unusable_retention_setting_makes_the_table_warn(client: Client) -> None:
    with connection.cursor() as cursor:
        cursor.execute("UPDATE system_settings SET value = '0' WHERE key = 'audit.partition_retention_months'")

    table = client.get("/health/partitions").json()["tables"]["audit_log_entries"]

    assert table["status"] == "warning"
    assert table["retention_months"] is None
    assert table["error"].startswith("[E1005] system setting audit.partition_retention_months")


def test_partition_health_summarises_each_table_for_the_dashboard(tmp_path: Path) -> None:
    archived = _create_month(-13)
    kept = _create_month(-12)
    archival.archive_expired_partitions(["audit_log_entries"], dry_run=False, storage=LocalDirectoryStorage(tmp_path))

    tables = {table.table: table for table in partition_health()}

    audit = tables["audit_log_entries"]
    assert set(tables) == {
        "job_executions",
        "step_executions",
        "monitor_file_log",
        "audit_log_entries",
        "domain_events",
    }
    assert audit.status == "healthy"
    assert audit.oldest_partition == f"{kept}-01"
    assert audit.partition_count == 4
    assert audit.size_bytes > 0
    assert (audit.export.state, audit.export.last_archived_month) == ("ok", archived)
    assert tables["job_executions"].oldest_partition == f"{archived}-01"
    assert tables["job_executions"].export.state == "never"
