"""Tests that commit leave nothing behind for later tests: the shared truncate fixture (tests/conftest.py)."""

from __future__ import annotations

import pytest
from django.db import connection

from jobs.models import JobExecution
from system.models import SystemSetting
from tags.models import Tag
from tests.conftest import KEPT_TABLES, truncate_courier_tables
from tests.engine_support import make_job, run_inline

COMMITTED_TAG = "committed-by-a-transactional-test"


@pytest.mark.django_db(transaction=True)
def test_a_transactional_test_commits_a_row() -> None:
    Tag.objects.create(name=COMMITTED_TAG)
    assert Tag.objects.filter(name=COMMITTED_TAG).exists()


@pytest.mark.django_db(transaction=True)
def test_the_next_test_does_not_see_the_committed_row() -> None:
    # Runs right after the test above (pytest-django keeps file order among transactional
    # tests, which it runs after all the others): the committed tag was truncated away.
    assert not Tag.objects.filter(name=COMMITTED_TAG).exists()


@pytest.mark.django_db(transaction=True)
def test_truncate_empties_courier_tables_and_keeps_settings_and_scripts(tmp_path, settings) -> None:
    settings.COURIER_DATA_DIR = tmp_path
    settings.COURIER_ALLOWED_ROOTS = [tmp_path]
    job = make_job([("test.write", {"name": "a.txt"})], name="isolation")
    run_inline(job)
    assert JobExecution.objects.filter(job=job).exists()

    with connection.cursor() as cursor:
        emptied = truncate_courier_tables(cursor)

    assert {"jobs", "job_executions", "step_executions", "domain_events", "tags"} <= set(emptied)
    assert not KEPT_TABLES & set(emptied)
    assert not JobExecution.objects.exists()
    assert SystemSetting.objects.filter(key="job.concurrency_limit").exists()
