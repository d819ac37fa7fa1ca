"""The audit writer and the append-only audit log (SPEC 8)."""

from __future__ import annotations

import uuid

import pytest
from django.db import DatabaseError, connection, transaction

from audit.models import AuditLogEntry, DomainEvent
from audit.querysets import entity_uuid

pytestmark = pytest.mark.django_db


def record_job_started(job_id: uuid.UUID, **extra: object) -> uuid.UUID:
    return AuditLogEntry.objects.record(
        entity_type="job_execution",
        entity_id=job_id,
        operation="started",
        performed_by="alice",
        details={"job_name": "partner-invoices", **extra},
        event_type="JobStarted",
    )


def test_record_writes_an_audit_row_and_its_domain_event() -> None:
    execution_id = uuid.uuid4()

    audit_id = record_job_started(execution_id, attempt=2)

    entry = AuditLogEntry.objects.get(id=audit_id)
    assert (entry.entity_type, entry.entity_id, entry.operation, entry.performed_by) == (
        "job_execution",
        execution_id,
        "started",
        "alice",
    )
    assert entry.details == {"job_name": "partner-invoices", "attempt": 2}
    event = DomainEvent.objects.get(entity_id=execution_id)
    assert event.event_type == "JobStarted"
    assert event.payload["job_name"] == "partner-invoices"
    assert event.occurred_at == entry.performed_at
    assert event.processed_at is None


def test_record_without_event_type_writes_only_the_audit_row() -> None:
    entity = uuid.uuid4()
    AuditLogEntry.objects.record(entity_type="connection", entity_id=entity, operation="viewed", performed_by="bob")
    assert AuditLogEntry.objects.filter(entity_id=entity).count() == 1
    assert not DomainEvent.objects.filter(entity_id=entity).exists()


def test_rolled_back_transaction_leaves_neither_audit_row_nor_event() -> None:
    execution_id = uuid.uuid4()
    with pytest.raises(RuntimeError), transaction.atomic():
        record_job_started(execution_id)
        raise RuntimeError("state change failed after the audit call")

    assert not AuditLogEntry.objects.filter(entity_id=execution_id).exists()
    assert not DomainEvent.objects.filter(entity_id=execution_id).exists()


def test_actor_user_is_stored_by_name_so_the_record_outlives_the_user(django_user_model) -> None:
    user = django_user_model.objects.create_user(username="carol", password="x-very-long-password")
    entity = uuid.uuid4()
    AuditLogEntry.objects.record(entity_type="job", entity_id=entity, operation="edited", performed_by=user)
    user.delete()
    assert AuditLogEntry.objects.get(entity_id=entity).performed_by == "carol"


def test_non_uuid_identifiers_get_a_stable_entity_uuid() -> None:
    AuditLogEntry.objects.record(
        entity_type="system_setting", entity_id="job.concurrency_limit", operation="changed", performed_by="admin"
    )
    history = AuditLogEntry.objects.for_entity("system_setting", "job.concurrency_limit")
    assert [entry.operation for entry in history] == ["changed"]
    assert entity_uuid("job.concurrency_limit") == entity_uuid("job.concurrency_limit")
    assert entity_uuid(42) != entity_uuid(43)


def test_unknown_entity_type_is_refused_by_the_database() -> None:
    with pytest.raises(DatabaseError, match="ck_audit_entity_type"), transaction.atomic():
        AuditLogEntry.objects.record(entity_type="spaceship", entity_id=uuid.uuid4(), operation="x", performed_by="y")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log_entries SET operation = 'tampered' WHERE id = %s",
        "DELETE FROM audit_log_entries WHERE id = %s",
    ],
)
def test_database_refuses_to_change_or_delete_audit_rows(statement: str) -> None:
    audit_id = record_job_started(uuid.uuid4())

    with (
        pytest.raises(DatabaseError, match="audit_log_entries is append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement, [audit_id])

    assert AuditLogEntry.objects.get(id=audit_id).operation == "started"


def test_database_refuses_to_truncate_the_audit_log() -> None:
    audit_id = record_job_started(uuid.uuid4())
    with (
        pytest.raises(DatabaseError, match="append-only: TRUNCATE refused"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("TRUNCATE audit_log_entries")
    assert AuditLogEntry.objects.filter(id=audit_id).exists()


def test_orm_update_and_delete_of_audit_rows_are_refused_too() -> None:
    audit_id = record_job_started(uuid.uuid4())
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditLogEntry.objects.filter(id=audit_id).update(performed_by="mallory")
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditLogEntry.objects.filter(id=audit_id).delete()
    assert AuditLogEntry.objects.get(id=audit_id).performed_by == "alice"


def test_rows_land_in_the_current_month_partition() -> None:
    audit_id = record_job_started(uuid.uuid4())
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text, to_char(performed_at AT TIME ZONE 'UTC', 'YYYY_MM') "
            "FROM audit_log_entries WHERE id = %s",
            [audit_id],
        )
        partition, month = cursor.fetchone()
    assert partition == f"audit_log_entries_{month}"
