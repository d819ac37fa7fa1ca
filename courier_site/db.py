"""Helpers to reach the project's database outside Django's ORM connection."""

from __future__ import annotations

from django.db import connections
from psycopg.conninfo import make_conninfo


def conninfo_for(alias: str = "default") -> str:
    """A libpq connection string for the database Django uses under alias."""
    settings = connections[alias].settings_dict
    params = {
        "dbname": settings["NAME"],
        "user": settings.get("USER") or None,
        "password": settings.get("PASSWORD") or None,
        "host": settings.get("HOST") or None,
        "port": str(settings["PORT"]) if settings.get("PORT") else None,
    }
    params.update({key: value for key, value in (settings.get("OPTIONS") or {}).items() if isinstance(value, str)})
    return make_conninfo(**{key: value for key, value in params.items() if value is not None})
