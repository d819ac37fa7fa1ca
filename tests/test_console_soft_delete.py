"""Deleting from the console keeps the row for history (flagged deleted, gone from every list) and records who
deleted it in the audit log, one record per row, for single and bulk deletes alike."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from audit.models import AuditLogEntry
from connections.models import Connection
from courier_site.roles import ADMIN
from jobs.engine import control
from jobs.models import JobChain, JobExecution, JobStep, JobVersion
from monitors.models import FileMonitor
from tags.models import Tag
from tests.engine_support import make_job

pytestmark = pytest.mark.django_db

ROWS = {
    "jobs.job": ("job", lambda name: make_job([("test.write", {"name": "a"})], name=name)),
    "jobs.jobchain": ("chain", lambda name: JobChain.objects.create(name=name)),
    "connections.connection": (
        "connection",
        lambda name: Connection.objects.create(
            name=name, protocol="sftp", host="127.0.0.1", port=22, auth_method="password", username="u"
        ),
    ),
    "monitors.filemonitor": (
        "file_monitor",
        lambda name: FileMonitor.objects.create(
            name=name, watch_target={"type": "local", "path": "/tmp"}, trigger_events=1
        ),
    ),
    "tags.tag": ("tag", lambda name: Tag.objects.create(name=name)),
}


@pytest.fixture
def admin_client(client: Client, django_user_model: Any) -> Client:
    user = django_user_model.objects.create_user(username="ada", password="pw-long-enough-1", is_staff=True)
    user.groups.add(Group.objects.get(name=ADMIN))
    client.force_login(user)
    return client


def deletions(entity_type: str, row: Any) -> list[tuple[str, dict[str, Any]]]:
    found = AuditLogEntry.objects.filter(entity_type=entity_type, entity_id=row.pk, operation="deleted")
    return list(found.values_list("performed_by", "details"))


@pytest.mark.parametrize("model_label", list(ROWS))
def test_deleting_one_row_keeps_it_flagged_and_audits_who_did_it(admin_client: Client, model_label: str) -> None:
    entity_type, make = ROWS[model_label]
    row = make("ACME nightly")
    model = type(row)
    app, name = model_label.split(".")

    response = admin_client.post(reverse(f"admin:{app}_{name}_delete", args=[row.pk]), {"post": "yes"})

    assert response.status_code == 302
    kept = model.all_objects.get(pk=row.pk)
    assert kept.is_deleted and kept.deleted_at is not None
    assert not model.objects.filter(pk=row.pk).exists()
    listed = admin_client.get(reverse(f"admin:{app}_{name}_changelist")).context["cl"].result_list
    assert row.pk not in [item.pk for item in listed]
    assert deletions(entity_type, row) == [("ada", {"name": "ACME nightly"})]


def test_a_deleted_job_keeps_its_steps_versions_and_runs(admin_client: Client) -> None:
    job = make_job([("test.write", {"name": "a"})], name="Old feed")
    execution = control.enqueue(job, triggered_by="manual:tester")

    confirm = admin_client.get(reverse("admin:jobs_job_delete", args=[job.pk]))
    # Only the job is listed: Django's cascade (steps, versions, runs) does not apply to a soft delete.
    assert confirm.context["deleted_objects"] == ["Job: Old feed"]
    assert dict(confirm.context["model_count"]) == {"jobs": 1} and not confirm.context["perms_lacking"]
    admin_client.post(reverse("admin:jobs_job_delete", args=[job.pk]), {"post": "yes"})

    assert JobStep.objects.filter(job_id=job.pk).count() == 1
    assert JobVersion.objects.filter(job_id=job.pk).count() == 1
    assert JobExecution.objects.filter(pk=execution.pk).exists()


def test_a_bulk_delete_audits_every_row(admin_client: Client) -> None:
    first, second = JobChain.objects.create(name="Month end"), JobChain.objects.create(name="Quarter end")

    admin_client.post(
        reverse("admin:jobs_jobchain_changelist"),
        {"action": "delete_selected", "_selected_action": [str(first.pk), str(second.pk)], "post": "yes"},
    )

    assert JobChain.all_objects.filter(pk__in=[first.pk, second.pk], is_deleted=True).count() == 2
    assert deletions("chain", first) == [("ada", {"name": "Month end"})]
    assert deletions("chain", second) == [("ada", {"name": "Quarter end"})]
