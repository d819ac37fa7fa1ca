"""The migrated database equals the reference schema, apart from the listed deviations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from courier_site.db import conninfo_for

SCHEMA_CHECK = settings.BASE_DIR.parent / "shared" / "tools" / "schema_check.py"


@pytest.mark.django_db
def test_schema_check_reports_zero_differences() -> None:
    assert SCHEMA_CHECK.exists(), f"reference checker not found at {SCHEMA_CHECK}"
    result = subprocess.run(
        [
            sys.executable,
            str(SCHEMA_CHECK),
            "--database-url",
            conninfo_for(),
            "--allow",
            str(settings.COURIER_SQL_DIR / "schema_deviations.txt"),
            "--quiet-extras",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "schema_check: 0 differences" in result.stdout


def test_every_deviation_is_explained() -> None:
    lines = Path(settings.COURIER_SQL_DIR / "schema_deviations.txt").read_text().splitlines()
    entries = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert entries
    for line in entries:
        name, _, reason = line.partition("#")
        assert len(name.split()) == 2 and reason.strip(), f"deviation without kind, name and reason: {line!r}"
