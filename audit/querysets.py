"""Query helpers and the single writer of audit records and domain events."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, models

# One round trip writes both rows: the audit record and the domain event share the
# caller's transaction, so a rolled-back state change leaves neither behind.
_INSERT_AUDIT_AND_EVENT = """
WITH audit_row AS (
    INSERT INTO audit_log_entries (id, entity_type, entity_id, operation, performed_by, performed_at, details)
    VALUES (%(audit_id)s, %(entity_type)s, %(entity_id)s, %(operation)s, %(performed_by)s, now(), %(details)s)
    RETURNING performed_at
)
INSERT INTO domain_events (id, event_type, entity_type, entity_id, payload, occurred_at)
SELECT %(event_id)s, %(event_type)s, %(entity_type)s, %(entity_id)s, %(payload)s, performed_at FROM audit_row
"""

_INSERT_AUDIT_ONLY = """
INSERT INTO audit_log_entries (id, entity_type, entity_id, operation, performed_by, performed_at, details)
VALUES (%(audit_id)s, %(entity_type)s, %(entity_id)s, %(operation)s, %(performed_by)s, now(), %(details)s)
"""

# Audit rows must name an entity; things without a UUID of their own (a setting key,
# a Django user id) get a stable name-based UUID so their history can be followed.
_COURIER_NAMESPACE = uuid.UUID("5b0b8f0e-2f4c-4d43-9d0e-6f1f6a8c0d11")


def entity_uuid(value: Any) -> uuid.UUID:
    """Return value as a UUID, deriving a stable one from non-UUID identifiers."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return uuid.uuid5(_COURIER_NAMESPACE, str(value))


def actor_name(actor: Any) -> str:
    """The name an audit record keeps for whoever acted, so it outlives the user row."""
    if actor is None:
        return "system"
    if isinstance(actor, str):
        return actor
    username = getattr(actor, "get_username", None)
    return username() if callable(username) else str(actor)


def _json(value: Any) -> str:
    return json.dumps(value if value is not None else {}, cls=DjangoJSONEncoder)


class AuditLogEntryQuerySet(models.QuerySet):
    def record(
        self,
        *,
        entity_type: str,
        entity_id: Any,
        operation: str,
        performed_by: Any = None,
        details: dict[str, Any] | None = None,
        event_type: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> uuid.UUID:
        """Append one audit record and, when event_type is given, its domain event.

        Runs on the caller's connection and transaction: call it inside the same
        transaction.atomic() block as the state change it describes.
        """
        params = {
            "audit_id": uuid.uuid4(),
            "event_id": uuid.uuid4(),
            "entity_type": entity_type,
            "entity_id": entity_uuid(entity_id),
            "operation": operation,
            "performed_by": actor_name(performed_by),
            "details": _json(details),
            "event_type": event_type,
            "payload": _json(payload if payload is not None else {"operation": operation, **(details or {})}),
        }
        wrapper = connections[self.db]
        wrapper.ensure_connection()
        # A psycopg cursor on Django's own connection (same transaction): server-side
        # binding lets PostgreSQL keep the statement prepared, roughly halving the cost
        # of the thousands of audit writes a busy worker makes.
        with wrapper.wrap_database_errors, wrapper.connection.cursor() as cursor:
            cursor.execute(_INSERT_AUDIT_AND_EVENT if event_type else _INSERT_AUDIT_ONLY, params, prepare=True)
        return params["audit_id"]

    def for_entity(self, entity_type: str, entity_id: Any) -> AuditLogEntryQuerySet:
        """History of one entity, newest first (served by ix_audit_entity)."""
        return self.filter(entity_type=entity_type, entity_id=entity_uuid(entity_id)).order_by("-performed_at")

    def performed_between(self, start: datetime | None, end: datetime | None) -> AuditLogEntryQuerySet:
        """Records with start <= performed_at < end: the bound PostgreSQL prunes monthly partitions by."""
        return _between(self, "performed_at", start, end)

    def details_containing(self, fragment: dict[str, Any]) -> AuditLogEntryQuerySet:
        """Records whose details contain fragment (jsonb @>, served by ix_audit_details_gin)."""
        return self.filter(details__contains=fragment)


class DomainEventQuerySet(models.QuerySet):
    def unprocessed(self) -> DomainEventQuerySet:
        """Events not yet handled by a relay, oldest first (ix_domain_events_unprocessed)."""
        return self.filter(processed_at__isnull=True).order_by("occurred_at")

    def occurred_between(self, start: datetime | None, end: datetime | None) -> DomainEventQuerySet:
        """Events with start <= occurred_at < end (partition pruning on occurred_at)."""
        return _between(self, "occurred_at", start, end)


def _between(queryset: models.QuerySet, field: str, start: datetime | None, end: datetime | None) -> Any:
    bounds = {}
    if start is not None:
        bounds[f"{field}__gte"] = start
    if end is not None:
        bounds[f"{field}__lt"] = end
    return queryset.filter(**bounds)
