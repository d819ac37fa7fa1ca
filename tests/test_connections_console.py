"""The connections console: write-only secrets, protocol rules, Admin-only settings, test connection."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.urls import reverse

from audit.models import AuditLogEntry
from connections.models import Connection
from courier_site.envelope import keyring
from courier_site.roles import ADMIN, OPERATOR, VIEWER
from system.models import SystemSetting

pytestmark = pytest.mark.django_db
SECRET = "Partner-Secret-Value-9137"


@pytest.fixture
def login(client: Client, django_user_model):
    def as_user(role: str | None, *permissions: str) -> Client:
        user = django_user_model.objects.create_user(
            username=f"user-{uuid.uuid4().hex[:6]}", password="x" * 16, is_staff=True
        )
        if role:
            user.groups.add(Group.objects.get(name=role))
        for codename in permissions:
            user.user_permissions.add(Permission.objects.get(codename=codename))
        client.force_login(user)
        return client

    return as_user


def form_data(**overrides: object) -> dict[str, object]:
    data = {
        "name": "ACME",
        "group": "",
        "protocol": "sftp",
        "host": "sftp.acme.test",
        "port": "",
        "status": "active",
        "notes": "",
        "auth_method": "password",
        "username": "courier",
        "new_password": SECRET,
        "ssh_key": "",
        "host_key_policy": "trust_on_first_use",
        "ssh_algorithms": "",
        "keepalive_interval_sec": 60,
        "passive_mode": "on",
        "tls_version_floor": "",
        "tls_cert_policy": "system_trust",
        "tls_pinned_thumbprint": "",
        "connect_timeout_sec": 30,
        "operation_timeout_sec": 300,
        "transport_retries": 2,
        "transfer_segments": 1,
        "known_hosts-TOTAL_FORMS": 0,
        "known_hosts-INITIAL_FORMS": 0,
        "known_hosts-MIN_NUM_FORMS": 0,
        "known_hosts-MAX_NUM_FORMS": 1000,
    }
    data.update(overrides)
    return data


def test_admin_creates_a_connection_with_a_sealed_password_and_default_port(login) -> None:
    client = login(ADMIN)
    response = client.post(reverse("admin:connections_connection_add"), form_data())
    assert response.status_code == 302
    connection = Connection.objects.get(name="ACME")
    assert connection.port == 22
    assert SECRET.encode() not in bytes(connection.password_encrypted)
    assert keyring().open_text(connection.password_encrypted) == SECRET
    entry = AuditLogEntry.objects.get(entity_id=connection.pk, operation="created")
    assert "password" in entry.details["fields"] and SECRET not in str(entry.details)


def test_the_password_is_write_only_on_every_page(login) -> None:
    client = login(ADMIN)
    client.post(reverse("admin:connections_connection_add"), form_data())
    connection = Connection.objects.get(name="ACME")
    for url in (
        reverse("admin:connections_connection_change", args=[connection.pk]),
        reverse("admin:connections_connection_changelist"),
    ):
        page = client.get(url)
        assert page.status_code == 200
        assert SECRET not in page.content.decode()
    assert "set" in client.get(reverse("admin:connections_connection_changelist")).content.decode()


def test_an_empty_password_field_keeps_the_stored_password(login) -> None:
    client = login(ADMIN)
    client.post(reverse("admin:connections_connection_add"), form_data())
    connection = Connection.objects.get(name="ACME")
    response = client.post(
        reverse("admin:connections_connection_change", args=[connection.pk]), form_data(new_password="", port=2222)
    )
    assert response.status_code == 302
    connection.refresh_from_db()
    assert connection.port == 2222 and keyring().open_text(connection.password_encrypted) == SECRET


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"protocol": "ftp", "auth_method": "ssh_key"}, "auth_method"),
        ({"protocol": "ftp", "ssh_algorithms": '{"ciphers": ["aes256-ctr"]}'}, "ssh_algorithms"),
        ({"protocol": "sftp", "tls_pinned_thumbprint": "ab" * 32}, "tls_pinned_thumbprint"),
        (
            {"protocol": "ftps", "tls_cert_policy": "pinned_thumbprint", "tls_pinned_thumbprint": "xyz"},
            "tls_pinned_thumbprint",
        ),
        ({"protocol": "sftp", "auth_method": "ssh_key"}, "ssh_key"),
        ({"protocol": "sftp", "new_password": ""}, "new_password"),
        ({"protocol": "sftp", "ssh_algorithms": '{"colours": ["red"]}'}, "ssh_algorithms"),
    ],
)
def test_settings_of_the_other_protocol_are_refused(login, overrides: dict, field: str) -> None:
    client = login(ADMIN)
    response = client.post(reverse("admin:connections_connection_add"), form_data(**overrides))
    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert not Connection.objects.filter(name="ACME").exists()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"host_key_policy": "always_trust"}, "host_key_policy"),
        ({"fips_override": "on"}, "fips_override"),
        ({"protocol": "ftps", "tls_cert_policy": "insecure"}, "tls_cert_policy"),
    ],
)
def test_insecure_settings_are_admin_only_and_refusals_are_audited(login, overrides: dict, field: str) -> None:
    client = login(None, "add_connection", "change_connection", "view_connection")
    response = client.post(reverse("admin:connections_connection_add"), form_data(**overrides))
    errors = response.context["adminform"].form.errors
    assert "[E3004]" in str(errors[field])
    assert AuditLogEntry.objects.filter(operation="setting_refused", details__field=field).exists()


INSECURE_TRUST = [
    ({"host_key_policy": "always_trust"}, "host_key_policy"),
    ({"protocol": "ftps", "tls_cert_policy": "insecure"}, "tls_cert_policy"),
]


def allow_insecure_trust_in_production() -> None:
    SystemSetting.objects.filter(key="security.insecure_trust_allow_production").update(value="true")


@pytest.mark.parametrize(("overrides", "field"), INSECURE_TRUST)
def test_insecure_trust_is_refused_in_production_even_for_admins(login, settings, overrides: dict, field: str) -> None:
    settings.IS_PRODUCTION = True
    client = login(ADMIN)
    response = client.post(reverse("admin:connections_connection_add"), form_data(**overrides))
    errors = str(response.context["adminform"].form.errors[field])
    assert "[E3004]" in errors and "not allowed in production" in errors
    assert "security.insecure_trust_allow_production" in errors
    assert not Connection.objects.filter(name="ACME").exists()


@pytest.mark.parametrize(("overrides", "field"), INSECURE_TRUST)
def test_an_admin_may_choose_insecure_trust_in_production_when_the_setting_allows_it(
    login, settings, overrides: dict, field: str
) -> None:
    settings.IS_PRODUCTION = True
    allow_insecure_trust_in_production()
    client = login(ADMIN)
    response = client.post(reverse("admin:connections_connection_add"), form_data(**overrides))
    assert response.status_code == 302
    connection = Connection.objects.get(name="ACME")
    assert getattr(connection, field) == overrides[field]


@pytest.mark.parametrize(("overrides", "field"), INSECURE_TRUST)
def test_the_production_setting_does_not_open_insecure_trust_to_operators(
    login, settings, overrides: dict, field: str
) -> None:
    settings.IS_PRODUCTION = True
    allow_insecure_trust_in_production()
    client = login(None, "add_connection", "change_connection", "view_connection")
    response = client.post(reverse("admin:connections_connection_add"), form_data(**overrides))
    assert "only an Admin" in str(response.context["adminform"].form.errors[field])
    assert not Connection.objects.filter(name="ACME").exists()


def test_operator_cannot_edit_connections_but_can_test_them(login) -> None:
    connection = Connection(
        name="c", protocol="sftp", host="127.0.0.1", port=1, auth_method="password", username="u", connect_timeout_sec=1
    )
    connection.set_password(SECRET)
    connection.save()
    client = login(OPERATOR)
    assert client.get(reverse("admin:connections_connection_add")).status_code == 403
    page = client.get(reverse("admin:connections_connection_test", args=[connection.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "[E3003]" in text and "firewall" in text and SECRET not in text


def test_viewer_cannot_test_connections(login) -> None:
    connection = Connection.objects.create(
        name="c", protocol="ftp", host="h", port=21, auth_method="password", username="u"
    )
    client = login(VIEWER)
    assert client.get(reverse("admin:connections_connection_test", args=[connection.pk])).status_code == 403
    assert AuditLogEntry.objects.filter(entity_id=connection.pk, operation="test_refused").exists()
