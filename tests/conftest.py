"""Test fixtures: a real PostgreSQL test database built by Courier's own `migrate` (SQL runner)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from courier_site.db import conninfo_for


@pytest.fixture(scope="session")
def django_db_modify_db_settings() -> None:
    """Keep the default settings; pytest-django creates test_<name> and runs our migrate on it."""


@pytest.fixture
def scratch_database(django_db_blocker) -> Iterator[str]:
    """An empty database of its own (for runner tests); yields its conninfo and drops it afterwards."""
    name = f"courier_scratch_{uuid.uuid4().hex[:10]}"
    with django_db_blocker.unblock():
        admin_conninfo = conninfo_for()
    with psycopg.connect(admin_conninfo, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(admin_conninfo)
    info["dbname"] = name
    try:
        yield psycopg.conninfo.make_conninfo(**info)
    finally:
        with psycopg.connect(admin_conninfo, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
