"""Test fixtures: a real PostgreSQL test database built by Courier's own `migrate` (SQL runner)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection
from psycopg import sql

from courier_site.db import conninfo_for
from tests.browser_support import (  # noqa: F401 (fixtures for test_browser_*)
    _fresh_screenshot_folder,
    browser,
    console_workers,
    downloads,
)
from tests.celery_support import LiveDatabase, live_database


def _private_broker() -> str:
    base = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    head, _, tail = base.rpartition("/")
    return f"{head}/13" if tail.isdigit() else f"{base.rstrip('/')}/13"


# Everything the tests publish goes to a Redis database of their own, never to the queue
# of a Courier running on the same server. Celery reads this variable at every use.
os.environ["CELERY_BROKER_URL"] = _private_broker()
# A queue of this test session's own: workers left over from an interrupted run cannot
# take its tasks.
os.environ["COURIER_QUEUE"] = f"courier-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True, scope="session")
def _session_queue() -> None:
    from django.conf import settings

    settings.COURIER_QUEUE = os.environ["COURIER_QUEUE"]


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


@pytest.fixture(scope="module")
def live(django_db_setup: Any, django_db_blocker: Any) -> Iterator[LiveDatabase]:
    """A database of the test module's own, migrated by `manage.py migrate`, for real worker processes."""
    with django_db_blocker.unblock(), live_database() as database:
        yield database


@pytest.fixture
def gpg_home(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Makes gpg command-line homes by name under tmp_path; the agents gpg starts in them are stopped after the test."""
    made: list[Path] = []

    def make(name: str) -> Path:
        home = tmp_path / name
        home.mkdir(mode=0o700)
        made.append(home)
        return home

    yield make
    for home in made:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ["CELERY_BROKER_URL"]


# Rows these tables hold are written by migrate (settings defaults, applied scripts) or may
# never be deleted (the append-only audit log refuses TRUNCATE; tests filter it by entity).
KEPT_TABLES = frozenset({"schema_versions", "system_settings", "audit_log_entries"})

_COURIER_TABLES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND c.relname NOT LIKE 'django\\_%%' AND c.relname NOT LIKE 'auth\\_%%'
ORDER BY c.relname
"""


def truncate_courier_tables(cursor: Any) -> list[str]:
    """Empty every hand-written Courier table but KEPT_TABLES (partitions go with their parent)."""
    cursor.execute(_COURIER_TABLES)
    tables = [row[0] for row in cursor.fetchall() if row[0] not in KEPT_TABLES]
    if tables:
        cursor.execute(
            sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(sql.SQL(", ").join(map(sql.Identifier, tables)))
        )
    return tables


def _is_transactional(request: pytest.FixtureRequest) -> bool:
    marker = request.node.get_closest_marker("django_db")
    if marker is not None and (marker.kwargs.get("transaction") or (marker.args and marker.args[0])):
        return True
    return bool({"transactional_db", "live_server"} & set(request.fixturenames))


@pytest.fixture(autouse=True)
def _empty_courier_tables_after_transactional_tests(
    request: pytest.FixtureRequest, django_db_blocker: Any
) -> Iterator[None]:
    """Tests that commit leave rows behind: Django's flush between them skips unmanaged tables.

    After each such test, every Courier table is emptied, so no later test meets its rows.
    """
    yield
    if not _is_transactional(request):
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        truncate_courier_tables(cursor)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[Any]:
    """Keep each phase's report on the test item, so fixtures (browser screenshots) can see a failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
