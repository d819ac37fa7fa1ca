"""Every environment variable the settings read is documented in .env.example (SPEC: configuration)."""

from __future__ import annotations

import re

from tests.celery_support import ROOT

READ = re.compile(r"""\benv(?:\.[a-z]+)?\(\s*["']([A-Z][A-Z0-9_]*)["']""")
DOCUMENTED = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)


def test_every_variable_the_settings_read_is_in_env_example() -> None:
    read = set(READ.findall((ROOT / "courier_site" / "settings.py").read_text()))
    documented = set(DOCUMENTED.findall((ROOT / ".env.example").read_text()))

    assert len(read) > 20, "the pattern no longer finds the settings' env reads"
    assert read - documented == set()
