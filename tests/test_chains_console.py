"""The console for schedules, dependencies and chains, posted as each role."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditLogEntry
from courier_site.roles import OPERATOR, VIEWER
from jobs import chains
from jobs.models import ChainExecution, Job, JobChain, JobChainMember, JobDependency, JobSchedule
from tests.engine_support import make_job
from tests.test_jobs_console import job_post_data, step_row

pytestmark = pytest.mark.django_db

OK = [("test.write", {"name": "out.txt", "text": "done"})]


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]


@pytest.fixture
def as_role(client: Client, django_user_model):
    def login(role: str) -> Client:
        user = django_user_model.objects.create_user(username=f"{role.lower()}-c", password="pw-long-1", is_staff=True)
        user.groups.add(Group.objects.get(name=role))
        client.force_login(user)
        return client

    return login


def schedule_data(job, **fields: str) -> dict[str, str]:
    return {
        "job": str(job.pk),
        "schedule_type": "cron",
        "cron_expression": "",
        "run_at_0": "",
        "run_at_1": "",
        "time_zone": "",
        "is_enabled": "on",
        **fields,
    }


def test_operator_adds_a_schedule_and_sees_its_next_fire_times(as_role) -> None:
    client = as_role(OPERATOR)
    job = make_job(OK, name="Nightly fetch")

    response = client.post(
        reverse("admin:jobs_jobschedule_add"),
        schedule_data(job, cron_expression="0 30 2 ? * MON-FRI", time_zone="Europe/Berlin"),
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    schedule = JobSchedule.objects.get(job=job)
    assert schedule.next_fire_at is not None and schedule.next_fire_at > timezone.now()
    page = client.get(reverse("admin:jobs_jobschedule_change", args=[schedule.pk])).content.decode()
    assert "02:30" in page and "Europe/Berlin" in page
    assert page.count("UTC —") == 5  # next five fire times, each shown in UTC and in the zone
    assert AuditLogEntry.objects.filter(entity_id=schedule.pk, operation="created").exists()


def test_an_invalid_cron_is_refused_next_to_the_field(as_role) -> None:
    client = as_role(OPERATOR)
    job = make_job(OK)

    response = client.post(reverse("admin:jobs_jobschedule_add"), schedule_data(job, cron_expression="0 25 * * *"))

    assert response.status_code == 200
    assert "E2012" in response.content.decode()
    assert not JobSchedule.objects.exists()


def test_a_past_one_shot_is_refused(as_role) -> None:
    client = as_role(OPERATOR)
    job = make_job(OK)
    past = timezone.localtime(timezone.now() - timedelta(hours=1))

    response = client.post(
        reverse("admin:jobs_jobschedule_add"),
        schedule_data(
            job, schedule_type="one_shot", run_at_0=past.strftime("%Y-%m-%d"), run_at_1=past.strftime("%H:%M:%S")
        ),
    )

    assert response.status_code == 200
    assert "E2013" in response.content.decode()


def test_disable_and_enable_actions_report_what_they_did(as_role) -> None:
    client = as_role(OPERATOR)
    job = make_job(OK)
    schedule = JobSchedule.objects.create(job=job, schedule_type="cron", cron_expression="*/5 * * * *")

    response = client.post(
        reverse("admin:jobs_jobschedule_changelist"),
        {"action": "disable_selected", "_selected_action": [str(schedule.pk)]},
        follow=True,
    )

    assert "Disabled 1 schedule." in response.content.decode()
    schedule.refresh_from_db()
    assert schedule.is_enabled is False and schedule.next_fire_at is None
    client.post(
        reverse("admin:jobs_jobschedule_changelist"),
        {"action": "enable_selected", "_selected_action": [str(schedule.pk)]},
    )
    schedule.refresh_from_db()
    assert schedule.is_enabled and schedule.next_fire_at > timezone.now()


def test_a_schedule_added_inline_on_the_job_page_gets_its_next_fire_time(as_role) -> None:
    client = as_role(OPERATOR)
    data = job_post_data(
        [step_row(0, "flow.foreach", '{"source": ["a"]}'), step_row(1, "flow.end", "{}")],
        **{
            "schedules-TOTAL_FORMS": "1",
            "schedules-0-schedule_type": "cron",
            "schedules-0-cron_expression": "15 6 * * *",
            "schedules-0-time_zone": "",
            "schedules-0-is_enabled": "on",
        },
    )

    response = client.post(reverse("admin:jobs_job_add"), data)

    assert response.status_code == 302, response.content.decode()[:3000]
    schedule = JobSchedule.objects.get(job__name="Partner invoices")
    assert schedule.next_fire_at.hour == 6 and schedule.next_fire_at.minute == 15


def test_a_dependency_that_closes_a_cycle_is_refused_on_the_job_page(as_role) -> None:
    client = as_role(OPERATOR)
    upstream = make_job(OK, name="Downstream of the new job")
    data = job_post_data([step_row(0, "flow.foreach", '{"source": ["a"]}'), step_row(1, "flow.end", "{}")])
    assert client.post(reverse("admin:jobs_job_add"), data).status_code == 302
    job = Job.objects.get(name="Partner invoices")
    JobDependency.objects.create(upstream_job=job, downstream_job=upstream)

    change = job_post_data(
        [],
        **{
            "upstream_edges-TOTAL_FORMS": "1",
            "upstream_edges-0-upstream_job": str(upstream.pk),
            "upstream_edges-0-run_on_failure": "",
        },
    )
    response = client.post(reverse("admin:jobs_job_change", args=[job.pk]), change)

    assert response.status_code == 200
    assert "E2005" in response.content.decode()
    assert JobDependency.objects.count() == 1


def chain_data(members: list[tuple[int, object, str]], **extra: str) -> dict[str, str]:
    data = {
        "name": "Month end",
        "description": "",
        "is_enabled": "on",
        "members-TOTAL_FORMS": str(len(members)),
        "members-INITIAL_FORMS": "0",
        "members-MIN_NUM_FORMS": "0",
        "members-MAX_NUM_FORMS": "1000",
        "schedules-TOTAL_FORMS": "0",
        "schedules-INITIAL_FORMS": "0",
        "schedules-MIN_NUM_FORMS": "0",
        "schedules-MAX_NUM_FORMS": "1000",
    }
    for index, (order, job, after) in enumerate(members):
        data[f"members-{index}-execution_order"] = str(order)
        data[f"members-{index}-job"] = str(job.pk)
        data[f"members-{index}-depends_on_order"] = after
    data.update(extra)
    return data


def test_operator_builds_a_chain_whose_new_members_refer_to_each_other(as_role) -> None:
    client = as_role(OPERATOR)
    first, second = make_job(OK, name="first"), make_job(OK, name="second")

    response = client.post(reverse("admin:jobs_jobchain_add"), chain_data([(0, first, ""), (1, second, "0")]))

    assert response.status_code == 302, response.content.decode()[:3000]
    chain = JobChain.objects.get(name="Month end")
    member = JobChainMember.objects.get(chain=chain, execution_order=1)
    assert member.depends_on_member.execution_order == 0


def test_a_chain_with_a_member_cycle_is_refused(as_role) -> None:
    client = as_role(OPERATOR)
    first, second = make_job(OK, name="first"), make_job(OK, name="second")

    response = client.post(reverse("admin:jobs_jobchain_add"), chain_data([(0, first, "1"), (1, second, "0")]))

    assert response.status_code == 200
    assert "E2024" in response.content.decode()
    assert not JobChain.objects.exists()


def make_chain() -> JobChain:
    chain = JobChain.objects.create(name="Quarter close")
    first = JobChainMember.objects.create(chain=chain, job=make_job(OK, name="a"), execution_order=0)
    JobChainMember.objects.create(chain=chain, job=make_job(OK, name="b"), execution_order=1, depends_on_member=first)
    return chain


def test_run_now_confirms_then_starts_the_chain_and_shows_its_members(as_role) -> None:
    client = as_role(OPERATOR)
    chain = make_chain()

    confirm = client.get(reverse("admin:jobs_jobchain_run", args=[chain.pk]))
    assert confirm.status_code == 200 and "entry point" in confirm.content.decode()
    response = client.post(reverse("admin:jobs_jobchain_run", args=[chain.pk]), follow=True)

    execution = ChainExecution.objects.get(chain=chain)
    assert execution.triggered_by == "manual:operator-c"
    page = response.content.decode()
    assert "queued" in page and "pending" in page and "Cancel chain" in page


def test_viewer_cannot_run_or_cancel_a_chain_and_the_refusal_is_audited(as_role) -> None:
    chain = make_chain()
    execution = chains.trigger(chain, triggered_by="manual:tester")
    client = as_role(VIEWER)

    assert client.post(reverse("admin:jobs_jobchain_run", args=[chain.pk])).status_code == 403
    assert client.post(reverse("admin:jobs_chainexecution_cancel", args=[execution.pk])).status_code == 403

    assert ChainExecution.objects.filter(chain=chain).count() == 1
    assert AuditLogEntry.objects.filter(entity_id=chain.pk, operation="run_refused").exists()
    assert AuditLogEntry.objects.filter(entity_id=execution.pk, operation="cancel_refused").exists()


def test_operator_cancels_a_running_chain_from_its_page(as_role) -> None:
    chain = make_chain()
    execution = chains.trigger(chain, triggered_by="manual:tester")
    client = as_role(OPERATOR)

    response = client.post(reverse("admin:jobs_chainexecution_cancel", args=[execution.pk]), follow=True)

    assert "Cancelled chain execution" in response.content.decode()
    execution.refresh_from_db()
    assert execution.state == "cancelled"


def test_the_chain_execution_page_shows_state_tally_members_and_redacted_trigger_values(as_role) -> None:
    chain = make_chain()
    execution = chains.trigger(
        chain,
        triggered_by="manual:tester",
        context={"trigger.region": "emea", "trigger.partner_password": "hunter2-secret"},
    )
    client = as_role(VIEWER)

    page = client.get(reverse("admin:jobs_chainexecution_change", args=[execution.pk])).content.decode()

    assert 'data-live="1"' in page and 'data-state="running"' in page
    assert "0 of 2 members completed" in page and "entry point" in page and "member 0" in page
    assert "emea" in page and "hunter2-secret" not in page
    assert reverse("admin:jobs_chainexecution_live", args=[execution.pk]) in page
    assert "Cancel chain" not in page  # a viewer may look, not cancel


def test_the_live_fragment_follows_the_chain_to_its_end_and_then_stops_polling(as_role) -> None:
    chain = make_chain()
    execution = chains.trigger(chain, triggered_by="manual:tester")
    client = as_role(OPERATOR)
    live_url = reverse("admin:jobs_chainexecution_live", args=[execution.pk])

    running = client.get(live_url).content.decode()
    assert "<html" not in running  # the fragment only, not a whole page
    assert 'data-live="1"' in running and "Cancel chain" in running

    ChainExecution.objects.filter(pk=execution.pk).update(
        state="failed", completed_at=timezone.now(), error_message="member 1 failed"
    )
    execution.member_runs.filter(execution_order=0).update(state="completed")
    execution.member_runs.filter(execution_order=1).update(state="failed", note="[E2030] timed out after 300 s")

    ended = client.get(live_url).content.decode()
    assert 'data-live="0"' in ended and 'data-state="failed"' in ended
    assert "1 of 2 members completed, 1 failed" in ended
    assert "member 1 failed" in ended and "[E2030] timed out after 300 s" in ended
    assert "Cancel chain" not in ended


def test_the_live_fragment_needs_a_signed_in_console_user(client: Client) -> None:
    execution = chains.trigger(make_chain(), triggered_by="manual:tester")

    response = client.get(reverse("admin:jobs_chainexecution_live", args=[execution.pk]))

    assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_chain_list_shows_how_the_last_run_went_and_links_to_it(as_role) -> None:
    chain = make_chain()
    never = JobChain.objects.create(name="Never run yet")
    earlier = chains.trigger(chain, triggered_by="manual:tester")
    ChainExecution.objects.filter(pk=earlier.pk).update(
        state="completed", created_at=timezone.now() - timedelta(days=1)
    )
    latest = chains.trigger(chain, triggered_by="manual:tester")
    ChainExecution.objects.filter(pk=latest.pk).update(state="failed")
    client = as_role(VIEWER)

    page = client.get(reverse("admin:jobs_jobchain_changelist")).content.decode()

    assert reverse("admin:jobs_chainexecution_change", args=[latest.pk]) in page
    assert reverse("admin:jobs_chainexecution_change", args=[earlier.pk]) not in page
    assert never.name in page
    row = page[page.index("Quarter close") :]
    row = row[: row.index("</tr>")]
    assert "failed" in row
