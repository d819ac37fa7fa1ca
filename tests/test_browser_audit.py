"""In a real browser: audit search with a JSON details filter, its refusal of bad JSON, and the CSV export."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from django.urls import reverse
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from audit.models import AuditLogEntry
from courier_site.roles import VIEWER
from tests.browser_support import console_user, downloaded, page_text, sign_in, wait

pytestmark = pytest.mark.django_db(transaction=True)


def _search_details(driver: WebDriver, base_url: str, text: str) -> None:
    """The list with its details filter set, as the filter panel's form submits it."""
    driver.get(f"{base_url}{reverse('admin:audit_auditlogentry_changelist')}?{urlencode({'details_contains': text})}")


def test_a_json_details_filter_finds_one_partners_records_and_exports_them_as_csv(
    browser: WebDriver, live_server: Any, django_user_model, downloads: Path
) -> None:
    for partner, operation in (("acme", "uploaded"), ("acme", "downloaded"), ("globex", "uploaded")):
        AuditLogEntry.objects.record(
            entity_type="job", entity_id=partner, operation=operation, details={"partner": partner}
        )
    console_user(django_user_model, "victor", VIEWER)
    sign_in(browser, live_server.url, "victor")

    _search_details(browser, live_server.url, '{"partner": "acme"}')
    wait(browser).until(lambda page: "downloaded" in page_text(page))
    assert "globex" not in page_text(browser)

    browser.find_element(By.ID, "courier-export").click()
    with downloaded(downloads, ".csv").open(newline="") as exported:
        rows = list(csv.DictReader(exported))
    assert sorted(row["operation"] for row in rows) == ["downloaded", "uploaded"]
    assert all('"acme"' in row["details"] for row in rows)


def test_a_details_filter_that_is_not_json_is_refused_with_a_message_naming_the_problem(
    browser: WebDriver, live_server: Any, django_user_model
) -> None:
    console_user(django_user_model, "victor", VIEWER)
    sign_in(browser, live_server.url, "victor")
    _search_details(browser, live_server.url, '{"partner": acme}')
    wait(browser).until(lambda page: "not valid JSON" in page_text(page))
