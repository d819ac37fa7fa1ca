"""/health/ and /health/partitions as a load balancer or monitoring system sees them."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client

from courier_site import heartbeats

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
