"""The execution page: header (state, duration, trigger, worker, error code), timeline first, context table, live."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from courier_site.roles import OPERATOR, VIEWER
from jobs.engine import control
from jobs.models import JobExecution, StepExecution
from tests.engine_support import make_job

pytestmark = pytest.mark.django_db

LONG_PATH = "/srv/courier/partners/acme-invoices-" + "very-long-folder-name-" * 8 + "final.csv"


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


def running_execution(**values: object) -> JobExecution:
    job = make_job([("flow.foreach", {"source": ["a"]}), ("flow.end", {})], name="ACME invoices")
    execution = control.enqueue(job, triggered_by="manual:tester", context=values)
    assert control.claim(execution.pk, "worker-7@host")
    JobExecution.objects.filter(pk=execution.pk).update(started_at=timezone.now() - timedelta(seconds=125))
    return JobExecution.objects.get(pk=execution.pk)


def add_step(execution: JobExecution, order: int, state: str, **fields: object) -> StepExecution:
    return StepExecution.objects.create(
        job_execution=execution,
        job_step=execution.job.steps.get(step_order=order),
        step_order=order,
        position=str(order),
        step_name=f"step {order}",
        type_key="sftp.download",
        state=state,
        started_at=timezone.now() - timedelta(seconds=60 - order),
        **fields,
    )


def failed_execution() -> JobExecution:
    execution = running_execution()
    add_step(execution, 0, "completed", duration_ms=1200, bytes_processed=3 * 1024 * 1024)
    add_step(execution, 1, "failed", error_message="[E3005] remote file /in/a.csv is gone", retry_attempt=2)
    return control.transition(execution.pk, "failed", error_message="[E3005] remote file /in/a.csv is gone")


def test_a_failed_run_shows_its_state_error_code_and_failed_step_in_the_header(as_role) -> None:
    client = as_role(VIEWER)
    execution = failed_execution()

    page = client.get(reverse("admin:jobs_jobexecution_change", args=[execution.pk])).content.decode()

    header = page[page.index('id="courier-execution-header"') : page.index('id="courier-steps"')]
    assert 'data-state="failed"' in header
    assert 'data-error-code="E3005"' in header and "remote file /in/a.csv is gone" in header
    assert "at step 1" in header
    assert "worker-7@host" in header and "manual:tester" in header


def test_the_step_timeline_comes_before_the_context(as_role) -> None:
    client = as_role(VIEWER)
    execution = failed_execution()

    page = client.get(reverse("admin:jobs_jobexecution_change", args=[execution.pk])).content.decode()

    assert page.index('id="courier-steps"') < page.index('id="courier-context"')


def test_each_step_row_shows_its_state_retries_bytes_and_links_its_output(as_role) -> None:
    client = as_role(VIEWER)
    execution = failed_execution()
    completed, failed = StepExecution.objects.filter(job_execution_id=execution.pk).order_by("step_order")

    page = client.get(reverse("admin:jobs_jobexecution_change", args=[execution.pk])).content.decode()

    rows = page[page.index('id="courier-steps"') :]
    assert 'data-step-state="completed"' in rows and 'data-step-state="failed"' in rows
    assert "3.0 MB" in rows and "1200 ms" in rows
    assert reverse("admin:jobs_stepexecution_change", args=[completed.pk]) in rows
    assert reverse("admin:jobs_stepexecution_change", args=[failed.pk]) in rows


def test_the_context_is_a_collapsed_table_with_secrets_redacted_and_long_values_wrapped(as_role) -> None:
    client = as_role(VIEWER)
    execution = running_execution(**{"trigger.path": LONG_PATH, "trigger.password": "hunter2-secret"})

    page = client.get(reverse("admin:jobs_jobexecution_change", args=[execution.pk])).content.decode()

    context = page[page.index('id="courier-context"') :]
    context = context[: context.index("</details>")]
    assert "<pre" not in context
    assert "trigger.path" in context and LONG_PATH in context
    assert "overflow-wrap:anywhere" in context
    assert "hunter2-secret" not in page and "redacted" in context


def test_a_running_step_reports_its_progress_and_the_duration_so_far(as_role) -> None:
    client = as_role(VIEWER)
    execution = running_execution()
    add_step(
        execution,
        0,
        "running",
        progress={"bytes_done": 512 * 1024, "bytes_total": 2 * 1024 * 1024, "rate_bytes_per_second": 1024.0},
    )

    fragment = client.get(reverse("admin:jobs_jobexecution_timeline", args=[execution.pk])).content.decode()

    assert 'data-live="1"' in fragment
    assert 'data-percent="25"' in fragment and "512.0 KB of 2.0 MB (25 %)" in fragment
    assert "2 min 5 s so far" in fragment


def test_the_refreshed_part_says_when_the_run_has_ended_so_polling_stops(as_role) -> None:
    client = as_role(VIEWER)
    execution = running_execution()
    url = reverse("admin:jobs_jobexecution_timeline", args=[execution.pk])
    assert 'data-live="1"' in client.get(url).content.decode()

    control.transition(execution.pk, "completed")

    fragment = client.get(url).content.decode()
    assert 'data-live="0"' in fragment and 'data-state="completed"' in fragment
    page = client.get(reverse("admin:jobs_jobexecution_change", args=[execution.pk])).content.decode()
    assert 'id="courier-timeline"' in page and 'data-live="0"' in page


@pytest.mark.parametrize(
    ("state", "verbs"),
    [("running", ["pause", "cancel"]), ("paused", ["resume", "cancel"]), ("failed", ["retry"]), ("completed", [])],
)
def test_the_page_offers_the_controls_the_state_allows(as_role, state: str, verbs: list[str]) -> None:
    client = as_role(OPERATOR)
    execution = running_execution()
    if state != "running":
        control.transition(execution.pk, state)

    fragment = client.get(reverse("admin:jobs_jobexecution_timeline", args=[execution.pk])).content.decode()

    offered = [verb for verb in ("pause", "resume", "cancel", "retry") if f'data-verb="{verb}"' in fragment]
    assert offered == verbs


def test_a_viewer_is_offered_no_controls(as_role) -> None:
    client = as_role(VIEWER)
    execution = running_execution()

    fragment = client.get(reverse("admin:jobs_jobexecution_timeline", args=[execution.pk])).content.decode()

    assert "data-verb=" not in fragment


def test_the_step_output_page_shows_outputs_with_secrets_redacted(as_role) -> None:
    client = as_role(VIEWER)
    execution = running_execution()
    step = add_step(
        execution, 0, "completed", output_data={"path": LONG_PATH, "api_token": "tok-unseen-42", "count": 3}
    )

    page = client.get(reverse("admin:jobs_stepexecution_change", args=[step.pk])).content.decode()

    assert LONG_PATH in page and "tok-unseen-42" not in page and "redacted" in page
    assert reverse("admin:jobs_jobexecution_change", args=[execution.pk]) in page


def test_the_execution_list_draws_states_as_badges(as_role) -> None:
    client = as_role(VIEWER)
    failed_execution()

    page = client.get(reverse("admin:jobs_jobexecution_changelist")).content.decode()

    assert 'class="courier-state" data-state="failed"' in page


def test_steps_not_reached_yet_are_listed_pending_and_after_the_end_as_not_run(as_role) -> None:
    client = as_role(VIEWER)
    job = make_job(
        [("test.write", {"name": "a"}), ("test.write", {"name": "b"}), ("test.write", {"name": "c"})],
        name="Three steps",
    )
    job.steps.filter(step_order=2).update(name="Renamed after the run started")  # the run shows its pinned version
    execution = control.enqueue(job, triggered_by="manual:tester")
    assert control.claim(execution.pk, "worker-7@host")
    add_step(JobExecution.objects.get(pk=execution.pk), 0, "completed")
    url = reverse("admin:jobs_jobexecution_timeline", args=[execution.pk])

    running = client.get(url).content.decode()
    assert running.count('data-step-state="pending"') == 2 and 'data-step-state="completed"' in running
    assert "No step has run yet" not in running

    control.transition(execution.pk, "failed", error_message="[E3003] partner unreachable")
    ended = client.get(url).content.decode()
    assert ended.count('data-step-state="not run"') == 2 and re.search(r">\s*not run\s*<", ended)
    assert "test.write #2" in ended and "Renamed after the run started" not in ended
    assert 'data-step-state="pending"' not in ended


def test_a_run_not_started_shows_its_steps_pending(as_role) -> None:
    client = as_role(VIEWER)
    execution = control.enqueue(make_job([("test.write", {"name": "a"})]), triggered_by="manual:tester")

    fragment = client.get(reverse("admin:jobs_jobexecution_timeline", args=[execution.pk])).content.decode()

    assert fragment.count('data-step-state="pending"') == 1 and "No step has run yet" not in fragment
