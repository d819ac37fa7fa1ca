"""Celery task of the notification sender, woken after the relay queues deliveries and by the clock."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from notifications.delivery import send_due
from notifications.subscriber import on_deliveries_queued


@shared_task(name="notifications.send_due", acks_late=True, ignore_result=True, expires=60)
def send_due_notifications(max_seconds: float = 50.0) -> dict[str, Any]:
    """Send every due delivery (new ones, and retries whose back-off has passed)."""
    result = send_due(max_seconds=max_seconds)
    return {"sent": result.sent, "retrying": result.retrying, "failed": result.failed}


def _wake() -> None:
    send_due_notifications.apply_async(expires=60)


on_deliveries_queued(_wake)
