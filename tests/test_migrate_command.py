"""`manage.py migrate` builds the whole schema: SQL scripts, Django tables and partitions."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date

import psycopg
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


def _url_of(conninfo: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    credentials = info.get("user", "") + (f":{info['password']}" if info.get("password") else "")
    return f"postgresql://{credentials}@{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}/{info['dbname']}"


def _migrate_at_once(database_url: str, runs: int) -> list[subprocess.CompletedProcess[str]]:
    """`runs` separate `manage.py migrate` processes started together against one database."""
    env = {**os.environ, "DATABASE_URL": database_url}
    started = [
        subprocess.Popen(
            [sys.executable, "manage.py", "migrate", "--no-input"],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(runs)
    ]
    finished = []
    for process in started:
        try:
            stdout, stderr = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
        finished.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return finished


def test_four_migrate_commands_started_at_once_on_an_empty_database_all_succeed(scratch_database: str) -> None:
    url = _url_of(scratch_database)

    first_deploy = _migrate_at_once(url, 4)
    assert [run.returncode for run in first_deploy] == [0, 0, 0, 0], [run.stderr[-2000:] for run in first_deploy]
    second_deploy = _migrate_at_once(url, 4)
    assert [run.returncode for run in second_deploy] == [0, 0, 0, 0], [run.stderr[-2000:] for run in second_deploy]

    # Each SQL script ran once: exactly one of the first four runs applied it.
    shipped = [script.name for script in sqlmigrations.discover(settings.COURIER_SQL_DIR)]
    applying_runs = [run for run in first_deploy if "applying 0001_" in run.stdout]
    assert len(applying_runs) == 1
    assert all("No SQL scripts to apply." in run.stdout for run in second_deploy)
    with psycopg.connect(scratch_database) as conn:
        recorded = [row[0] for row in conn.execute("SELECT script_name FROM schema_versions ORDER BY script_name")]
        django_rows, distinct_rows = conn.execute(
            "SELECT count(*), count(DISTINCT (app, name)) FROM django_migrations"
        ).fetchone()
        groups = [row[0] for row in conn.execute("SELECT name FROM auth_group ORDER BY name")]
    assert recorded == shipped
    assert django_rows == distinct_rows > 0
    assert groups == ["Admin", "Operator", "Viewer"]
