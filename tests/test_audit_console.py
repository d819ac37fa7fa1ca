"""The audit console: time-bounded filters, JSON containment search, CSV export and per-entity history links."""

from __future__ import annotations

import csv
import io
import re
import uuid
from datetime import datetime, timedelta
from html import unescape
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.admin import DEFAULT_WINDOW
from audit.models import AuditLogEntry, DomainEvent
from audit.querysets import entity_uuid
from courier_site.admin_base import AuditHistoryMixin
from courier_site.partitions import month_start
from courier_site.roles import ADMIN, OPERATOR, VIEWER
from jobs.models import Job
from system.models import SystemSetting

pytestmark = pytest.mark.django_db

AUDIT_LIST = "admin:audit_auditlogentry_changelist"
AUDIT_EXPORT = "admin:audit_auditlogentry_export"
# The object-tools link: an anchor whose text (after its icon) is "History in audit log".
HISTORY_LINK = re.compile(r'href="([^"]+)"[^>]*>\s*(?:<span[^>]*>\s*manage_search\s*</span>)?\s*History in audit log')


@pytest.fixture(autouse=True)
def past_partitions() -> None:
    """Partitions for the last three months, so records can be dated weeks back."""
    today = timezone.now().date()
    with connection.cursor() as cursor:
        for offset in (-3, -2, -1):
            cursor.execute("SELECT create_monthly_partitions(%s::date)", [month_start(today, offset)])


@pytest.fixture
def as_role(client: Client, django_user_model):
    def login(role: str) -> Client:
        user = django_user_model.objects.create_user(
            username=f"{role.lower()}1", password="pw-long-enough-1", is_staff=True
        )
        user.groups.add(Group.objects.get(name=role))
        client.force_login(user)
        return client

    return login


def record(
    operation: str = "changed",
    *,
    at: datetime | None = None,
    entity_type: str = "job",
    entity_id: Any = None,
    by: str = "operator1",
    details: dict[str, Any] | None = None,
) -> AuditLogEntry:
    """An audit row dated `at` (the writer always stamps now(), so tests insert directly)."""
    return AuditLogEntry.objects.create(
        entity_type=entity_type,
        entity_id=entity_id or uuid.uuid4(),
        operation=operation,
        performed_by=by,
        performed_at=at or timezone.now(),
        details=details or {},
    )


def listed(response: Any) -> set[str]:
    assert response.status_code == 200
    return {str(row.pk) for row in response.context["cl"].result_list}


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def exported(response: Any) -> list[list[str]]:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


# ----------------------------------------------------------------- time range


def test_the_default_list_shows_the_last_seven_days_and_says_so(as_role) -> None:
    recent = record(at=timezone.now() - timedelta(days=1))
    record(at=timezone.now() - DEFAULT_WINDOW - timedelta(days=1))

    response = as_role(VIEWER).get(reverse(AUDIT_LIST))

    assert listed(response) == {str(recent.pk)}
    assert "the last 7 days" in response.content.decode()


def test_a_from_date_looks_further_back(as_role) -> None:
    recent = record(at=timezone.now() - timedelta(days=1))
    older = record(at=timezone.now() - timedelta(days=20))
    record(at=timezone.now() - timedelta(days=40))
    since = timezone.localdate() - timedelta(days=25)

    response = as_role(VIEWER).get(reverse(AUDIT_LIST), {"performed_from": since.isoformat()})

    assert listed(response) == {str(recent.pk), str(older.pk)}


def test_a_to_date_includes_that_whole_day(as_role) -> None:
    day = timezone.localdate() - timedelta(days=10)
    late_that_day = timezone.make_aware(datetime.combine(day, datetime.min.time())) + timedelta(hours=23, minutes=59)
    inside = record(at=late_that_day)
    record(at=late_that_day + timedelta(minutes=2))

    response = as_role(VIEWER).get(
        reverse(AUDIT_LIST), {"performed_from": (day - timedelta(days=1)).isoformat(), "performed_to": day.isoformat()}
    )

    assert listed(response) == {str(inside.pk)}


