"""The relay's notifications subscriber: matches events to rules and queues one delivery per channel.

Runs inside the relay's transaction: the deliveries it writes commit together with the events'
processed_at, and an event handed twice (a relay that died before committing) cannot queue a
second delivery to the same channel (ix_notification_deliveries_event_channel).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django.db import connection, transaction

from audit.relay import RelayedEvent
from notifications.models import Delivery, Rule
from notifications.routing import (
    FAILURE_KINDS,
    TAGGED_SUBJECTS,
    UNSCOPED_KINDS,
    Classified,
    classify,
    render,
    success_subject,
)
from tags.models import EntityTag

_wake_hooks: list[Callable[[], None]] = []


def on_deliveries_queued(hook: Callable[[], None]) -> None:
    """Register hook() to run after a transaction that queued deliveries commits (the sender's wake-up)."""
    if hook not in _wake_hooks:
        _wake_hooks.append(hook)


def wake_senders() -> None:
    for hook in _wake_hooks:
        hook()


@dataclass
class _RuleView:
    id: uuid.UUID
    events: frozenset[str]
    quiet: bool
    channel_ids: list[uuid.UUID]
    scope: dict[str, set[uuid.UUID]] = field(default_factory=dict)
    tag_ids: set[uuid.UUID] = field(default_factory=set)

    @property
    def scoped(self) -> bool:
        return bool(self.tag_ids or any(self.scope.values()))

    def covers(self, classified: Classified, subject_tags: set[uuid.UUID]) -> bool:
        if classified.kind not in self.events:
            return False
        if not self.scoped or classified.kind in UNSCOPED_KINDS:
            return True
        if classified.subject_id in self.scope.get(classified.subject_type, set()):
            return True
        return bool(self.tag_ids & subject_tags)


def _enabled_rules() -> list[_RuleView]:
    rules = (
        Rule.objects.filter(enabled=True)
        .prefetch_related("channels", "jobs", "chains", "monitors", "tags")
        .order_by("name")
    )
    views = []
    for rule in rules:
        channels = [channel.pk for channel in rule.channels.all() if channel.enabled]
        if not channels or not rule.events:
            continue
        views.append(
            _RuleView(
                id=rule.pk,
                events=frozenset(rule.events),
                quiet=rule.quiet,
                channel_ids=channels,
                scope={
                    "job": {job.pk for job in rule.jobs.all()},
                    "chain": {chain.pk for chain in rule.chains.all()},
                    "monitor": {monitor.pk for monitor in rule.monitors.all()},
                },
                tag_ids={tag.pk for tag in rule.tags.all()},
            )
        )
    return views


def _subject_tags(subjects: set[tuple[str, uuid.UUID]]) -> dict[tuple[str, uuid.UUID], set[uuid.UUID]]:
    wanted: dict[str, set[uuid.UUID]] = defaultdict(set)
    for subject_type, subject_id in subjects:
        if subject_type in TAGGED_SUBJECTS:
            wanted[TAGGED_SUBJECTS[subject_type]].add(subject_id)
    found: dict[tuple[str, uuid.UUID], set[uuid.UUID]] = defaultdict(set)
    back = {entity: subject for subject, entity in TAGGED_SUBJECTS.items()}
    for entity_type, ids in wanted.items():
        for entity_id, tag_id in EntityTag.objects.filter(entity_type=entity_type, entity_id__in=ids).values_list(
            "entity_id", "tag_id"
        ):
            found[(back[entity_type], entity_id)].add(tag_id)
    return found


class _QuietBook:
    """The failing streaks of quiet rules, read once per batch and written through."""

    def __init__(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT rule_id, event_kind, subject_type, subject_id FROM notification_quiet_subjects")
            self.rows = {tuple(row) for row in cursor.fetchall()}

    def first_failure(self, rule_id: uuid.UUID, classified: Classified) -> bool:
        """True when this failure opens a streak (send it); False when the rule already told of one."""
        key = (rule_id, classified.kind, classified.subject_type, classified.subject_id)
        with connection.cursor() as cursor:
            if key in self.rows:
                cursor.execute(
                    "UPDATE notification_quiet_subjects SET suppressed_count = suppressed_count + 1 "
                    "WHERE rule_id = %s AND event_kind = %s AND subject_type = %s AND subject_id = %s",
                    list(key),
                )
                return False
            cursor.execute(
                "INSERT INTO notification_quiet_subjects (rule_id, event_kind, subject_type, subject_id) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                list(key),
            )
        self.rows.add(key)
        return True

    def succeeded(self, subject_type: str, subject_id: uuid.UUID) -> None:
        if not any(row[2] == subject_type and row[3] == subject_id for row in self.rows):
            return
        with connection.cursor() as cursor:
            cursor.execute(
                "DELETE FROM notification_quiet_subjects WHERE subject_type = %s AND subject_id = %s",
                [subject_type, subject_id],
            )
        self.rows = {row for row in self.rows if not (row[2] == subject_type and row[3] == subject_id)}


def handle_events(events: Sequence[RelayedEvent]) -> None:
    """Relay subscriber: queue the deliveries the enabled rules ask for."""
    rules = _enabled_rules()
    if not rules:
        return
    kinds = set().union(*(rule.events for rule in rules))
    classified = [(event, classify(event)) for event in events]
    relevant = [(event, item) for event, item in classified if item is not None and item.kind in kinds]
    successes = [(event, success_subject(event)) for event in events]
    if not relevant and not any(subject for _, subject in successes):
        return
    tags = _subject_tags({(item.subject_type, item.subject_id) for _, item in relevant})
    book = _QuietBook()
    queued: list[Delivery] = []
    succeeded = {event.id: subject for event, subject in successes if subject}
    for event, item in classified:
        if event.id in succeeded:
            book.succeeded(*succeeded[event.id])
        if item is None or item.kind not in kinds:
            continue
        subject_tags = tags.get((item.subject_type, item.subject_id), set())
        channels: dict[uuid.UUID, uuid.UUID] = {}
        for rule in rules:
            if not rule.covers(item, subject_tags):
                continue
            if rule.quiet and item.kind in FAILURE_KINDS and not book.first_failure(rule.id, item):
                continue
            for channel_id in rule.channel_ids:
                channels.setdefault(channel_id, rule.id)
        if not channels:
            continue
        message = render(event, item)
        for channel_id, rule_id in channels.items():
            queued.append(
                Delivery(
                    event_id=event.id,
                    event_type=event.event_type,
                    event_kind=item.kind,
                    event_occurred_at=event.occurred_at,
                    channel_id=channel_id,
                    rule_id=rule_id,
                    subject=message.subject[:500],
                    body=message.body,
                    payload=message.payload,
                )
            )
    if queued:
        Delivery.objects.bulk_create(queued, ignore_conflicts=True)
        transaction.on_commit(wake_senders)
