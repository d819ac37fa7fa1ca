"""Typed reads of system settings, with the documented default when a key is absent."""

from __future__ import annotations

from django.db import connections

from system.registry import TRUE_WORDS


def _raw(key: str, using: str) -> str | None:
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT value FROM system_settings WHERE key = %s", [key])
        row = cursor.fetchone()
    return row[0] if row else None


def setting_int(key: str, default: int, *, using: str = "default") -> int:
    """Integer setting; a missing or malformed value falls back to default."""
    value = _raw(key, using)
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def setting_bool(key: str, default: bool, *, using: str = "default") -> bool:
    """Boolean setting stored as 'true' / 'false'."""
    value = _raw(key, using)
    return default if value is None else value.strip().lower() in TRUE_WORDS
