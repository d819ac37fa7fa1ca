"""Console access: role groups from migrate, the first login, and pages behind login (SPEC 8)."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from audit.models import AuditLogEntry
from courier_site.roles import ADMIN, OPERATOR, VIEWER

pytestmark = pytest.mark.django_db


def login_as(client: Client, django_user_model, role: str) -> Client:
    user = django_user_model.objects.create_user(
        username=f"{role.lower()}-user", password="a-long-test-password", is_staff=True
    )
    user.groups.add(Group.objects.get(name=role))
    client.force_login(user)
    return client


def codenames(role: str) -> set[str]:
    return set(Permission.objects.filter(group__name=role).values_list("content_type__app_label", "codename"))


def test_migrate_creates_the_three_role_groups() -> None:
    assert set(Group.objects.values_list("name", flat=True)) >= {ADMIN, OPERATOR, VIEWER}


def test_viewer_may_only_view() -> None:
    granted = codenames(VIEWER)
    assert ("jobs", "view_job") in granted
    assert ("connections", "view_connection") in granted
    assert ("audit", "view_auditlogentry") in granted
    assert all(codename.startswith("view_") for _, codename in granted)


def test_operator_edits_jobs_monitors_and_tags_but_not_connections_keys_or_settings() -> None:
    granted = codenames(OPERATOR)
    for pair in [
        ("jobs", "change_job"),
        ("jobs", "add_jobstep"),
        ("jobs", "change_jobschedule"),
        ("jobs", "add_jobchain"),
        ("monitors", "change_filemonitor"),
        ("tags", "add_tag"),
    ]:
        assert pair in granted, pair
    for pair in [
        ("connections", "change_connection"),
        ("keystore", "add_pgpkey"),
        ("system", "change_systemsetting"),
        ("auth", "change_user"),
        ("audit", "change_auditlogentry"),
    ]:
        assert pair not in granted, pair


def test_admin_manages_connections_keys_settings_and_users() -> None:
    granted = codenames(ADMIN)
    for pair in [
        ("connections", "change_connection"),
        ("keystore", "add_sshkey"),
        ("keystore", "add_publickeysharetoken"),
        ("system", "change_systemsetting"),
        ("auth", "add_user"),
    ]:
        assert pair in granted, pair


def test_role_sync_is_idempotent_and_restores_removed_permissions() -> None:
    group = Group.objects.get(name=OPERATOR)
    group.permissions.remove(Permission.objects.get(codename="change_job"))
    group.permissions.add(Permission.objects.get(codename="change_connection"))

    call_command("migrate", verbosity=0, interactive=False)

    assert ("jobs", "change_job") in codenames(OPERATOR)
    assert ("connections", "change_connection") not in codenames(OPERATOR)


def test_console_requires_login(client: Client) -> None:
    response = client.get(reverse("admin:index"))
    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_viewer_sees_lists_but_no_add_pages(client: Client, django_user_model) -> None:
    login_as(client, django_user_model, VIEWER)
    assert client.get(reverse("admin:index")).status_code == 200
    assert client.get(reverse("admin:jobs_job_changelist")).status_code == 200
    assert client.get(reverse("admin:connections_connection_changelist")).status_code == 200
    assert client.get(reverse("admin:jobs_job_add")).status_code == 403


def test_operator_may_add_jobs_but_not_connections(client: Client, django_user_model) -> None:
    login_as(client, django_user_model, OPERATOR)
    assert client.get(reverse("admin:jobs_job_add")).status_code == 200
    assert client.get(reverse("admin:connections_connection_add")).status_code == 403
    assert client.get(reverse("admin:system_systemsetting_changelist")).status_code == 200


def test_admin_reaches_every_registered_changelist(client: Client, django_user_model) -> None:
    from django.contrib import admin

    login_as(client, django_user_model, ADMIN)
    courier_models = [
        model for model in admin.site._registry if model._meta.app_label not in {"auth", "contenttypes", "sessions"}
    ]
    assert len(courier_models) >= 25
    for model in courier_models:
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        assert client.get(url).status_code == 200, url


def test_first_login_is_created_once_and_its_password_printed_once(
    client: Client, capsys: pytest.CaptureFixture[str], django_user_model
) -> None:
    call_command("bootstrap_console")
    first = capsys.readouterr().out
    password = re.search(r"password: (\S+)", first).group(1)

    call_command("bootstrap_console")
    second = capsys.readouterr().out

    assert "user:     admin" in first
    assert password not in second and "already exist" in second
    user = django_user_model.objects.get(username="admin")
    assert user.is_staff and user.groups.filter(name=ADMIN).exists()
    assert client.login(username="admin", password=password)
    assert client.get(reverse("admin:connections_connection_add")).status_code == 200
    entry = AuditLogEntry.objects.get(operation="first_login_created")
    assert password not in str(entry.details)
