"""Console lists: coloured state badges, last and next run on the job list at a fixed query count, failed in 24 h."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from courier_site.badges import state_badge
from courier_site.roles import VIEWER
from jobs.models import ChainExecution, JobChain, JobExecution, JobSchedule
from keystore.models import PgpKey, SshKey
from monitors.models import FileMonitor
from tests.engine_support import make_job

pytestmark = pytest.mark.django_db

STEPS = [("flow.foreach", {"source": ["a"]}), ("flow.end", {})]


@pytest.fixture
def viewer(client: Client, django_user_model) -> Client:
    user = django_user_model.objects.create_user(username="viewer1", password="pw-long-enough-1", is_staff=True)
    user.groups.add(Group.objects.get(name=VIEWER))
    client.force_login(user)
    return client


def execution(job, state: str, age: timedelta) -> JobExecution:
    row = JobExecution.objects.create(job=job, job_version_number=1, triggered_by="schedule", state=state)
    JobExecution.objects.filter(pk=row.pk).update(created_at=timezone.now() - age)
    return JobExecution.objects.get(pk=row.pk)


def jobs_with_history(count: int) -> list:
    jobs = []
    for number in range(count):
        job = make_job(STEPS, name=f"job {number:02d}")
        execution(job, "completed", timedelta(hours=3))
        execution(job, "failed", timedelta(hours=1))
        JobSchedule.objects.create(
            job=job, cron_expression="0 2 * * *", next_fire_at=timezone.now() + timedelta(hours=5)
        )
        jobs.append(job)
    return jobs


def row_of(page: str, name: str) -> str:
    start = page.index(f">{name}<")
    return page[start : page.index("</tr>", start)]


def test_the_job_list_shows_the_last_run_state_and_time_and_the_next_run(viewer: Client) -> None:
    job = make_job(STEPS, name="ACME invoices")
    execution(job, "completed", timedelta(hours=3))
    newest = execution(job, "failed", timedelta(hours=1))
    next_fire = timezone.now() + timedelta(hours=5)
    JobSchedule.objects.create(job=job, cron_expression="0 2 * * *", next_fire_at=next_fire)
    JobSchedule.objects.create(
        job=job, cron_expression="0 1 * * *", is_enabled=False, next_fire_at=timezone.now() + timedelta(hours=1)
    )
    make_job(STEPS, name="Never run")

    page = viewer.get(reverse("admin:jobs_job_changelist")).content.decode()

    row = row_of(page, "ACME invoices")
    assert 'data-state="failed"' in row and 'data-state="completed"' not in row
    assert reverse("admin:jobs_jobexecution_change", args=[newest.pk]) in row
    assert timezone.localtime(newest.created_at).strftime("%Y-%m-%d %H:%M") in row
    assert timezone.localtime(next_fire).strftime("%Y-%m-%d %H:%M") in row  # the disabled schedule is not next
    assert "never run" in row_of(page, "Never run")


def test_the_job_list_costs_the_same_queries_for_two_jobs_as_for_twelve(viewer: Client) -> None:
    url = reverse("admin:jobs_job_changelist")
    jobs_with_history(2)
    viewer.get(url)  # warm up session and content type caches
    with CaptureQueriesContext(connection) as two:
        viewer.get(url)
    jobs_with_history(10)
    with CaptureQueriesContext(connection) as twelve:
        page = viewer.get(url).content.decode()

    assert page.count('data-state="failed"') == 12
    assert len(twelve) == len(two)


def test_the_job_list_sorts_by_last_run(viewer: Client) -> None:
    older, newer = make_job(STEPS, name="older"), make_job(STEPS, name="newer")
    execution(older, "completed", timedelta(days=2))
    execution(newer, "completed", timedelta(hours=2))
    listing = viewer.get(reverse("admin:jobs_job_changelist"))
    position = listing.context["cl"].list_display.index("last_run")

    page = viewer.get(f"{reverse('admin:jobs_job_changelist')}?o=-{position}").content.decode()

    assert page.index(">newer<") < page.index(">older<")


def test_chain_executions_monitors_and_keys_are_listed_with_state_badges(viewer: Client) -> None:
    chain = JobChain.objects.create(name="nightly")
    ChainExecution.objects.create(chain=chain, triggered_by="schedule", state="failed")
    FileMonitor.objects.create(name="inbox", watch_target={"path": "/tmp"}, trigger_events=1, state="degraded")
    PgpKey.objects.create(
        name="acme",
        fingerprint="B" * 40,
        short_key_id="B" * 16,
        algorithm="rsa_3072",
        key_type="public_only",
        status="expiring",
        public_key_data="-----BEGIN PGP PUBLIC KEY BLOCK-----",
        created_by="tester",
    )
    SshKey.objects.create(
        name="partner",
        key_type="ed25519",
        public_key_data="ssh-ed25519 AAAA x",
        private_key_data=b"sealed",
        fingerprint="SHA256:x",
        status="retired",
        created_by="tester",
    )

    for list_name, state in (
        ("jobs_chainexecution", "failed"),
        ("monitors_filemonitor", "degraded"),
        ("keystore_pgpkey", "expiring"),
        ("keystore_sshkey", "retired"),
    ):
        page = viewer.get(reverse(f"admin:{list_name}_changelist")).content.decode()
        assert f'class="courier-state" data-state="{state}"' in page, list_name


def test_a_badge_is_coloured_by_state() -> None:
    assert "bg-red-100" in state_badge("failed")
    assert "bg-green-100" in state_badge("completed")
    assert "bg-blue-100" in state_badge("running")
    assert "bg-orange-100" in state_badge("paused")


def test_failed_in_24_hours_is_one_click_from_the_dashboard(viewer: Client) -> None:
    job = make_job(STEPS, name="ACME invoices")
    recent = execution(job, "failed", timedelta(hours=2))
    old = execution(job, "failed", timedelta(hours=30))
    execution(job, "completed", timedelta(hours=1))

    dashboard = viewer.get(reverse("admin:index")).content.decode()
    link = re.search(r'href="([^"]+)" id="courier-failed-24h"', dashboard).group(1).replace("&amp;", "&")
    failed_list = viewer.get(link).content.decode()

    assert str(recent.pk)[:8] in failed_list
    assert str(old.pk)[:8] not in failed_list
    assert 'data-state="completed"' not in failed_list
