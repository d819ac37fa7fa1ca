"""Celery task of the event relay: drains due domain events to the subscribers."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from audit.relay import relay_until_idle


@shared_task(name="audit.relay_events", acks_late=True, ignore_result=True, expires=5)
def relay_events(max_seconds: float = 20.0) -> dict[str, Any]:
    """One clock tick of the relay: batches until nothing is due (bounded, so ticks never pile up)."""
    result = relay_until_idle(max_seconds=max_seconds)
    return {"handled": result.handled, "retrying": result.retrying, "failed": result.failed}
