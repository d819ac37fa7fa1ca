"""`manage.py migrate` builds the whole schema: SQL scripts, Django tables and partitions."""

from __future__ import annotations

from datetime import date

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from courier_site import partitions, sqlmigrations

pytestmark = pytest.mark.django_db


def test_test_database_was_built_by_the_sql_runner() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT script_name, checksum FROM schema_versions ORDER BY script_name")
        recorded = cursor.fetchall()
    shipped = [(script.name, script.checksum) for script in sqlmigrations.discover(settings.COURIER_SQL_DIR)]
    assert recorded == shipped


def test_partitions_exist_for_this_month_and_the_next_two() -> None:
    today = date.today()
    for table in partitions.PARTITIONED_TABLES:
        health = partitions.table_health(table, retention_months=12, overdue_warning_months=2, today=today)
        assert health.missing_months == [], table


def test_migrate_again_is_a_no_op_that_reports_what_it_did(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("migrate", verbosity=1, interactive=False)
    output = capsys.readouterr().out
    assert "No SQL scripts to apply." in output
    assert "SQL scripts applied: 0; partitions ready for" in output


def test_partitions_are_created_ahead_for_a_later_date() -> None:
    later = date(2031, 5, 17)
    months = partitions.ensure_partitions(2, today=later)

    assert months == ["2031-05", "2031-06", "2031-07"]
    for table in partitions.PARTITIONED_TABLES:
        health = partitions.table_health(table, retention_months=12, overdue_warning_months=2, today=later)
        assert health.missing_months == []


def test_missing_coming_months_are_reported() -> None:
    far = date(2040, 1, 10)
    health = partitions.table_health("domain_events", retention_months=12, overdue_warning_months=2, today=far)
    assert health.missing_months == ["2040-01", "2040-02", "2040-03"]


@pytest.mark.parametrize(
    ("day", "offset", "expected"),
    [
        (date(2026, 11, 24), 0, date(2026, 11, 1)),
        (date(2026, 11, 24), 2, date(2027, 1, 1)),
        (date(2026, 1, 5), -1, date(2025, 12, 1)),
    ],
)
def test_month_start_moves_across_years(day: date, offset: int, expected: date) -> None:
    assert partitions.month_start(day, offset) == expected
