"""The SQL migration runner: ordering, locking, failures and checksums (SPEC 2)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from courier_site import sqlmigrations
from courier_site.errors import MigrationChecksumChanged, MigrationScriptFailed, SchemaBehind


def write_scripts(folder: Path, scripts: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in scripts.items():
        (folder / name).write_text(text)
    return folder


def recorded_scripts(conninfo: str) -> list[str]:
    with psycopg.connect(conninfo) as conn:
        return [row[0] for row in conn.execute("SELECT script_name FROM schema_versions ORDER BY script_name")]


def table_exists(conninfo: str, table: str) -> bool:
    with psycopg.connect(conninfo) as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]


def test_project_scripts_apply_in_order_to_an_empty_database(scratch_database: str) -> None:
    applied = sqlmigrations.apply(scratch_database, settings.COURIER_SQL_DIR)

    shipped = [script.name for script in sqlmigrations.discover(settings.COURIER_SQL_DIR)]
    assert applied == shipped
    assert recorded_scripts(scratch_database) == shipped
    assert sqlmigrations.apply(scratch_database, settings.COURIER_SQL_DIR) == []


def test_only_numbered_sql_files_are_scripts(tmp_path: Path) -> None:
    folder = write_scripts(
        tmp_path / "sql",
        {"0002_b.sql": "", "0001_a.sql": "", "schema_deviations.txt": "", "notes.sql": "", "0003_c.sql.bak": ""},
    )
    assert [script.name for script in sqlmigrations.discover(folder)] == ["0001_a.sql", "0002_b.sql"]


def test_two_runners_started_at_once_apply_each_script_exactly_once(scratch_database: str, tmp_path: Path) -> None:
    # Each script appends a row, so a script applied twice would leave two rows.
    folder = write_scripts(
        tmp_path / "sql",
        {
            "0001_log.sql": "CREATE TABLE applied_log (script TEXT NOT NULL);",
            "0002_one.sql": "INSERT INTO applied_log VALUES ('0002'); SELECT pg_sleep(0.2);",
            "0003_two.sql": "INSERT INTO applied_log VALUES ('0003');",
        },
    )
    results: dict[str, list[str]] = {}

    def run(runner: str) -> None:
        results[runner] = sqlmigrations.apply(scratch_database, folder)

    # Hold the lock so both runners are provably waiting on it at the same time.
    with psycopg.connect(scratch_database, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (sqlmigrations.ADVISORY_LOCK_KEY,))
        runners = [threading.Thread(target=run, args=(name,)) for name in ("first", "second")]
        for runner in runners:
            runner.start()
        deadline = time.monotonic() + 10
        waiting = 0
        while time.monotonic() < deadline:
            waiting = holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
                (sqlmigrations.ADVISORY_LOCK_KEY,),
            ).fetchone()[0]
            if waiting == 2:
                break
            time.sleep(0.02)
        assert waiting == 2
        holder.execute("SELECT pg_advisory_unlock(%s)", (sqlmigrations.ADVISORY_LOCK_KEY,))
        for runner in runners:
            runner.join(timeout=20)

    assert sorted(results["first"] + results["second"]) == ["0001_log.sql", "0002_one.sql", "0003_two.sql"]
    assert [] in (results["first"], results["second"])
    with psycopg.connect(scratch_database) as conn:
        rows = [row[0] for row in conn.execute("SELECT script FROM applied_log ORDER BY script")]
    assert rows == ["0002", "0003"]


def test_failing_script_names_itself_and_leaves_earlier_scripts_applied(scratch_database: str, tmp_path: Path) -> None:
    folder = write_scripts(
        tmp_path / "sql",
        {
            "0001_good.sql": "CREATE TABLE good_table (id INT);",
            "0002_broken.sql": "CREATE TABLE half_table (id INT);\nSELECT * FROM no_such_table;",
            "0003_later.sql": "CREATE TABLE later_table (id INT);",
        },
    )

    with pytest.raises(MigrationScriptFailed) as failure:
        sqlmigrations.apply(scratch_database, folder)

    message = str(failure.value)
    assert message.startswith("[E1001]")
    assert "0002_broken.sql" in message
    assert 'relation "no_such_table" does not exist' in message
    assert recorded_scripts(scratch_database) == ["0001_good.sql"]
    assert table_exists(scratch_database, "good_table")
    assert not table_exists(scratch_database, "half_table")  # its transaction rolled back
    assert not table_exists(scratch_database, "later_table")  # the run stopped at the failure


def test_fixed_script_applies_on_the_next_run(scratch_database: str, tmp_path: Path) -> None:
    folder = write_scripts(tmp_path / "sql", {"0001_broken.sql": "SELECT * FROM missing_table;"})
    with pytest.raises(MigrationScriptFailed):
        sqlmigrations.apply(scratch_database, folder)

    write_scripts(folder, {"0001_broken.sql": "CREATE TABLE missing_table (id INT);"})

    assert sqlmigrations.apply(scratch_database, folder) == ["0001_broken.sql"]


def test_changed_applied_script_is_refused_and_nothing_new_runs(scratch_database: str, tmp_path: Path) -> None:
    folder = write_scripts(tmp_path / "sql", {"0001_first.sql": "CREATE TABLE first_table (id INT);"})
    sqlmigrations.apply(scratch_database, folder)
    write_scripts(
        folder,
        {
            "0001_first.sql": "CREATE TABLE first_table (id BIGINT);",
            "0002_second.sql": "CREATE TABLE second_table (id INT);",
        },
    )

    with pytest.raises(MigrationChecksumChanged) as refusal:
        sqlmigrations.apply(scratch_database, folder)

    assert str(refusal.value).startswith("[E1002] script 0001_first.sql was changed after it was applied")
    assert not table_exists(scratch_database, "second_table")


def test_schema_check_names_the_scripts_a_database_lacks(scratch_database: str, tmp_path: Path) -> None:
    folder = write_scripts(tmp_path / "sql", {"0001_a.sql": "SELECT 1;"})
    sqlmigrations.apply(scratch_database, folder)
    write_scripts(folder, {"0002_b.sql": "SELECT 2;"})

    with pytest.raises(SchemaBehind) as behind:
        sqlmigrations.check_schema_current(scratch_database, folder)

    assert "database schema is behind: run migrate on the web host first" in str(behind.value)
    assert "0002_b.sql" in str(behind.value)
    sqlmigrations.apply(scratch_database, folder)
    sqlmigrations.check_schema_current(scratch_database, folder)


def test_runner_waits_for_the_lock_rather_than_failing(scratch_database: str, tmp_path: Path) -> None:
    folder = write_scripts(tmp_path / "sql", {"0001_a.sql": "CREATE TABLE waited (id INT);"})
    outcome: list[list[str]] = []
    with psycopg.connect(scratch_database, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (sqlmigrations.ADVISORY_LOCK_KEY,))
        runner = threading.Thread(target=lambda: outcome.append(sqlmigrations.apply(scratch_database, folder)))
        runner.start()
        runner.join(timeout=0.5)
        assert runner.is_alive() and not table_exists(scratch_database, "waited")
        holder.execute("SELECT pg_advisory_unlock(%s)", (sqlmigrations.ADVISORY_LOCK_KEY,))
        runner.join(timeout=10)
    assert outcome == [["0001_a.sql"]]
