"""The sender: claims due deliveries, sends each once, logs the attempt and schedules retries with back-off.

A claim takes a lease (state 'sending', next_attempt_at in the future) in its own short
transaction; the message then goes out with no transaction open, and the outcome is written in
another. A sender that dies mid-send leaves the lease to lapse and the delivery is sent again:
notifications are delivered at least once.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from audit.models import AuditLogEntry
from notifications.models import Attempt, Channel, Delivery
from notifications.senders import DEFAULT_SMTP_TIMEOUT, Message, SendResult, send
from system.values import setting_int

logger = logging.getLogger(__name__)

# Longer than the slowest send (SMTP timeout), so a live sender's lease never lapses.
LEASE_SECONDS = DEFAULT_SMTP_TIMEOUT * 3
RETRY_CAP_SECONDS = 6 * 3600

_CLAIM = """
UPDATE notification_deliveries SET state = 'sending', attempts = attempts + 1,
       next_attempt_at = clock_timestamp() + make_interval(secs => %s)
WHERE id = (
    SELECT id FROM notification_deliveries
    WHERE state IN ('pending', 'sending') AND next_attempt_at <= clock_timestamp()
    ORDER BY next_attempt_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING id
"""


@dataclass
class SendRound:
    sent: int = 0
    retrying: int = 0
    failed: int = 0


def retry_delay(attempts: int, base: int) -> int:
    """Seconds before the next try after attempts tries: base, 2 x base, 4 x base … capped at 6 h."""
    return int(min(base * 2 ** max(attempts - 1, 0), RETRY_CAP_SECONDS))


def claim_one() -> uuid.UUID | None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_CLAIM, [LEASE_SECONDS])
        row = cursor.fetchone()
    return row[0] if row else None


def message_of(delivery: Delivery) -> Message:
    return Message(delivery.subject, delivery.body, delivery.payload, delivery.event_kind, str(delivery.pk))


def send_due(*, max_seconds: float = 50.0) -> SendRound:
    """Send due deliveries one by one until none is due or max_seconds have passed."""
    result = SendRound()
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        delivery_id = claim_one()
        if delivery_id is None:
            break
        outcome = deliver(delivery_id)
        if outcome == "sent":
            result.sent += 1
        elif outcome == "retry":
            result.retrying += 1
        else:
            result.failed += 1
    return result


def deliver(delivery_id: uuid.UUID) -> str:
    """Send one claimed delivery and record the attempt; returns the attempt's outcome."""
    delivery = Delivery.objects.select_related("channel").get(pk=delivery_id)
    channel = delivery.channel
    if not channel.enabled:
        result = SendResult("failed", error=f"[E8000] channel '{channel.name}' is disabled")
    else:
        result = send(channel, message_of(delivery))
    return record(delivery, result)


def record(delivery: Delivery, result: SendResult) -> str:
    """Write the attempt and the delivery's new state; a retry past max attempts becomes failed."""
    max_attempts = setting_int("notifications.max_attempts", 5)
    base = setting_int("notifications.retry_base_seconds", 30)
    outcome = result.outcome
    if outcome == "retry" and delivery.attempts >= max_attempts:
        outcome = "failed"
    now = timezone.now()
    with transaction.atomic():
        Attempt.objects.create(
            delivery=delivery,
            attempt=delivery.attempts,
            started_at=now - timedelta(milliseconds=result.duration_ms),
            duration_ms=result.duration_ms,
            outcome=outcome,
            response_code=result.response_code,
            error=result.error,
        )
        fields: dict[str, Any] = {"last_error": result.error}
        if outcome == "sent":
            fields.update(state=Delivery.State.SENT, sent_at=now)
        elif outcome == "retry":
            fields.update(
                state=Delivery.State.PENDING,
                next_attempt_at=now + timedelta(seconds=retry_delay(delivery.attempts, base)),
            )
        else:
            fields.update(state=Delivery.State.FAILED)
        Delivery.objects.filter(pk=delivery.pk).update(**fields)
    if outcome == "failed":
        logger.warning(
            "notification %s to channel '%s' failed after %d attempts: %s",
            delivery.pk,
            delivery.channel.name,
            delivery.attempts,
            result.error,
        )
    return outcome


def send_test(channel: Channel, *, by: Any) -> tuple[Delivery, SendResult]:
    """Send a test message over channel now (the console's action); logged like any delivery and audited."""
    with transaction.atomic():
        delivery = Delivery.objects.create(
            event_type="TestNotification",
            event_kind="test",
            channel=channel,
            state=Delivery.State.SENDING,
            attempts=1,
            subject=f"[Courier] test notification for channel '{channel.name}'",
            body=(
                f"This is a test notification from Courier, sent by {by} to check the channel '{channel.name}'.\n"
                "Nothing failed."
            ),
            payload={"event": "test", "channel": channel.name, "summary": "Courier test notification"},
        )
    result = send(channel, message_of(delivery))
    delivery.channel = channel
    # A test is not retried: the operator sees its outcome at once and can send another.
    final = SendResult(
        "failed" if result.outcome == "retry" else result.outcome,
        result.response_code,
        result.error,
        result.duration_ms,
    )
    outcome = record(delivery, final)
    with transaction.atomic():
        AuditLogEntry.objects.record(
            entity_type="notification_channel",
            entity_id=channel.pk,
            operation="test_sent" if outcome == "sent" else "test_failed",
            performed_by=by,
            details={"delivery_id": str(delivery.pk), "response_code": result.response_code, "error": result.error},
        )
    delivery.refresh_from_db()
    return delivery, result