def test_a_to_date_alone_shows_the_seven_days_before_it(as_role) -> None:
    end = timezone.localdate() - timedelta(days=20)
    end_of_day = timezone.make_aware(datetime.combine(end, datetime.min.time())) + timedelta(hours=12)
    inside = record(at=end_of_day - timedelta(days=3))
    record(at=end_of_day - timedelta(days=9))

    response = as_role(VIEWER).get(reverse(AUDIT_LIST), {"performed_to": end.isoformat()})

    assert listed(response) == {str(inside.pk)}


def test_a_bad_date_is_refused_with_a_clear_error(as_role) -> None:
    record()

    response = as_role(VIEWER).get(reverse(AUDIT_LIST), {"performed_from": "last tuesday"})

    assert listed(response) == set()
    assert any("[E6001]" in text and "'last tuesday' is not a date" in text for text in messages_of(response))


def test_a_range_that_ends_before_it_starts_is_refused(as_role) -> None:
    response = as_role(VIEWER).get(reverse(AUDIT_LIST), {"performed_from": "2026-03-02", "performed_to": "2026-03-01"})

    assert any("ends before it starts" in text for text in messages_of(response))


# ----------------------------------------------------------------- filters


def test_filters_by_entity_type_entity_id_operation_and_user(as_role) -> None:
    job_id = uuid.uuid4()
    wanted = record("run_refused", entity_type="job", entity_id=job_id, by="viewer7")
    record("run_refused", entity_type="job", entity_id=job_id, by="operator1")
    record("changed", entity_type="job", entity_id=job_id, by="viewer7")
    record("run_refused", entity_type="chain", entity_id=job_id, by="viewer7")
    record("run_refused", entity_type="job", by="viewer7")
    client = as_role(VIEWER)

    response = client.get(
        reverse(AUDIT_LIST),
        {"entity_type": "job", "entity_id": str(job_id), "operation": "run_refused", "performed_by": "viewer7"},
    )

    assert listed(response) == {str(wanted.pk)}
    assert len(listed(client.get(reverse(AUDIT_LIST), {"performed_by": "viewer7"}))) == 4
    assert len(listed(client.get(reverse(AUDIT_LIST), {"entity_type": "chain"}))) == 1


def test_an_unknown_entity_type_is_refused(as_role) -> None:
    record()

    response = as_role(VIEWER).get(reverse(AUDIT_LIST), {"entity_type": "spaceship"})

    assert listed(response) == set()
    assert any("unknown entity type 'spaceship'" in text for text in messages_of(response))


def test_the_entity_id_filter_accepts_a_setting_key(as_role) -> None:
    wanted = record(entity_type="system_setting", entity_id=entity_uuid("job.concurrency_limit"))
    record(entity_type="system_setting", entity_id=entity_uuid("job.temp_cleanup_days"))

    response = as_role(VIEWER).get(reverse(AUDIT_LIST), {"entity_id": "job.concurrency_limit"})

    assert listed(response) == {str(wanted.pk)}


def test_one_entitys_history_is_not_cut_to_seven_days(as_role) -> None:
    job_id = uuid.uuid4()
    old = record(entity_id=job_id, at=timezone.now() - timedelta(days=50))
    new = record(entity_id=job_id)
    record(at=timezone.now() - timedelta(days=50))

    response = as_role(VIEWER).get(reverse(AUDIT_LIST), {"entity_type": "job", "entity_id": str(job_id)})

    assert listed(response) == {str(old.pk), str(new.pk)}
    assert "whole history of this entity" in response.content.decode()


# ----------------------------------------------------------------- JSON containment


def test_details_containment_finds_the_records_holding_those_keys_and_values(as_role) -> None:
    acme = record(details={"job_name": "acme", "attempt": 2, "files": ["a.csv", "b.csv"]})
    record(details={"job_name": "globex", "attempt": 2})
    client = as_role(VIEWER)

    assert listed(client.get(reverse(AUDIT_LIST), {"details_contains": '{"job_name": "acme"}'})) == {str(acme.pk)}
    assert listed(client.get(reverse(AUDIT_LIST), {"details_contains": '{"files": ["b.csv"]}'})) == {str(acme.pk)}
    assert len(listed(client.get(reverse(AUDIT_LIST), {"details_contains": '{"attempt": 2}'}))) == 2
    assert listed(client.get(reverse(AUDIT_LIST), {"details_contains": '{"job_name": "initech"}'})) == set()


