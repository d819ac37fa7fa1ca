"""Maintenance commands: every Courier command answers --help, and cleanup_work_dirs removes orphaned work
directories only, saying how many and how much."""

from __future__ import annotations

import os
import time
from io import StringIO

import pytest
from django.core.management import ManagementUtility, call_command, get_commands
from django.core.management.base import CommandError

from courier_site.roles import COURIER_APPS
from jobs.engine import control
from jobs.engine.workdirs import work_dir, work_root
from tests.engine_support import make_job


def courier_commands() -> list[str]:
    return sorted(name for name, app in get_commands().items() if app in (*COURIER_APPS, "console"))


def test_courier_has_its_maintenance_commands() -> None:
    assert {
        "migrate",
        "partitions",
        "cleanup_work_dirs",
        "scan_key_expiry",
        "export_definitions",
        "import_definitions",
        "run_job",
        "rotate_master_key",
    } <= set(courier_commands())


@pytest.mark.parametrize("name", courier_commands())
def test_every_command_answers_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        ManagementUtility(["manage.py", name, "--help"]).execute()
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: manage.py " + name) and len(text.splitlines()) > 5


@pytest.fixture
def work_dirs(settings, tmp_path):
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    eight_days_ago = time.time() - 8 * 86400
    active = control.enqueue(make_job([("test.write", {"name": "a"})]), triggered_by="manual:tester")
    folders = {"old": work_root() / "old-orphan", "fresh": work_root() / "fresh-orphan", "active": work_dir(active.pk)}
    for folder in folders.values():
        folder.mkdir(parents=True)
        (folder / "left.bin").write_bytes(b"x" * 2048)
    for key in ("old", "active"):
        os.utime(folders[key], (eight_days_ago, eight_days_ago))
    return folders


def run(*args: str) -> str:
    out = StringIO()
    call_command("cleanup_work_dirs", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_cleanup_work_dirs_removes_old_orphans_and_says_how_much_it_freed(work_dirs) -> None:
    output = run()

    assert not work_dirs["old"].exists()
    assert work_dirs["fresh"].exists() and work_dirs["active"].exists()
    assert output.strip().splitlines() == [
        f"Removed 1 orphaned work directory older than 7 day(s) under {work_root()}, 2.0 KB freed."
    ]


@pytest.mark.django_db
def test_cleanup_work_dirs_dry_run_lists_and_removes_nothing(work_dirs) -> None:
    output = run("--dry-run", "--older-than-days", "0")

    assert all(folder.exists() for folder in work_dirs.values())
    lines = output.strip().splitlines()
    assert sorted(lines[:-1]) == [f"{work_dirs['fresh']}  2.0 KB", f"{work_dirs['old']}  2.0 KB"]
    assert lines[-1] == f"Would remove 2 orphaned work directories older than 0 day(s) under {work_root()}, 4.0 KB."


@pytest.mark.django_db
def test_cleanup_work_dirs_never_touches_an_active_execution_and_refuses_a_negative_age(work_dirs) -> None:
    run("--older-than-days", "0")
    assert work_dirs["active"].exists() and not work_dirs["fresh"].exists()
    with pytest.raises(CommandError, match="--older-than-days must be 0 or more"):
        run("--older-than-days", "-1")
