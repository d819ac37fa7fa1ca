"""The event relay: hands unprocessed domain events to the registered subscribers, at least once.

domain_events is a transactional outbox: every state change writes its event in its own
transaction. The relay claims the oldest unprocessed events with FOR UPDATE SKIP LOCKED (two
relays never hold one event at once), hands them to every subscriber and sets processed_at in
the same transaction as the subscribers' own writes, so an event is either handled and marked,
or neither. A relay that dies mid-batch leaves its batch unmarked for the next one.

A subscriber that raises on an event makes that event (and only that event) wait: it is tried
again after a back-off and marked failed, with the error kept, after events.relay_max_attempts.
Subscribers are registered by the apps above this one (notifications) from AppConfig.ready.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connections, transaction
from django.utils import timezone

from system.values import setting_int

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 200
# Seconds before the first retry of an event whose handling failed; doubles each try.
RETRY_BASE_SECONDS = 2
RETRY_CAP_SECONDS = 600
RELAY_FAILED_CODE = "E8010"


@dataclass(frozen=True)
class RelayedEvent:
    id: uuid.UUID
    occurred_at: datetime
    event_type: str
    entity_type: str
    entity_id: uuid.UUID
    payload: dict[str, Any]
    attempts: int


Subscriber = Callable[[Sequence[RelayedEvent]], None]
_subscribers: dict[str, Subscriber] = {}


def register_subscriber(name: str, handler: Subscriber) -> None:
    """Register handler(events) under name; registering a name again replaces it."""
    _subscribers[name] = handler


def subscribers() -> dict[str, Subscriber]:
    return dict(_subscribers)


@dataclass
class RelayResult:
    handled: int = 0
    retrying: int = 0
    failed: int = 0

    @property
    def claimed(self) -> int:
        return self.handled + self.retrying + self.failed


_CLAIM = """
SELECT id, occurred_at, event_type, entity_type, entity_id, payload, relay_attempts
FROM domain_events
WHERE processed_at IS NULL AND (relay_retry_at IS NULL OR relay_retry_at <= clock_timestamp())
ORDER BY occurred_at
LIMIT %s
FOR UPDATE SKIP LOCKED
"""

_MARK_HANDLED = """
UPDATE domain_events SET processed_at = now(), processed_by = %s, relay_retry_at = NULL
WHERE id = ANY(%s) AND occurred_at >= %s AND occurred_at <= %s AND processed_at IS NULL
"""

_MARK_RETRY = """
UPDATE domain_events
SET relay_attempts = relay_attempts + 1, relay_error = %s,
    relay_retry_at = clock_timestamp() + make_interval(secs => %s)
WHERE id = %s AND occurred_at = %s
"""

_MARK_FAILED = """
UPDATE domain_events
SET relay_attempts = relay_attempts + 1, relay_error = %s, relay_retry_at = NULL,
    relay_failed_at = now(), processed_at = now(), processed_by = %s