def test_details_that_are_not_json_show_a_clear_error_and_no_rows(as_role) -> None:
    record(details={"job_name": "acme"})

    response = as_role(VIEWER).get(reverse(AUDIT_LIST), {"details_contains": '{"job_name": acme}'})

    assert listed(response) == set()
    problems = [text for text in messages_of(response) if "[E6001]" in text]
    assert problems and "details filter is not valid JSON" in problems[0] and "character 14" in problems[0]


def test_details_must_be_a_json_object(as_role) -> None:
    response = as_role(VIEWER).get(reverse(AUDIT_LIST), {"details_contains": '["acme"]'})

    assert any("must be a JSON object" in text for text in messages_of(response))


def test_the_containment_search_can_use_the_gin_index() -> None:
    week_ago = timezone.now() - DEFAULT_WINDOW
    query = AuditLogEntry.objects.performed_between(week_ago, None).details_containing({"job_name": "acme"})
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT child.relname FROM pg_inherits JOIN pg_class child ON child.oid = pg_inherits.inhrelid"
            " WHERE pg_inherits.inhparent = 'ix_audit_details_gin'::regclass"
        )
        gin_partitions = {row[0] for row in cursor.fetchall()}
        # The test table is tiny; forbid the sequential scan to see whether the index applies.
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = query.explain()

    assert any(name in plan for name in gin_partitions), plan
    assert f"audit_log_entries_{month_start(timezone.now().date(), -3):%Y_%m}" not in plan


# ----------------------------------------------------------------- CSV export


def test_csv_export_holds_the_filtered_range_oldest_first(as_role) -> None:
    job_id = uuid.uuid4()
    first = record("created", entity_id=job_id, at=timezone.now() - timedelta(days=12), details={"version": 1})
    second = record("changed", entity_id=job_id, at=timezone.now() - timedelta(days=2), details={"version": 2})
    record("changed", entity_id=job_id, at=timezone.now() - timedelta(days=40))
    record("changed", at=timezone.now() - timedelta(days=2))
    since = (timezone.localdate() - timedelta(days=20)).isoformat()

    response = as_role(VIEWER).get(reverse(AUDIT_EXPORT), {"entity_id": str(job_id), "performed_from": since})

    rows = exported(response)
    assert rows[0] == ["performed_at", "performed_by", "operation", "entity_type", "entity_id", "details"]
    assert [row[2] for row in rows[1:]] == ["created", "changed"]
    assert rows[1][0] == first.performed_at.isoformat()
    assert rows[2][4] == str(job_id) and rows[2][5] == '{"version": 2}'
    assert second.performed_at.isoformat() == rows[2][0]
    assert 'filename="audit-log-' in response["Content-Disposition"]


def test_csv_export_without_a_range_holds_the_last_seven_days_only(as_role) -> None:
    record("recent", at=timezone.now() - timedelta(days=3))
    record("old", at=timezone.now() - timedelta(days=9))

    rows = exported(as_role(VIEWER).get(reverse(AUDIT_EXPORT)))

    assert [row[2] for row in rows[1:]] == ["recent"]


def test_csv_export_never_contains_a_secret_value(as_role) -> None:
    record(details={"connection": "acme-sftp", "password": "hunter2", "nested": {"api_key": "k-123"}})

    text = "\n".join(",".join(row) for row in exported(as_role(VIEWER).get(reverse(AUDIT_EXPORT))))

    assert "acme-sftp" in text
    assert "hunter2" not in text and "k-123" not in text


def test_csv_export_defuses_cells_a_spreadsheet_would_run(as_role) -> None:
    record(by='=HYPERLINK("http://evil")')

    rows = exported(as_role(VIEWER).get(reverse(AUDIT_EXPORT)))

    assert rows[1][1].startswith("'=")


def test_csv_export_with_a_refused_filter_goes_back_to_the_list(as_role) -> None:
    response = as_role(VIEWER).get(reverse(AUDIT_EXPORT), {"details_contains": "{oops"})

    assert response.status_code == 302
    assert response["Location"].startswith(reverse(AUDIT_LIST))
    assert "details_contains=%7Boops" in response["Location"]


