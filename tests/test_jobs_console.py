"""The jobs console: definitions with validation and versions, run now, execution control by role."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from audit.models import AuditLogEntry
from courier_site.roles import ADMIN, OPERATOR, VIEWER
from jobs.engine import control
from jobs.models import Job, JobExecution, JobVersion
from tests.engine_support import make_job

pytestmark = pytest.mark.django_db


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


def job_post_data(steps: list[dict], **overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "Partner invoices",
        "description": "",
        "is_enabled": "on",
        "policy_type": "retry_step",
        "max_retries": "2",
        "backoff_base_seconds": "1",
        "backoff_max_seconds": "30",
        "steps-TOTAL_FORMS": str(len(steps)),
        "steps-INITIAL_FORMS": "0",
        "steps-MIN_NUM_FORMS": "0",
        "steps-MAX_NUM_FORMS": "1000",
        "upstream_edges-TOTAL_FORMS": "0",
        "upstream_edges-INITIAL_FORMS": "0",
        "upstream_edges-MIN_NUM_FORMS": "0",
        "upstream_edges-MAX_NUM_FORMS": "1000",
        "schedules-TOTAL_FORMS": "0",
        "schedules-INITIAL_FORMS": "0",
        "schedules-MIN_NUM_FORMS": "0",
        "schedules-MAX_NUM_FORMS": "1000",
        "versions-TOTAL_FORMS": "0",
        "versions-INITIAL_FORMS": "0",
        "versions-MIN_NUM_FORMS": "0",
        "versions-MAX_NUM_FORMS": "0",
    }
    for index, step in enumerate(steps):
        for key, value in step.items():
            data[f"steps-{index}-{key}"] = value
    data.update(overrides)
    return data


def step_row(order: int, type_key: str, configuration: str, **extra: object) -> dict[str, object]:
    return {
        "step_order": str(order),
        "name": f"step {order}",
        "type_key": type_key,
        "alias": "",
        "configuration": configuration,
        "timeout_seconds": "300",
        **extra,
    }


def test_operator_creates_a_job_and_gets_version_one_with_its_policy(as_role) -> None:
    client = as_role(OPERATOR)
    response = client.post(
        reverse("admin:jobs_job_add"),
        job_post_data([step_row(0, "flow.foreach", '{"source": ["a"]}'), step_row(1, "flow.end", "{}")]),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    job = Job.objects.get(name="Partner invoices")
    assert job.failure_policy == {
        "type": "retry_step",
        "max_retries": 2,
        "backoff_base_seconds": 1.0,
        "backoff_max_seconds": 30.0,
    }
    version = JobVersion.objects.get(job=job)
    assert (version.version_number, version.created_by) == (1, "operator1")
    assert [step["type_key"] for step in version.config_snapshot["steps"]] == ["flow.foreach", "flow.end"]


def test_unknown_keys_are_shown_next_to_the_configuration_field(as_role) -> None:
    client = as_role(OPERATOR)
    response = client.post(
        reverse("admin:jobs_job_add"), job_post_data([step_row(0, "flow.if", '{"operator": "equals", "colour": 1}')])
    )
    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][0].formset.forms[0].errors
    assert "configuration" in errors
    assert any("unknown key 'colour'" in message for message in errors["configuration"])
    assert not Job.objects.filter(name="Partner invoices").exists()


def test_malformed_blocks_are_refused_for_the_whole_definition(as_role) -> None:
    client = as_role(OPERATOR)
    response = client.post(
        reverse("admin:jobs_job_add"), job_post_data([step_row(0, "flow.foreach", '{"source": []}')])
    )
    assert response.status_code == 200
    assert "[E2025]" in str(response.context["inline_admin_formsets"][0].formset.non_form_errors())


def test_each_saved_change_writes_a_new_version_and_the_diff_shows_it(as_role) -> None:
    client = as_role(OPERATOR)
    job = make_job([("flow.foreach", {"source": ["a"]}), ("flow.end", {})])
    step = job.steps.order_by("step_order").first()
    step.configuration = {"source": ["a", "b"]}
    step.save()
    from jobs.definitions import record_version

    record_version(job, created_by="operator1")

    response = client.get(reverse("admin:jobs_job_diff", args=[job.pk]) + "?a=1&b=2")
    assert response.status_code == 200
    added = [
        line[1:].strip() for line in response.context["lines"] if line.startswith("+") and not line.startswith("+++")
    ]
    assert '"b"' in added


def test_run_now_shows_the_version_then_queues_on_post(as_role) -> None:
    client = as_role(OPERATOR)
    job = make_job([("flow.foreach", {"source": []}), ("flow.end", {})])
    url = reverse("admin:jobs_job_run", args=[job.pk])

    page = client.get(url)
    assert page.status_code == 200 and b"Run version 1 now" in page.content
    assert not JobExecution.objects.filter(job=job).exists()

    response = client.post(url)
    execution = JobExecution.objects.get(job=job)
    assert response.status_code == 302 and str(execution.pk) in response["Location"]
    assert (execution.state, execution.triggered_by, execution.job_version_number) == ("queued", "manual:operator1", 1)


def test_viewer_cannot_run_jobs_and_the_refusal_is_audited(as_role) -> None:
    client = as_role(VIEWER)
    job = make_job([("flow.foreach", {"source": []}), ("flow.end", {})])

    assert client.post(reverse("admin:jobs_job_run", args=[job.pk])).status_code == 403
    assert not JobExecution.objects.filter(job=job).exists()
    assert AuditLogEntry.objects.filter(entity_id=job.pk, operation="run_refused", performed_by="viewer1").exists()


def test_execution_page_shows_the_timeline_and_redacts_secrets(as_role) -> None:
    client = as_role(VIEWER)
    job = make_job([("flow.foreach", {"source": []}), ("flow.end", {})])
    execution = control.enqueue(job, triggered_by="manual:tester", context={"trigger.password": "hunter2-secret"})

    response = client.get(reverse("admin:jobs_jobexecution_change", args=[execution.pk]))
    assert response.status_code == 200
    assert b"Step timeline" in response.content
    assert b"hunter2-secret" not in response.content
    assert "redacted" in response.content.decode()


def test_operator_cancels_a_queued_execution_through_the_confirmation(as_role) -> None:
    client = as_role(OPERATOR)
    execution = control.enqueue(
        make_job([("flow.foreach", {"source": []}), ("flow.end", {})]), triggered_by="manual:tester"
    )
    url = reverse("admin:jobs_jobexecution_control", args=[execution.pk, "cancel"])

    assert client.get(url).status_code == 200
    assert JobExecution.objects.get(pk=execution.pk).state == "queued"
    client.post(url)
    assert JobExecution.objects.get(pk=execution.pk).state == "cancelled"


def test_viewer_cannot_cancel(as_role) -> None:
    client = as_role(VIEWER)
    execution = control.enqueue(
        make_job([("flow.foreach", {"source": []}), ("flow.end", {})]), triggered_by="manual:tester"
    )
    assert client.post(reverse("admin:jobs_jobexecution_control", args=[execution.pk, "cancel"])).status_code == 403
    assert JobExecution.objects.get(pk=execution.pk).state == "queued"
    assert AuditLogEntry.objects.filter(entity_id=execution.pk, operation="cancel_refused").exists()


def test_resuming_a_running_execution_is_refused_with_e2010(as_role) -> None:
    client = as_role(ADMIN)
    execution = control.enqueue(
        make_job([("flow.foreach", {"source": []}), ("flow.end", {})]), triggered_by="manual:tester"
    )
    control.claim(execution.pk, "inline-test")
    response = client.post(reverse("admin:jobs_jobexecution_control", args=[execution.pk, "resume"]), follow=True)
    assert "[E2010]" in response.content.decode()
    assert JobExecution.objects.get(pk=execution.pk).state == "running"


def test_step_page_edits_configuration_through_the_type_schema(as_role) -> None:
    client = as_role(OPERATOR)
    job = make_job([("flow.if", {"left": "a", "operator": "equals", "right": "a"}), ("flow.end", {})])
    step = job.steps.get(step_order=0)
    url = reverse("admin:jobs_jobstep_change", args=[step.pk])

    page = client.get(url)
    assert page.status_code == 200 and b"config__operator" in page.content

    bad = client.post(
        url,
        {
            "job": job.pk,
            "step_order": 0,
            "name": "cond",
            "type_key": "flow.if",
            "alias": "",
            "timeout_seconds": 300,
            "config__left": '"x"',
            "config__operator": "regex",
            "config__right": '"("',
        },
    )
    assert bad.status_code == 200
    assert "regular expression" in str(bad.context["adminform"].form.errors)

    good = client.post(
        url,
        {
            "job": job.pk,
            "step_order": 0,
            "name": "cond",
            "type_key": "flow.if",
            "alias": "",
            "timeout_seconds": 300,
            "config__left": '"x"',
            "config__operator": "contains",
            "config__right": '"X"',
        },
    )
    assert good.status_code == 302
    step.refresh_from_db()
    assert step.configuration == {"left": "x", "operator": "contains", "right": "X"}
    assert JobVersion.objects.filter(job=job).count() == 2


def test_step_passwords_are_sealed_at_rest_and_never_shown(as_role, settings, tmp_path) -> None:
    import pyzipper

    from jobs.engine.runner import ExecutionRunner

    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    secret = "Zip-Password-Unseen-4411"
    client = as_role(OPERATOR)
    response = client.post(
        reverse("admin:jobs_job_add"),
        job_post_data(
            [
                step_row(
                    0,
                    "file.zip",
                    f'{{"source_path": "{tmp_path}/data/in.txt", "output_path": "out.zip", "password": "{secret}"}}',
                ),
                step_row(
                    1,
                    "file.copy",
                    f'{{"source_path": "context:0.archive_path", "destination_path": "{tmp_path}/data/delivered/"}}',
                ),
            ]
        ),
    )
    assert response.status_code == 302, response.content.decode()[:1500]
    job = Job.objects.get(name="Partner invoices")
    stored = job.steps.get(step_order=0).configuration["password"]
    assert set(stored) == {"sealed"} and secret not in str(stored)
    assert secret not in str(JobVersion.objects.get(job=job).config_snapshot)
    page = client.get(reverse("admin:jobs_job_change", args=[job.pk]))
    assert secret not in page.content.decode()

    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "in.txt").write_text("confidential")
    execution = control.enqueue(job, triggered_by="manual:tester")
    control.claim(execution.pk, "inline-test")
    ExecutionRunner(execution.pk, "inline-test").run()
    assert JobExecution.objects.get(pk=execution.pk).state == "completed"
    with pyzipper.AESZipFile(tmp_path / "data" / "delivered" / "out.zip") as archive:
        assert archive.read("in.txt", pwd=secret.encode()) == b"confidential"


def test_operator_pauses_a_running_execution_then_resumes_it(as_role) -> None:
    client = as_role(OPERATOR)
    execution = control.enqueue(make_job([("flow.foreach", {"source": []}), ("flow.end", {})]), triggered_by="manual:t")
    assert control.claim(execution.pk, "console-test")

    response = client.post(reverse("admin:jobs_jobexecution_control", args=[execution.pk, "pause"]), follow=True)

    assert "Pause requested" in response.content.decode()
    running = JobExecution.objects.get(pk=execution.pk)
    assert (running.control_request, running.control_requested_by) == ("pause", "operator1")
    # The worker honours the request at its next checkpoint.
    control.transition(execution.pk, "paused", by="operator1", control_request=None)

    response = client.post(reverse("admin:jobs_jobexecution_control", args=[execution.pk, "resume"]), follow=True)

    assert "Resumed" in response.content.decode()
    assert JobExecution.objects.get(pk=execution.pk).state == "queued"
    assert AuditLogEntry.objects.filter(entity_id=execution.pk, operation="queued", performed_by="operator1").exists()


def test_operator_retries_a_failed_execution_from_its_failed_step(as_role, settings, tmp_path) -> None:
    from tests.engine_support import run_inline

    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    job = make_job([("test.write", {"name": "a.txt", "text": "x"}), ("test.flaky", {"key": "console", "failures": 9})])
    failed = run_inline(job)
    assert failed.state == "failed"
    client = as_role(OPERATOR)

    response = client.post(reverse("admin:jobs_jobexecution_control", args=[failed.pk, "retry"]))

    retry = JobExecution.objects.get(retry_of_execution_id=failed.pk)
    assert response.status_code == 302 and str(retry.pk) in response["Location"]
    assert retry.triggered_by == f"retry:{failed.pk}" and retry.state == "queued"
    assert retry.context_snapshot["completed"] == failed.context_snapshot["completed"] != []