WHERE id = %s AND occurred_at = %s
"""


def relay_name() -> str:
    """Who handled an event, kept in processed_by: host and process."""
    return f"relay@{socket.gethostname()}:{os.getpid()}"


def retry_delay(attempts: int) -> float:
    """Seconds until the next try after attempts failed tries (2, 4, 8 … capped at 10 minutes)."""
    return float(min(RETRY_BASE_SECONDS * 2 ** max(attempts - 1, 0), RETRY_CAP_SECONDS))


def relay_batch(*, limit: int = DEFAULT_BATCH, using: str = "default", name: str | None = None) -> RelayResult:
    """Claim up to limit due events, hand them to the subscribers and mark them, in one transaction."""
    name = name or relay_name()
    result = RelayResult()
    max_attempts = setting_int("events.relay_max_attempts", 5, using=using)
    with transaction.atomic(using=using):
        with connections[using].cursor() as cursor:
            cursor.execute(_CLAIM, [limit])
            events = [_event(row) for row in cursor.fetchall()]
        if not events:
            return result
        failures = _dispatch(events, using)
        handled = [event for event in events if event.id not in failures]
        with connections[using].cursor() as cursor:
            if handled:
                cursor.execute(
                    _MARK_HANDLED,
                    [
                        name,
                        [event.id for event in handled],
                        min(event.occurred_at for event in handled),
                        max(event.occurred_at for event in handled),
                    ],
                )
            for event in events:
                error = failures.get(event.id)
                if error is None:
                    continue
                message = f"[{RELAY_FAILED_CODE}] {error}"[:4000]
                if event.attempts + 1 >= max_attempts:
                    cursor.execute(_MARK_FAILED, [message, name, event.id, event.occurred_at])
                    result.failed += 1
                    logger.error(
                        "event %s (%s) failed %d times, giving up: %s",
                        event.id,
                        event.event_type,
                        event.attempts + 1,
                        error,
                    )
                else:
                    cursor.execute(_MARK_RETRY, [message, retry_delay(event.attempts + 1), event.id, event.occurred_at])
                    result.retrying += 1
                    logger.warning("event %s (%s) handling failed, will retry: %s", event.id, event.event_type, error)
    result.handled = len(events) - result.retrying - result.failed
    return result


def _dispatch(events: list[RelayedEvent], using: str) -> dict[uuid.UUID, str]:
    """Hand events to every subscriber; returns the error of each event that could not be handled.

    The whole batch goes in one savepoint first; only when a subscriber raises is the batch
    replayed one event per savepoint, so one bad event does not hold back the others.
    """
    handlers = list(_subscribers.items())
    try:
        with transaction.atomic(using=using):
            for _, handler in handlers:
                handler(events)
        return {}
    except Exception:
        logger.info("a subscriber failed on a batch of %d events; handling them one by one", len(events))
    failures: dict[uuid.UUID, str] = {}
    for event in events:
        try:
            with transaction.atomic(using=using):
                for subscriber_name, handler in handlers:
                    try:
                        handler([event])
                    except Exception as error:
                        raise _SubscriberFailed(f"{subscriber_name}: {type(error).__name__}: {error}") from error
        except _SubscriberFailed as failure:
            failures[event.id] = str(failure)
    return failures


class _SubscriberFailed(Exception):
    pass


def relay_until_idle(*, limit: int = DEFAULT_BATCH, max_seconds: float = 50.0, using: str = "default") -> RelayResult:
    """Relay batch after batch until nothing is due or max_seconds have passed."""
    total = RelayResult()
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        batch = relay_batch(limit=limit, using=using)
        total.handled += batch.handled
        total.retrying += batch.retrying
        total.failed += batch.failed
        if batch.claimed < limit:
            break
    return total


def _event(row: tuple[Any, ...]) -> RelayedEvent:
    # Django's connection hands jsonb over as text (JSONField decodes it); so does this query.
    payload = json.loads(row[5]) if isinstance(row[5], str | bytes) else row[5]
    return RelayedEvent(row[0], row[1], row[2], row[3], row[4], payload or {}, row[6])


def lag(*, using: str = "default", now: datetime | None = None) -> dict[str, Any]:
    """Age of the oldest unprocessed event, how many wait, and how many the relay gave up on (24 h)."""
    now = now or timezone.now()
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT min(occurred_at), count(*) FROM domain_events WHERE processed_at IS NULL")
        oldest, waiting = cursor.fetchone()
        cursor.execute(
            "SELECT count(*) FROM domain_events WHERE relay_failed_at IS NOT NULL AND relay_failed_at >= %s",
            [now - timedelta(hours=24)],
        )
        (failed,) = cursor.fetchone()
    age = max((now - oldest).total_seconds(), 0.0) if oldest else 0.0
    return {"lag_seconds": round(age, 1), "waiting": waiting, "failed_24h": failed}