def test_the_list_links_to_the_export_of_what_it_shows(as_role) -> None:
    response = as_role(VIEWER).get(reverse(AUDIT_LIST), {"performed_by": "operator1"})

    assert f"{reverse(AUDIT_EXPORT)}?performed_by=operator1" in unescape(response.content.decode())


# ----------------------------------------------------------------- read-only


def test_no_one_adds_changes_or_deletes_audit_records(as_role) -> None:
    entry = record()
    client = as_role(ADMIN)

    change, delete = (reverse(f"admin:audit_auditlogentry_{verb}", args=[entry.pk]) for verb in ("change", "delete"))

    assert client.get(reverse("admin:audit_auditlogentry_add")).status_code == 403
    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert client.post(change, {"operation": "x"}).status_code == 403
    assert AuditLogEntry.objects.get(pk=entry.pk).operation == "changed"


# ----------------------------------------------------------------- history links


def history_link(response: Any) -> str:
    assert response.status_code == 200
    match = HISTORY_LINK.search(response.content.decode())
    assert match, "no 'History in audit log' link on the page"
    return unescape(match.group(1))


def test_every_entity_page_offers_its_audit_history() -> None:
    expected = {
        "Job": "job",
        "JobChain": "chain",
        "ChainExecution": "chain_execution",
        "JobExecution": "job_execution",
        "Connection": "connection",
        "PgpKey": "pgp_key",
        "SshKey": "ssh_key",
        "FileMonitor": "file_monitor",
        "SystemSetting": "system_setting",
        "Tag": "tag",
        "Channel": "notification_channel",
        "Rule": "notification_rule",
    }
    found = {
        model.__name__: model_admin.audit_entity_type
        for model, model_admin in admin.site._registry.items()
        if isinstance(model_admin, AuditHistoryMixin)
    }

    assert found == expected
    assert set(found.values()) <= set(AuditLogEntry.EntityType.values)


def test_the_history_link_on_a_job_page_leads_to_that_jobs_records(as_role) -> None:
    job = Job.objects.create(name="Partner invoices")
    created = record("created", entity_type="job", entity_id=job.pk)
    changed = record("changed", entity_type="job", entity_id=job.pk)
    record("changed", entity_type="job")
    record("changed", entity_type="job_execution", entity_id=job.pk)
    client = as_role(OPERATOR)

    link = history_link(client.get(reverse("admin:jobs_job_change", args=[job.pk])))

    assert listed(client.get(link)) == {str(created.pk), str(changed.pk)}


def test_the_history_link_of_a_setting_finds_records_written_under_its_key(as_role) -> None:
    changed = record("changed", entity_type="system_setting", entity_id=entity_uuid("key.expiration_warning_days"))
    record("changed", entity_type="system_setting", entity_id=entity_uuid("job.concurrency_limit"))
    client = as_role(VIEWER)
    setting = SystemSetting.objects.get(key="key.expiration_warning_days")

    link = history_link(client.get(reverse("admin:system_systemsetting_change", args=[setting.pk])))

    assert listed(client.get(link)) == {str(changed.pk)}


# ----------------------------------------------------------------- domain events


def event(event_type: str, *, at: datetime | None = None, entity_id: Any = None) -> DomainEvent:
    return DomainEvent.objects.create(
        event_type=event_type,
        entity_type="job_execution",
        entity_id=entity_id or uuid.uuid4(),
        payload={},
        occurred_at=at or timezone.now(),
    )


def test_domain_events_default_to_the_last_seven_days_and_filter_by_type_and_entity(as_role) -> None:
    execution_id = uuid.uuid4()
    started = event("JobStarted", entity_id=execution_id)
    event("JobCompleted", entity_id=execution_id)
    event("JobStarted", at=timezone.now() - timedelta(days=10))
    client = as_role(VIEWER)
    events = reverse("admin:audit_domainevent_changelist")

    assert len(listed(client.get(events))) == 2
    assert listed(client.get(events, {"event_type": "JobStarted"})) == {str(started.pk)}
    assert len(listed(client.get(events, {"entity_id": str(execution_id)}))) == 2
    eleven_days_back = (timezone.localdate() - timedelta(days=11)).isoformat()
    assert len(listed(client.get(events, {"occurred_from": eleven_days_back}))) == 3
