"""Console pages of notifications: channels with write-only secrets shown once, rules, the delivery log, roles."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditLogEntry
from audit.relay import relay_until_idle
from courier_site.envelope import keyring
from jobs.portability import ImportRefused, import_jobs
from notifications.models import Channel, Delivery, Rule
from tests.engine_support import make_job
from tests.notify_support import webhook_receiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def as_role(client: Client, django_user_model):
    def login(role: str) -> Client:
        user = django_user_model.objects.create_user(
            username=f"{role.lower()}-n", password="pw-long-enough-1", is_staff=True
        )
        user.groups.add(Group.objects.get(name=role))
        client.force_login(user)
        return client

    return login


def webhook_form(**values: str) -> dict[str, str]:
    return {"name": "pager", "kind": "webhook", "enabled": "on", "url": "https://hooks.example.com/c", **values}


def test_a_new_webhook_channel_shows_its_signing_secret_once_and_keeps_it_sealed(as_role) -> None:
    client = as_role("Admin")
    response = client.post(reverse("admin:notifications_channel_add"), webhook_form(timeout_seconds="5"))
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    channel = Channel.objects.get()
    secret = keyring().open_text(channel.secret_encrypted)
    assert len(secret) >= 40 and secret in response.content.decode()
    assert channel.settings == {"url": "https://hooks.example.com/c", "timeout_seconds": 5}
    page = client.get(reverse("admin:notifications_channel_change", args=[channel.pk])).content.decode()
    assert (
        secret not in page
        and "signing secret set" in client.get(reverse("admin:notifications_channel_changelist")).content.decode()
    )
    audit = AuditLogEntry.objects.for_entity("notification_channel", channel.pk).get()
    assert audit.details["signing_secret"] == "generated" and secret not in str(audit.details)


def test_bad_channel_settings_are_refused_with_e8000_and_nothing_is_stored(as_role) -> None:
    client = as_role("Admin")
    refused = client.post(reverse("admin:notifications_channel_add"), webhook_form(url="ftp://hooks.example.com/"))
    assert refused.status_code == 200 and "[E8000]" in refused.content.decode()
    no_host = client.post(
        reverse("admin:notifications_channel_add"), {"name": "mail", "kind": "email", "recipients": "not-an-address"}
    )
    text = no_host.content.decode()
    assert "[E8000] an email channel needs the SMTP server" in text and "is not an email address" in text
    assert not Channel.objects.exists()


def test_an_smtp_password_is_write_only(as_role) -> None:
    client = as_role("Admin")
    data = {
        "name": "ops",
        "kind": "email",
        "smtp_host": "smtp.example.com",
        "smtp_security": "starttls",
        "recipients": "ops@example.com",
        "smtp_username": "courier",
        "smtp_password": "Typed-Smtp-Pass-77",
    }
    assert client.post(reverse("admin:notifications_channel_add"), data).status_code == 302
    channel = Channel.objects.get()
    assert keyring().open_text(channel.secret_encrypted) == "Typed-Smtp-Pass-77"
    page = client.get(reverse("admin:notifications_channel_change", args=[channel.pk])).content.decode()
    assert "Typed-Smtp-Pass-77" not in page
    # Saving again without typing a password keeps the stored one.
    data.pop("smtp_password")
    assert client.post(reverse("admin:notifications_channel_change", args=[channel.pk]), data).status_code == 302
    channel.refresh_from_db()
    assert keyring().open_text(channel.secret_encrypted) == "Typed-Smtp-Pass-77"


def test_a_rule_is_made_with_event_checkboxes_and_needs_a_channel(as_role) -> None:
    client = as_role("Admin")
    channel = Channel.objects.create(name="pager", kind="webhook", settings={"url": "https://h.example.com/"})
    url = reverse("admin:notifications_rule_add")
    refused = client.post(url, {"name": "failures", "events": ["job_failed"], "quiet": "on"})
    assert "[E8000] a rule needs at least one channel" in refused.content.decode()
    made = client.post(
        url,
        {"name": "failures", "events": ["job_failed", "chain_failed"], "quiet": "on", "channels": [str(channel.pk)]},
    )
    assert made.status_code == 302
    rule = Rule.objects.get()
    assert rule.events == ["job_failed", "chain_failed"] and rule.quiet and list(rule.channels.all()) == [channel]
    listing = client.get(reverse("admin:notifications_rule_changelist")).content.decode()
    assert "Job failed, Chain failed" in listing and "everything" in listing


def test_the_test_button_sends_and_reports_and_operators_may_not(as_role, client: Client) -> None:
    with webhook_receiver(200) as receiver:
        channel = Channel.objects.create(
            name="pager",
            kind="webhook",
            settings={"url": receiver.url, "timeout_seconds": 2},
            secret_encrypted=keyring().seal("s"),
        )
        url = reverse("admin:notifications_channel_test", args=[channel.pk])
        operator = as_role("Operator")
        assert operator.post(url).status_code == 403
        assert AuditLogEntry.objects.filter(operation="test_refused").exists()
        admin = as_role("Admin")
        response = admin.post(url, follow=True)
        receiver.wait_for(1, 5)
    assert "Test notification sent to" in response.content.decode()
    assert Delivery.objects.get().state == "sent"


@pytest.mark.parametrize("role", ["Viewer", "Operator"])
def test_viewers_and_operators_read_notifications_but_change_nothing(as_role, role: str) -> None:
    channel = Channel.objects.create(name="pager", kind="webhook", settings={"url": "https://h.example.com/"})
    client = as_role(role)
    for name in ("channel", "rule", "delivery"):
        assert client.get(reverse(f"admin:notifications_{name}_changelist")).status_code == 200
    assert client.get(reverse("admin:notifications_channel_add")).status_code == 403
    assert (
        client.post(reverse("admin:notifications_channel_change", args=[channel.pk]), webhook_form()).status_code == 403
    )


def test_channels_and_rules_travel_in_the_definitions_file_without_their_secrets(tmp_path) -> None:
    job = make_job([("test.write", {"name": "a.txt", "text": "x"})], name="Partner feed")
    hook = Channel.objects.create(
        name="pager",
        kind="webhook",
        settings={"url": "https://hooks.example.com/c", "timeout_seconds": 4},
        secret_encrypted=keyring().seal("Never-Exported-Secret-1"),
    )
    rule = Rule.objects.create(name="feed failures", events=["job_failed"], quiet=True)
    rule.channels.add(hook)
    rule.jobs.add(job)
    path = tmp_path / "defs.json"
    call_command("export_definitions", "--output", str(path))
    text = path.read_text()
    assert "Never-Exported-Secret-1" not in text
    document = json.loads(text)
    assert document["notifications"]["rules"][0]["jobs"] == ["Partner feed"]

    Rule.objects.all().delete()
    Channel.objects.all().delete()
    report = import_jobs(document, by="tester")
    assert report["notification_rules"] == ["feed failures"] and report["channels_needing_secret"] == ["pager"]
    imported = Rule.objects.get()
    assert [j.name for j in imported.jobs.all()] == ["Partner feed"] and imported.quiet
    assert Channel.objects.get().settings == {"url": "https://hooks.example.com/c", "timeout_seconds": 4}
    assert Channel.objects.get().secret_encrypted is None

    document["notifications"]["rules"][0]["jobs"] = ["No such job"]
    with pytest.raises(ImportRefused, match="No such job"):
        import_jobs(document, by="tester")
    assert [j.name for j in Rule.objects.get().jobs.all()] == ["Partner feed"]  # nothing half-written


def test_relay_lag_is_on_health_and_the_dashboard(as_role, client: Client) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO domain_events (event_type, entity_type, entity_id, payload, occurred_at)"
            " VALUES ('JobFailed', 'job_execution', gen_random_uuid(), '{}', now() - interval '10 minutes')"
        )
    relay_check = client.get("/health/").json()["checks"]["event_relay"]
    assert relay_check["status"] == "fail" and relay_check["waiting"] == 1 and relay_check["lag_seconds"] >= 600
    page = as_role("Viewer").get(reverse("admin:index")).content.decode()
    assert 'data-figure="relay-lag"' in page and "1 event waiting" in page
    relay_until_idle()
    assert client.get("/health/").json()["checks"]["event_relay"]["status"] == "ok"


def test_the_channel_list_shows_each_last_delivery_at_a_constant_query_count(as_role) -> None:
    client = as_role("Viewer")
    url = reverse("admin:notifications_channel_changelist")

    def queries_with(count: int) -> int:
        for number in range(Channel.objects.count(), count):
            channel = Channel.objects.create(
                name=f"hook-{number}", kind="webhook", settings={"url": "https://h.example/"}
            )
            Delivery.objects.create(
                event_type="JobFailed", event_kind="job_failed", channel=channel, state="failed", subject="s", body="b"
            )
        with CaptureQueriesContext(connection) as captured:
            page = client.get(url).content.decode()
        assert page.count("failed 20") == count  # "failed <date>" badge of each channel's last delivery
        return len(captured)

    assert queries_with(1) == queries_with(4)
