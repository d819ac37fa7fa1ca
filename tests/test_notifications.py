"""Notifications end to end in one process: real job failures, the relay, and real webhook and SMTP receivers."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import pytest
from django.db import connection

from audit.models import AuditLogEntry, DomainEvent
from audit.relay import relay_until_idle
from connections import hostkeys
from connections.errors import HostKeyRejected
from connections.models import Connection, KnownHost
from courier_site import tasks as platform_tasks
from courier_site.envelope import keyring
from notifications.delivery import send_due, send_test
from notifications.models import Attempt, Channel, Delivery, Rule
from notifications.senders import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tags.models import EntityTag, Tag
from tests import engine_support
from tests.engine_support import make_job, run_inline
from tests.notify_support import mail_receiver, webhook_receiver

pytestmark = pytest.mark.django_db

SECRET = "whsec-test-" + uuid.uuid4().hex


def set_setting(key: str, value: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("UPDATE system_settings SET value = %s WHERE key = %s", [value, key])


def webhook_channel(url: str, *, timeout: int = 5, name: str | None = None) -> Channel:
    return Channel.objects.create(
        name=name or f"hook-{uuid.uuid4().hex[:6]}",
        kind="webhook",
        settings={"url": url, "timeout_seconds": timeout},
        secret_encrypted=keyring().seal(SECRET),
    )


def rule_for(channel: Channel, *events: str, quiet: bool = False, **scope: Any) -> Rule:
    rule = Rule.objects.create(name=f"rule-{uuid.uuid4().hex[:6]}", events=list(events), quiet=quiet)
    rule.channels.add(channel)
    for field, values in scope.items():
        getattr(rule, field).add(*values)
    return rule


def failing_job(name: str, key: str | None = None) -> Any:
    key = key or uuid.uuid4().hex
    engine_support.FLAKY_ATTEMPTS[key] = 0
    return make_job([("test.flaky", {"key": key, "failures": 1000})], name=name)


def relay_and_send() -> None:
    relay_until_idle(max_seconds=10)
    send_due(max_seconds=10)


def test_a_failed_job_sends_a_signed_webhook_naming_job_step_error_and_link() -> None:
    with webhook_receiver(200) as receiver:
        channel = webhook_channel(receiver.url)
        rule_for(channel, "job_failed")
        job = failing_job("partner-invoices")
        execution = run_inline(job)
        assert execution.state == "failed"

        relay_and_send()

        (call,) = receiver.wait_for(1, 5)
    assert verify(SECRET, call.headers[TIMESTAMP_HEADER], call.body, call.headers[SIGNATURE_HEADER])
    assert not verify("another-secret", call.headers[TIMESTAMP_HEADER], call.body, call.headers[SIGNATURE_HEADER])
    assert not verify(SECRET, call.headers[TIMESTAMP_HEADER], call.body + b" ", call.headers[SIGNATURE_HEADER])
    body = call.json
    assert body["event"] == "job_failed"
    assert body["job"]["name"] == "partner-invoices"
    assert body["execution"]["id"] == str(execution.pk)
    assert body["failed_step"]["type"] == "test.flaky"
    assert body["error"]["code"] == "E2050"
    assert "flaky failure 1 of 1000" in body["error"]["message"]
    assert body["link"].endswith(f"/admin/jobs/jobexecution/{execution.pk}/change/")
    assert call.headers["X-Courier-Event"] == "job_failed"
    delivery = Delivery.objects.get(event_kind="job_failed")
    assert delivery.state == "sent" and delivery.attempts == 1
    assert "partner-invoices" in delivery.subject and "E2050" in delivery.subject
    (attempt,) = Attempt.objects.filter(delivery=delivery)
    assert (attempt.outcome, attempt.response_code) == ("sent", 200)
    assert not DomainEvent.objects.filter(processed_at__isnull=True).exists()


def test_a_quiet_rule_tells_the_first_failure_only_until_the_job_succeeds_again() -> None:
    with webhook_receiver(200) as receiver:
        quiet_channel = webhook_channel(receiver.url, name="quiet")
        loud_channel = webhook_channel(receiver.url + "?loud=1", name="loud")
        rule_for(quiet_channel, "job_failed", quiet=True)
        rule_for(loud_channel, "job_failed", quiet=False)
        key = uuid.uuid4().hex
        job = make_job([("test.flaky", {"key": key, "failures": 3})], name="broken-partner")
        for _ in range(3):
            assert run_inline(job).state == "failed"
        relay_and_send()
        assert Delivery.objects.filter(channel=quiet_channel).count() == 1
        assert Delivery.objects.filter(channel=loud_channel).count() == 3
        with connection.cursor() as cursor:
            cursor.execute("SELECT suppressed_count FROM notification_quiet_subjects")
            assert cursor.fetchall() == [(2,)]

        assert run_inline(job).state == "completed"  # the fourth try passes: the streak ends
        relay_and_send()
        engine_support.FLAKY_ATTEMPTS[key] = 0  # broken again
        assert run_inline(job).state == "failed"
        relay_and_send()
        receiver.wait_for(5, 5)
    assert Delivery.objects.filter(channel=quiet_channel).count() == 2
    assert Delivery.objects.filter(channel=loud_channel).count() == 4


def test_a_rule_scoped_to_a_job_or_a_tag_ignores_other_jobs() -> None:
    with webhook_receiver(200) as receiver:
        by_job, by_tag = webhook_channel(receiver.url, name="by-job"), webhook_channel(receiver.url, name="by-tag")
        watched, tagged, other = failing_job("watched"), failing_job("tagged"), failing_job("other")
        finance = Tag.objects.create(name="finance")
        EntityTag.objects.create(tag=finance, entity_type="job", entity_id=tagged.pk)
        rule_for(by_job, "job_failed", jobs=[watched])
        rule_for(by_tag, "job_failed", tags=[finance])
        for job in (watched, tagged, other):
            run_inline(job)
        relay_and_send()
    assert [d.payload["job"]["name"] for d in Delivery.objects.filter(channel=by_job)] == ["watched"]
    assert [d.payload["job"]["name"] for d in Delivery.objects.filter(channel=by_tag)] == ["tagged"]


def test_step_failed_is_told_after_its_retries_not_for_each_attempt() -> None:
    with webhook_receiver(200) as receiver:
        channel = webhook_channel(receiver.url)
        rule_for(channel, "step_failed")
        key = uuid.uuid4().hex
        engine_support.FLAKY_ATTEMPTS[key] = 0
        policy = {"type": "retry_step", "max_retries": 2, "backoff_base_seconds": 0, "backoff_max_seconds": 0}
        job = make_job([("test.flaky", {"key": key, "failures": 10})], policy=policy, name="retried")
        assert run_inline(job).state == "failed"
        relay_and_send()
        (call,) = receiver.wait_for(1, 5)
    assert engine_support.FLAKY_ATTEMPTS[key] == 3
    assert call.json["event"] == "step_failed"
    assert "flaky failure 3 of 10" in call.json["error"]["message"]


def test_a_receiver_answering_500_then_200_gets_the_message_on_the_retry() -> None:
    set_setting("notifications.retry_base_seconds", "1")
    with webhook_receiver(500, 200) as receiver:
        channel = webhook_channel(receiver.url)
        rule_for(channel, "job_failed")
        run_inline(failing_job("retry-me"))
        relay_and_send()
        delivery = Delivery.objects.get()
        assert (delivery.state, delivery.attempts) == ("pending", 1)
        assert "[E8002]" in delivery.last_error and "500" in delivery.last_error
        assert send_due().sent == 0  # the back-off has not passed yet
        time.sleep(1.1)
        assert send_due().sent == 1
        calls = receiver.wait_for(2, 5)
    assert calls[0].body == calls[1].body
    assert [(a.outcome, a.response_code) for a in Attempt.objects.filter(delivery=delivery)] == [
        ("retry", 500),
        ("sent", 200),
    ]


def test_a_hanging_receiver_times_out_and_the_delivery_waits_for_a_retry() -> None:
    with webhook_receiver("hang") as receiver:
        channel = webhook_channel(receiver.url, timeout=1)
        rule_for(channel, "job_failed")
        run_inline(failing_job("slow-receiver"))
        relay_until_idle()
        started = time.monotonic()
        result = send_due()
        elapsed = time.monotonic() - started
    assert result.retrying == 1
    assert 0.9 <= elapsed < 5
    (attempt,) = Attempt.objects.all()
    assert attempt.outcome == "retry" and "[E8003]" in attempt.error and "within 1 s" in attempt.error
    assert attempt.duration_ms >= 900


def test_redirects_are_not_followed_and_fail_with_e8004() -> None:
    with webhook_receiver(200) as elsewhere, webhook_receiver((302, "")) as receiver:
        receiver.statuses = [(302, elsewhere.url)]
        channel = webhook_channel(receiver.url)
        rule_for(channel, "job_failed")
        run_inline(failing_job("moved"))
        relay_and_send()
        delivery = Delivery.objects.get()
    assert delivery.state == "failed"
    assert "[E8004]" in delivery.last_error
    assert elsewhere.received == []


def test_a_delivery_fails_after_the_configured_attempts() -> None:
    set_setting("notifications.max_attempts", "2")
    set_setting("notifications.retry_base_seconds", "0")
    with webhook_receiver(503) as receiver:
        channel = webhook_channel(receiver.url)
        rule_for(channel, "job_failed")
        run_inline(failing_job("always-down"))
        relay_and_send()
        send_due()
        receiver.wait_for(2, 5)
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.attempts) == ("failed", 2)
    assert [a.outcome for a in Attempt.objects.filter(delivery=delivery)] == ["retry", "failed"]


# Plain-text AUTH on loopback is what this test wants; aiosmtpd warns about it.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_email_goes_through_smtp_with_a_sealed_password_that_is_never_shown(caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    with mail_receiver(require_login=True) as mail:
        channel = Channel.objects.create(
            name="ops mail",
            kind="email",
            settings={
                "host": "127.0.0.1",
                "port": mail.port,
                "security": "none",
                "username": "courier",
                "from_address": "courier@example.com",
                "recipients": ["ops@example.com", "oncall@example.com"],
            },
            secret_encrypted=keyring().seal("mail-secret-42"),
        )
        rule_for(channel, "job_failed")
        execution = run_inline(failing_job("nightly-feed"))
        relay_and_send()
    assert mail.logins == [("courier", "mail-secret-42")]
    (message,) = mail.messages
    assert message["to"] == ["ops@example.com", "oncall@example.com"]
    assert "Subject: [Courier] job 'nightly-feed' failed: E2050" in message["content"]
    assert str(execution.pk) in message["content"]
    assert f"/admin/jobs/jobexecution/{execution.pk}/change/" in message["content"]
    assert b"mail-secret-42" not in bytes(Channel.objects.get().secret_encrypted)
    delivery = Delivery.objects.get()
    stored = f"{delivery.subject} {delivery.body} {delivery.payload} {delivery.last_error}"
    assert "mail-secret-42" not in stored
    assert "mail-secret-42" not in caplog.text


def test_a_permanent_smtp_refusal_fails_at_once_with_its_code() -> None:
    with mail_receiver() as mail:
        mail.reject_with = "550 5.1.1 mailbox unavailable"
        channel = Channel.objects.create(
            name="bad mailbox",
            kind="email",
            settings={"host": "127.0.0.1", "port": mail.port, "security": "none", "recipients": ["nobody@example.com"]},
        )
        rule_for(channel, "job_failed")
        run_inline(failing_job("refused"))
        relay_and_send()
    delivery = Delivery.objects.get()
    assert (delivery.state, delivery.attempts) == ("failed", 1)
    assert "[E8001]" in delivery.last_error and "550" in delivery.last_error
    assert Attempt.objects.get().response_code == 550


def test_a_changed_host_key_is_told_once_while_it_awaits_approval() -> None:
    with webhook_receiver(200) as receiver:
        channel = webhook_channel(receiver.url)
        rule_for(channel, "host_key_changed", quiet=True)
        partner = Connection.objects.create(
            name="acme",
            protocol="sftp",
            host="sftp.acme.example",
            port=22,
            username="u",
            auth_method="password",
            host_key_policy="manual",
        )
        KnownHost.objects.create(
            connection=partner, fingerprint="SHA256:old", key_type="ssh-ed25519", approved_by="admin"
        )
        for _ in range(3):
            with pytest.raises(HostKeyRejected):
                hostkeys.verify(partner, "ssh-ed25519", "SHA256:new")
        relay_and_send()
        (call,) = receiver.wait_for(1, 5)
    assert call.json["event"] == "host_key_changed"
    assert call.json["host_key"] == {"offered": "SHA256:new", "key_type": "ssh-ed25519", "trusted": ["SHA256:old"]}
    assert "approval needed" in call.json["summary"]


def test_a_missing_partition_is_told_and_its_repair_ends_the_streak() -> None:
    with webhook_receiver(200) as receiver:
        channel = webhook_channel(receiver.url)
        rule_for(channel, "partition_missing", quiet=True)
        # A partition creation that keeps failing: a coming month of job_executions is taken by a plain table.
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_char(date_trunc('month', now()) + interval '1 month', 'YYYY_MM')")
            (month,) = cursor.fetchone()
            cursor.execute(f"DROP TABLE job_executions_{month}")
            cursor.execute(f"CREATE TABLE job_executions_{month} (blocker int)")
        missing = platform_tasks.check_partitions()
        assert list(missing) == ["job_executions"]
        platform_tasks.check_partitions()  # still missing: quiet
        relay_and_send()
        (call,) = receiver.wait_for(1, 5)
        assert call.json["event"] == "partition_missing"
        assert "[E1004]" in call.json["error"]["message"]
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE job_executions_{month}")
        assert platform_tasks.check_partitions() == {}
        assert AuditLogEntry.objects.filter(operation="partitions_ready").count() == 1
        relay_until_idle()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM notification_quiet_subjects")
        assert cursor.fetchone() == (0,)


def test_the_test_action_sends_at_once_and_logs_the_outcome() -> None:
    with webhook_receiver(200) as receiver:
        channel = webhook_channel(receiver.url)
        delivery, result = send_test(channel, by="admin1")
        (call,) = receiver.wait_for(1, 5)
    assert delivery.state == "sent" and result.response_code == 200
    assert call.json["event"] == "test"
    audit = AuditLogEntry.objects.for_entity("notification_channel", channel.pk).get()
    assert audit.operation == "test_sent" and audit.performed_by == "admin1"
    with webhook_receiver(500) as receiver:
        channel.settings = {"url": receiver.url, "timeout_seconds": 2}
        channel.save()
        delivery, result = send_test(channel, by="admin1")
    assert delivery.state == "failed" and "[E8002]" in delivery.last_error
