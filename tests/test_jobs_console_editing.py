"""Editing jobs in the console without a server error: taken orders, unknown types, bad keys, reordering, step forms."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from courier_site.roles import ADMIN, OPERATOR
from jobs.models import Job, JobSchedule, JobStep, JobVersion
from tests.engine_support import make_job
from tests.test_jobs_console import job_post_data, step_row

pytestmark = pytest.mark.django_db

FOREACH_END = [("flow.foreach", {"source": ["a"]}), ("flow.end", {})]


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


def step_page_data(job: Job, order: int, **overrides: object) -> dict[str, object]:
    return {
        "job": job.pk,
        "step_order": order,
        "name": "another loop",
        "type_key": "flow.foreach",
        "alias": "",
        "timeout_seconds": 300,
        "config__source": '["x"]',
        **overrides,
    }


def job_change_data(job: Job, rows: list[dict[str, object]]) -> dict[str, object]:
    """The job's change page as posted, with rows for its existing steps (each row carrying the step's id)."""
    data = job_post_data(rows, name=job.name)
    data["steps-INITIAL_FORMS"] = str(len([row for row in rows if "id" in row]))
    for index in range(len(rows)):
        data[f"steps-{index}-job"] = str(job.pk)
    return data


def existing_row(step: JobStep, **changes: object) -> dict[str, object]:
    configuration = {"flow.foreach": '{"source": ["a"]}', "flow.end": "{}"}[step.type_key]
    row = step_row(step.step_order, step.type_key, configuration, id=str(step.pk), name=step.name)
    row.update({key: str(value) for key, value in changes.items()})
    return row


def test_adding_a_step_at_a_taken_order_is_refused_with_e2009_naming_the_free_order(as_role) -> None:
    client = as_role(OPERATOR)
    job = make_job(FOREACH_END)

    response = client.post(reverse("admin:jobs_jobstep_add"), step_page_data(job, 1))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["step_order"]
    assert errors == [f"[E2009] order 1 is taken by step 'flow.end #1' of job '{job.name}'; the first free order is 2"]
    assert job.steps.count() == 2


def test_a_step_alias_used_by_another_step_of_the_job_is_refused(as_role) -> None:
    client = as_role(OPERATOR)
    job = make_job(FOREACH_END, aliases={0: "files"})

    response = client.post(reverse("admin:jobs_jobstep_add"), step_page_data(job, 2, alias="files"))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["alias"]
    assert errors == [f"[E2009] alias 'files' is already used by step 'flow.foreach #0' of job '{job.name}'"]


def test_a_negative_order_or_timeout_is_a_form_error(as_role) -> None:
    client = as_role(OPERATOR)
    job = make_job(FOREACH_END)

    response = client.post(reverse("admin:jobs_jobstep_add"), step_page_data(job, -1, timeout_seconds=0))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "step_order" in errors and "timeout_seconds" in errors
    assert job.steps.count() == 2


def test_an_unknown_step_type_is_refused_with_e2001(as_role) -> None:
    client = as_role(OPERATOR)

    response = client.post(reverse("admin:jobs_job_add"), job_post_data([step_row(0, "nope.step", "{}")]))

    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][0].formset.forms[0].errors
    assert errors["type_key"] == ["[E2001] unknown step type 'nope.step'; choose one of the listed types"]
    assert not Job.objects.exists()


def test_unknown_configuration_keys_are_refused_with_e2002(as_role) -> None:
    client = as_role(OPERATOR)

    response = client.post(reverse("admin:jobs_job_add"), job_post_data([step_row(0, "flow.foreach", '{"sauce": 1}')]))

    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][0].formset.forms[0].errors["configuration"]
    assert any(message.startswith("[E2002] ") and "unknown key 'sauce'" in message for message in errors)


def test_a_configuration_holding_a_nul_character_is_refused_not_a_server_error(as_role) -> None:
    client = as_role(OPERATOR)

    response = client.post(
        reverse("admin:jobs_job_add"), job_post_data([step_row(0, "flow.foreach", '{"source": ["a\\u0000"]}')])
    )

    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][0].formset.forms[0].errors["configuration"]
    assert "NUL" in errors[0]


def test_two_rows_with_one_alias_are_refused_for_the_whole_definition(as_role) -> None:
    client = as_role(OPERATOR)
    rows = [
        step_row(0, "flow.foreach", '{"source": ["a"]}', alias="same"),
        step_row(1, "flow.end", "{}", alias="same"),
    ]

    response = client.post(reverse("admin:jobs_job_add"), job_post_data(rows))

    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][0].formset.non_form_errors()
    assert "[E2009] two steps have alias 'same'; aliases must be unique" in errors


def test_swapping_two_step_orders_on_the_job_page_saves_without_collision(as_role) -> None:
    client = as_role(OPERATOR)
    loop = ("flow.foreach", {"source": ["a"]})
    job = make_job([loop, loop, ("flow.end", {}), ("flow.end", {})], aliases={2: "first"})
    outer, inner, end_one, end_two = job.steps.order_by("step_order")
    # The two ends change places, and the alias moves from one to the other.
    rows = [
        existing_row(outer),
        existing_row(inner),
        existing_row(end_one, step_order=3),
        existing_row(end_two, step_order=2, alias="first"),
    ]

    response = client.post(reverse("admin:jobs_job_change", args=[job.pk]), job_change_data(job, rows))

    assert response.status_code == 302, response.content.decode()[:3000]
    orders = dict(job.steps.values_list("pk", "step_order"))
    assert (orders[end_one.pk], orders[end_two.pk]) == (3, 2)
    assert job.steps.get(pk=end_one.pk).alias is None
    assert job.steps.get(pk=end_two.pk).alias == "first"
    assert JobVersion.objects.filter(job=job).count() == 2


def test_deleting_a_step_and_giving_its_order_to_a_new_one_saves(as_role) -> None:
    client = as_role(OPERATOR)
    job = make_job([("flow.foreach", {"source": ["a"]}), ("flow.end", {})])
    loop, end = job.steps.order_by("step_order")
    rows = [existing_row(loop), existing_row(end, DELETE="on"), step_row(1, "flow.end", "{}")]
    rows[2]["name"] = "new end"

    response = client.post(reverse("admin:jobs_job_change", args=[job.pk]), job_change_data(job, rows))

    assert response.status_code == 302, response.content.decode()[:3000]
    assert list(job.steps.order_by("step_order").values_list("name", flat=True)) == ["flow.foreach #0", "new end"]


def test_adding_a_step_first_asks_for_its_type_then_shows_that_types_fields(as_role) -> None:
    client = as_role(OPERATOR)
    job = make_job(FOREACH_END)
    add_url = reverse("admin:jobs_jobstep_add")

    chooser = client.get(f"{add_url}?job={job.pk}&step_order=2")
    assert chooser.status_code == 200
    choice = next(item for item in chooser.context["choices"] if item["key"] == "flow.foreach")
    assert f"job={job.pk}" in choice["url"] and "step_order=2" in choice["url"]

    form_page = client.get(choice["url"])
    form = form_page.context["adminform"].form
    assert "config__source" in form.fields
    assert form.initial["step_order"] == "2"


def test_a_step_saved_on_its_own_page_returns_to_its_job_with_a_new_version(as_role) -> None:
    client = as_role(OPERATOR)
    job = make_job(FOREACH_END)

    response = client.post(reverse("admin:jobs_jobstep_add"), step_page_data(job, 2))

    assert response.status_code == 302
    assert response["Location"] == reverse("admin:jobs_job_change", args=[job.pk])
    step = job.steps.get(step_order=2)
    assert step.configuration == {"source": ["x"]}
    assert JobVersion.objects.filter(job=job).count() == 2


def test_the_job_page_links_each_step_to_its_form_and_offers_adding_one(as_role) -> None:
    client = as_role(OPERATOR)
    job = make_job(FOREACH_END)

    page = client.get(reverse("admin:jobs_job_change", args=[job.pk])).content.decode()

    for step in job.steps.all():
        assert reverse("admin:jobs_jobstep_change", args=[step.pk]) in page
    assert f"{reverse('admin:jobs_jobstep_add')}?job={job.pk}&amp;step_order=2" in page
    assert 'wrap="off"' in page


def test_a_bad_cron_on_the_job_page_is_refused_with_e2012(as_role) -> None:
    client = as_role(OPERATOR)
    job = make_job(FOREACH_END)
    data = job_change_data(job, [existing_row(step) for step in job.steps.order_by("step_order")])
    data.update(
        {
            "schedules-TOTAL_FORMS": "1",
            "schedules-0-schedule_type": "cron",
            "schedules-0-cron_expression": "61 * * * *",
            "schedules-0-time_zone": "",
            "schedules-0-is_enabled": "on",
        }
    )

    response = client.post(reverse("admin:jobs_job_change", args=[job.pk]), data)

    assert response.status_code == 200
    assert "[E2012]" in response.content.decode()
    assert not JobSchedule.objects.filter(job=job).exists()


@pytest.mark.parametrize("host", ["", "   ", "two words", "bad/host"])
def test_a_connection_without_a_usable_host_is_refused_with_e3003(as_role, host: str) -> None:
    client = as_role(ADMIN)
    data = {
        "name": "ACME",
        "protocol": "sftp",
        "host": host,
        "status": "active",
        "auth_method": "password",
        "username": "courier",
        "new_password": "Partner-Secret-1",
        "host_key_policy": "trust_on_first_use",
        "tls_cert_policy": "system_trust",
        "keepalive_interval_sec": 60,
        "connect_timeout_sec": 30,
        "operation_timeout_sec": 300,
        "transport_retries": 2,
        "transfer_segments": 1,
        "known_hosts-TOTAL_FORMS": 0,
        "known_hosts-INITIAL_FORMS": 0,
    }

    response = client.post(reverse("admin:connections_connection_add"), data)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["host"][0].startswith("[E3003] ")


def test_connection_retries_outside_zero_to_three_are_a_form_error(as_role) -> None:
    client = as_role(ADMIN)
    data = {
        "name": "ACME",
        "protocol": "sftp",
        "host": "sftp.acme.test",
        "status": "active",
        "auth_method": "password",
        "username": "courier",
        "new_password": "Partner-Secret-1",
        "host_key_policy": "trust_on_first_use",
        "tls_cert_policy": "system_trust",
        "keepalive_interval_sec": 60,
        "connect_timeout_sec": 30,
        "operation_timeout_sec": 300,
        "transport_retries": 4,
        "transfer_segments": 1,
        "known_hosts-TOTAL_FORMS": 0,
        "known_hosts-INITIAL_FORMS": 0,
    }

    response = client.post(reverse("admin:connections_connection_add"), data)

    assert response.status_code == 200
    assert "transport_retries" in response.context["adminform"].form.errors


def test_ssh_algorithms_holding_a_nul_character_are_a_form_error(as_role) -> None:
    client = as_role(ADMIN)
    data = {
        "name": "ACME",
        "protocol": "sftp",
        "host": "sftp.acme.test",
        "status": "active",
        "auth_method": "password",
        "username": "courier",
        "new_password": "Partner-Secret-1",
        "host_key_policy": "trust_on_first_use",
        "tls_cert_policy": "system_trust",
        "ssh_algorithms": '{"kex": ["curve25519-sha256\\u0000"]}',
        "keepalive_interval_sec": 60,
        "connect_timeout_sec": 30,
        "operation_timeout_sec": 300,
        "transport_retries": 2,
        "transfer_segments": 1,
        "known_hosts-TOTAL_FORMS": 0,
        "known_hosts-INITIAL_FORMS": 0,
    }

    response = client.post(reverse("admin:connections_connection_add"), data)

    assert response.status_code == 200
    assert "NUL" in response.context["adminform"].form.errors["ssh_algorithms"][0]


def copy_step_data(job: Job, order: int, source: str) -> dict[str, object]:
    return {
        "job": job.pk,
        "step_order": order,
        "name": "stage the invoices",
        "type_key": "file.copy",
        "alias": "",
        "timeout_seconds": 300,
        "config__source_path": source,
        "config__destination_path": "staged/",
        "config__overwrite": "true",
    }


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("in/invoices-*.csv", "in/invoices-*.csv"),
        ("in/a.csv\r\nin/b.csv", ["in/a.csv", "in/b.csv"]),
        ("context:fetch.downloaded_files", "context:fetch.downloaded_files"),
        ('"in/quoted.csv"', "in/quoted.csv"),
    ],
)
def test_a_path_key_on_the_step_page_takes_paths_as_typed_and_shows_them_back_so(as_role, typed, stored) -> None:
    client = as_role(OPERATOR)
    job = make_job([("file.copy", {"source_path": "a.csv", "destination_path": "out/"})])
    if typed.startswith("context:"):
        job.steps.filter(step_order=0).update(alias="fetch")

    response = client.post(reverse("admin:jobs_jobstep_add"), copy_step_data(job, 1, typed))

    assert response.status_code == 302, response.content.decode()[-3000:]
    step = job.steps.get(step_order=1)
    assert step.configuration["source_path"] == stored
    page = client.get(reverse("admin:jobs_jobstep_change", args=[step.pk]))
    field = page.context["adminform"].form["config__source_path"]
    assert field.value() == (stored if isinstance(stored, str) else "\n".join(stored))
    assert "<textarea" in str(field)


def test_a_path_key_that_starts_like_json_but_is_not_is_refused_next_to_the_field(as_role) -> None:
    client = as_role(OPERATOR)
    job = make_job([("file.copy", {"source_path": "a.csv", "destination_path": "out/"})])

    response = client.post(reverse("admin:jobs_jobstep_add"), copy_step_data(job, 1, '["in/a.csv", 3]'))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "[E2002]" in errors["config__source_path"][0] and "one path per line" in errors["config__source_path"][0]
    assert not job.steps.filter(step_order=1).exists()
    assert response.context["adminform"].form["config__source_path"].value() == '["in/a.csv", 3]'


@pytest.mark.parametrize(("answer", "stored"), [("unknown", None), ("true", True), ("false", False)])
def test_overwrite_on_the_step_page_may_be_left_unset_for_the_steps_own_rule(as_role, answer, stored) -> None:
    client = as_role(OPERATOR)
    job = make_job([("file.copy", {"source_path": "a.csv", "destination_path": "out/"})])

    data = {**copy_step_data(job, 1, "in/a.csv"), "config__overwrite": answer}
    assert client.post(reverse("admin:jobs_jobstep_add"), data).status_code == 302

    step = job.steps.get(step_order=1)
    assert step.configuration.get("overwrite") == stored
    page = client.get(reverse("admin:jobs_jobstep_change", args=[step.pk]))
    field = page.context["adminform"].form["config__overwrite"]
    assert f'<option value="{answer}" selected>' in str(field) and "unset (the step&#x27;s default)" in str(field)
