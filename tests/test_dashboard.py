"""The console's dashboard: figures match the rows, every figure links to the rows behind it, queries stay bounded."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from console import dashboard
from courier_site.partitions import PARTITIONED_TABLES, month_start
from courier_site.roles import OPERATOR, VIEWER
from jobs.models import Job, JobExecution
from keystore.models import PgpKey
from monitors.models import FileMonitor
from system.models import SystemSetting

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def past_partitions() -> None:
    """Partitions for the last three months, so rows can be dated weeks back (migrate only creates ahead)."""
    today = timezone.now().date()
    with connection.cursor() as cursor:
        for offset in (-3, -2, -1):
            cursor.execute("SELECT create_monthly_partitions(%s::date)", [month_start(today, offset)])


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    """The chart caches the days before today; every test counts its own rows."""
    cache.clear()


@pytest.fixture
def as_role(client: Client, django_user_model):
    def login(role: str) -> Client:
        user = django_user_model.objects.create_user(
            username=f"{role.lower()}1", password="pw-long-enough-1", is_staff=True
        )
        user.groups.add(Group.objects.get(name=role))
        client.force_login(user)
        return client

    return login


@pytest.fixture
def job() -> Job:
    return Job.objects.create(name=f"dashboard-job-{uuid.uuid4().hex[:6]}")


def execution(job: Job, state: str, created_at: datetime, **fields: Any) -> JobExecution:
    finished = state in dashboard.OUTCOMES
    return JobExecution.objects.create(
        job=job,
        job_version_number=1,
        triggered_by="schedule",
        state=state,
        created_at=created_at,
        queued_at=fields.pop("queued_at", created_at),
        started_at=created_at if state != "queued" else None,
        completed_at=created_at + timedelta(seconds=30) if finished else None,
        **fields,
    )


def pgp_key(name: str, *, expires_at: datetime | None, status: str = "active") -> PgpKey:
    return PgpKey.objects.create(
        name=name,
        fingerprint=uuid.uuid4().hex + "00000000",
        short_key_id=uuid.uuid4().hex[:16],
        algorithm="ecc_curve25519",
        key_type="public_only",
        status=status,
        public_key_data="-----BEGIN PGP PUBLIC KEY BLOCK-----",
        expires_at=expires_at,
        created_by="admin",
    )


def monitor(state: str) -> FileMonitor:
    return FileMonitor.objects.create(
        name=f"monitor-{uuid.uuid4().hex[:6]}",
        watch_target={"type": "local", "path": "/tmp"},
        trigger_events=1,
        state=state,
    )


def changelist_ids(client: Client, url: str) -> set[str]:
    response = client.get(url)
    assert response.status_code == 200, url
    return {str(row.pk) for row in response.context["cl"].result_list}


# ----------------------------------------------------------------- figures


def test_running_queued_and_failed_counts_match_the_rows(job: Job) -> None:
    now = timezone.now()
    for _ in range(2):
        execution(job, "running", now - timedelta(minutes=5))
    for _ in range(3):
        execution(job, "queued", now - timedelta(minutes=1))
    execution(job, "paused", now - timedelta(hours=3))
    execution(job, "failed", now - timedelta(hours=2))
    execution(job, "failed", now - timedelta(hours=30))
    execution(job, "completed", now - timedelta(hours=1))

    figures = dashboard.execution_figures(now)

    assert (figures["running"], figures["queued"], figures["paused"], figures["failed_last_24h"]) == (2, 3, 1, 1)


def test_executions_older_than_the_active_window_are_not_counted_as_running(job: Job) -> None:
    now = timezone.now()
    execution(job, "running", now - dashboard.ACTIVE_WINDOW - timedelta(days=1))
    execution(job, "running", now - timedelta(days=1))

    assert dashboard.execution_figures(now)["running"] == 1


def test_queue_depth_reports_the_age_of_the_oldest_queued_execution(job: Job) -> None:
    now = timezone.now()
    execution(job, "queued", now - timedelta(minutes=2))
    execution(job, "queued", now - timedelta(minutes=7))

    figures = dashboard.execution_figures(now)

    assert figures["queued"] == 2
    assert figures["oldest_queued_age_seconds"] == pytest.approx(7 * 60, abs=1)


def test_an_empty_queue_has_no_oldest_age() -> None:
    figures = dashboard.execution_figures(timezone.now())

    assert (figures["queued"], figures["oldest_queued_at"], figures["oldest_queued_age_seconds"]) == (0, None, None)


def test_chart_has_fourteen_days_of_outcomes_ending_today(job: Job) -> None:
    now = timezone.now()
    today = timezone.localdate(now)
    three_days_ago = now - timedelta(days=3)
    for _ in range(4):
        execution(job, "completed", three_days_ago)
    execution(job, "failed", three_days_ago)
    execution(job, "cancelled", now - timedelta(days=13))  # the first day of the chart
    execution(job, "running", three_days_ago)  # not an outcome
    execution(job, "completed", now - timedelta(days=15))  # before the chart

    chart = dashboard.execution_chart(now)

    days = [entry["day"] for entry in chart["days"]]
    assert days == [today - timedelta(days=offset) for offset in range(13, -1, -1)]
    by_day = {entry["day"]: entry for entry in chart["days"]}
    bar = by_day[timezone.localdate(three_days_ago)]
    assert (bar["completed"], bar["failed"], bar["cancelled"], bar["total"]) == (4, 1, 0, 5)
    assert chart["totals"] == {"completed": 4, "failed": 1, "cancelled": 1}
    assert chart["max_total"] == 5


def test_todays_bar_counts_new_executions_while_earlier_days_come_from_the_cache(job: Job) -> None:
    now = timezone.now()
    execution(job, "completed", now - timedelta(days=2))
    dashboard.execution_chart(now)
    execution(job, "failed", now)
    execution(job, "completed", now - timedelta(days=2))

    chart = dashboard.execution_chart(now)

    by_day = {entry["day"]: entry for entry in chart["days"]}
    assert by_day[timezone.localdate(now)]["failed"] == 1
    assert by_day[timezone.localdate(now - timedelta(days=2))]["completed"] == 1
    cache.clear()
    assert dashboard.execution_chart(now)["totals"]["completed"] == 2


def test_recent_executions_are_the_ten_newest_with_links_to_their_pages(job: Job) -> None:
    now = timezone.now()
    states = ["completed", "failed", "running", "queued", "cancelled", "paused"]
    created = [execution(job, states[minutes % len(states)], now - timedelta(minutes=minutes)) for minutes in range(14)]

    recent = dashboard.recent_executions(now)

    assert [row["id"] for row in recent] == [row.pk for row in created[:10]]
    assert recent[0]["url"] == reverse("admin:jobs_jobexecution_change", args=[created[0].pk])
    assert recent[0]["job_name"] == job.name


def test_recent_executions_look_back_a_fortnight_on_a_quiet_system(job: Job) -> None:
    now = timezone.now()
    older = execution(job, "failed", now - timedelta(days=5))

    assert [row["id"] for row in dashboard.recent_executions(now)] == [older.pk]


def test_monitors_are_counted_by_state_including_empty_states() -> None:
    for state in ("active", "active", "degraded", "error"):
        monitor(state)

    counts = {row["state"]: row["count"] for row in dashboard.monitors_by_state()}

    assert counts == {"active": 2, "degraded": 1, "paused": 0, "disabled": 0, "error": 1}


def test_expiring_keys_are_the_usable_ones_inside_the_warning_window() -> None:
    SystemSetting.objects.filter(key="key.expiration_warning_days").update(value="20")
    now = timezone.now()
    soon = pgp_key("soon", expires_at=now + timedelta(days=5))
    pgp_key("already expiring", expires_at=now + timedelta(days=19), status="expiring")
    pgp_key("later", expires_at=now + timedelta(days=25))
    pgp_key("lapsed", expires_at=now - timedelta(days=1))
    pgp_key("revoked", expires_at=now + timedelta(days=3), status="revoked")
    pgp_key("forever", expires_at=None)

    keys = dashboard.expiring_keys(now)

    assert keys["warning_days"] == 20
    assert keys["count"] == 2
    assert [key["name"] for key in keys["keys"]] == ["soon", "already expiring"]
    assert keys["keys"][0]["url"] == reverse("admin:keystore_pgpkey_change", args=[soon.pk])


def test_partition_health_lists_every_partitioned_table() -> None:
    health = dashboard.partition_figures()

    assert [row["table"] for row in health["tables"]] == list(PARTITIONED_TABLES)
    assert all(row["partition_count"] >= 3 and row["oldest_partition"] for row in health["tables"])
    assert health["url"] == reverse("health-partitions")


def test_every_execution_query_is_bounded_by_created_at(job: Job) -> None:
    execution(job, "completed", timezone.now())
    with CaptureQueriesContext(connection) as queries:
        dashboard.gather()

    execution_queries = [query["sql"] for query in queries if '"job_executions"' in query["sql"]]
    assert len(execution_queries) >= 3
    for sql in execution_queries:
        assert re.search(r'"job_executions"\."created_at" >= ', sql), sql


def test_no_execution_query_reads_partitions_older_than_its_window(job: Job) -> None:
    now = timezone.now()
    execution(job, "completed", now)
    with CaptureQueriesContext(connection) as queries:
        dashboard.gather(now)
    execution_queries = [query["sql"] for query in queries if '"job_executions"' in query["sql"]]

    three_months_back = f"job_executions_{month_start(now.date(), -3):%Y_%m}"
    with connection.cursor() as cursor:
        for sql in execution_queries:
            cursor.execute(f"EXPLAIN {sql}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert f"job_executions_{now:%Y_%m}" in plan
            assert three_months_back not in plan, plan


# ----------------------------------------------------------------- the page


def test_the_console_index_is_the_dashboard_for_a_viewer(as_role, job: Job) -> None:
    now = timezone.now()
    failed = execution(job, "failed", now - timedelta(hours=1))
    execution(job, "running", now - timedelta(minutes=1))
    monitor("error")

    response = as_role(VIEWER).get(reverse("admin:index"))

    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-figure="failed_last_24h">1<' in page
    assert 'data-figure="running">1<' in page
    assert reverse("admin:jobs_jobexecution_change", args=[failed.pk]) in page
    assert "Partition health" in page
    assert page.count("data-day=") == dashboard.CHART_DAYS


def test_the_dashboard_asks_anonymous_visitors_to_log_in(client: Client) -> None:
    response = client.get(reverse("admin:index"))

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_the_failed_figure_links_to_exactly_the_executions_it_counts(as_role, job: Job) -> None:
    now = timezone.now()
    recent_failure = execution(job, "failed", now - timedelta(hours=2))
    execution(job, "failed", now - timedelta(hours=30))
    execution(job, "completed", now - timedelta(hours=1))
    client = as_role(OPERATOR)

    link = dashboard.gather()["executions"]["links"]["failed_last_24h"]

    assert changelist_ids(client, link) == {str(recent_failure.pk)}


def test_the_running_and_queued_figures_link_to_their_executions(as_role, job: Job) -> None:
    now = timezone.now()
    running = execution(job, "running", now - timedelta(minutes=3))
    queued = execution(job, "queued", now - timedelta(minutes=1))
    client = as_role(VIEWER)

    links = dashboard.gather()["executions"]["links"]

    assert changelist_ids(client, links["running"]) == {str(running.pk)}
    assert changelist_ids(client, links["queued"]) == {str(queued.pk)}


def test_a_chart_bar_links_to_that_days_executions_of_that_outcome(as_role, job: Job) -> None:
    now = timezone.now()
    day = now - timedelta(days=2)
    failures = {str(execution(job, "failed", day).pk) for _ in range(2)}
    execution(job, "completed", day)
    execution(job, "failed", now - timedelta(days=4))
    client = as_role(VIEWER)

    bar = next(entry for entry in dashboard.gather()["chart"]["days"] if entry["day"] == timezone.localdate(day))

    assert changelist_ids(client, bar["links"]["failed"]) == failures
    assert len(changelist_ids(client, bar["links"]["all"])) == 3


def test_monitor_and_key_figures_link_to_the_filtered_lists(as_role) -> None:
    errored = monitor("error")
    monitor("active")
    soon = pgp_key("soon", expires_at=timezone.now() + timedelta(days=3))
    pgp_key("later", expires_at=timezone.now() + timedelta(days=300))
    client = as_role(VIEWER)
    figures = dashboard.gather()

    error_row = next(row for row in figures["monitors"] if row["state"] == "error")

    assert changelist_ids(client, error_row["url"]) == {str(errored.pk)}
    assert changelist_ids(client, figures["expiring_keys"]["url"]) == {str(soon.pk)}
