"""The console sidebar: grouped by task, internals under Administration, items by permission, missing pages skipped."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, Permission
from django.core.cache import cache
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone

from console import navigation
from courier_site.roles import ADMIN, OPERATOR, VIEWER
from jobs.models import JobExecution
from tests.engine_support import make_job

pytestmark = pytest.mark.django_db

TASK_GROUPS = [
    "Overview",
    "Jobs & runs",
    "Schedules & chains",
    "Monitors",
    "Partners",
    "Keys",
    "Audit",
    "Notifications",
    "Administration",
]
INTERNALS = [
    "admin:jobs_chainexecutionmember_changelist",
    "admin:monitors_monitordirectorystate_changelist",
    "admin:courier_site_schemaversion_changelist",
    "admin:courier_site_processheartbeat_changelist",
    "admin:keystore_publickeysharetoken_changelist",
    "admin:audit_domainevent_changelist",
]


@pytest.fixture(autouse=True)
def _fresh_badge_count() -> None:
    cache.delete("courier:navigation:failed-24h")


@pytest.fixture
def make_user(django_user_model):
    def make(role: str | None = None, *permissions: str):
        user = django_user_model.objects.create_user(
            username=f"{(role or 'custom').lower()}1", password="pw-long-enough-1", is_staff=True
        )
        if role:
            user.groups.add(Group.objects.get(name=role))
        for permission in permissions:
            app_label, codename = permission.split(".")
            user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        return django_user_model.objects.get(pk=user.pk)  # fresh permission cache

    return make


def sidebar_of(user, path: str = "/admin/") -> list[dict]:
    request = RequestFactory().get(path)
    request.user = user
    return navigation.sidebar(request)


def titles(sidebar: list[dict]) -> list[str]:
    return [group["title"] for group in sidebar]


def links_in(sidebar: list[dict], group_title: str | None = None) -> list[str]:
    return [item["link"] for group in sidebar if group_title in (None, group["title"]) for item in group["items"]]


def test_an_admin_sees_every_task_group_in_order(make_user) -> None:
    assert titles(sidebar_of(make_user(ADMIN))) == TASK_GROUPS


def test_internal_tables_are_listed_only_under_administration(make_user) -> None:
    sidebar = sidebar_of(make_user(ADMIN))
    outside = [link for group in sidebar if group["title"] != "Administration" for link in links_in([group])]

    for url_name in INTERNALS:
        assert reverse(url_name) in links_in(sidebar, "Administration")
        assert reverse(url_name) not in outside


def test_every_console_list_is_reachable_from_the_sidebar(make_user) -> None:
    linked = {link.split("?")[0] for link in links_in(sidebar_of(make_user(ADMIN)))}

    for model in admin.site._registry:
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        assert url in linked, f"{model._meta.label} has no place in the sidebar"


def test_failed_in_24_hours_links_the_filtered_execution_list_with_its_count(make_user) -> None:
    job = make_job([("flow.foreach", {"source": ["a"]}), ("flow.end", {})])
    JobExecution.objects.create(job=job, job_version_number=1, triggered_by="t", state="failed")
    old = JobExecution.objects.create(job=job, job_version_number=1, triggered_by="t", state="failed")
    JobExecution.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=2))

    jobs_and_runs = next(group for group in sidebar_of(make_user(VIEWER)) if group["title"] == "Jobs & runs")

    failed = next(item for item in jobs_and_runs["items"] if item["title"] == "Failed in 24 h")
    assert failed["link"] == f"{reverse('admin:jobs_jobexecution_changelist')}?state=failed&created_within=24h"
    assert failed["badge"] == "1"


def test_a_viewer_sees_no_user_administration(make_user) -> None:
    sidebar = sidebar_of(make_user(VIEWER))

    assert reverse("admin:auth_user_changelist") not in links_in(sidebar)
    assert reverse("admin:jobs_job_changelist") in links_in(sidebar, "Jobs & runs")


def test_an_operator_sees_the_task_groups_without_users(make_user) -> None:
    sidebar = sidebar_of(make_user(OPERATOR))

    assert titles(sidebar)[:7] == TASK_GROUPS[:7]
    assert reverse("admin:auth_group_changelist") not in links_in(sidebar)


def test_a_user_who_may_only_view_jobs_sees_only_the_dashboard_and_jobs(make_user) -> None:
    sidebar = sidebar_of(make_user(None, "jobs.view_job"))

    assert titles(sidebar) == ["Overview", "Jobs & runs"]
    assert links_in(sidebar) == [reverse("admin:index"), reverse("admin:jobs_job_changelist")]


def test_items_whose_pages_do_not_exist_are_left_out_without_failing(make_user) -> None:
    missing = navigation.Group(
        "Later", (navigation.Item("Nowhere", "admin:nowhere_thing_changelist", "block", "nowhere.thing"),)
    )
    request = RequestFactory().get("/admin/")
    request.user = make_user(ADMIN)
    request.user.is_superuser = True  # holds every permission, even of apps that do not exist

    assert navigation.build(request, (missing, *navigation.GROUPS[:1])) == navigation.build(
        request, navigation.GROUPS[:1]
    )
    # The notifications group, between Audit and Administration, lists the app's three pages.
    groups = {group["title"]: group for group in navigation.sidebar(request)}
    assert [item["title"] for item in groups["Notifications"]["items"]] == ["Channels", "Rules", "Deliveries"]


def test_the_item_of_the_current_page_is_marked_active(make_user) -> None:
    user = make_user(ADMIN)
    sidebar = sidebar_of(user, f"{reverse('admin:connections_connection_changelist')}")

    active = [item["title"] for group in sidebar for item in group["items"] if item["active"]]
    assert active == ["Connections"]


def test_console_pages_draw_the_grouped_sidebar(client: Client, make_user) -> None:
    client.force_login(make_user(VIEWER))

    page = client.get(reverse("admin:jobs_job_changelist")).content.decode()

    assert "Jobs &amp; runs" in page and "Schedules &amp; chains" in page and "Failed in 24 h" in page
