"""In a real browser: signing in, the lockout message after repeated failures, and a Viewer's read-only console."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from courier_site.roles import OPERATOR, VIEWER
from tests.browser_support import console_user, page_text, sign_in, submit_sign_in, wait
from tests.engine_support import make_job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def lockout_limits(settings) -> None:
    settings.COURIER_LOGIN_MAX_FAILURES = 5
    settings.COURIER_LOGIN_LOCKOUT_MINUTES = 15


def test_an_operator_signs_in_and_lands_on_the_dashboard(
    browser: WebDriver, live_server: Any, django_user_model
) -> None:
    console_user(django_user_model, "olivia", OPERATOR)
    sign_in(browser, live_server.url, "olivia")
    assert browser.current_url.rstrip("/").endswith("/admin")
    assert "olivia" in page_text(browser).lower()


def test_the_fifth_wrong_password_shows_the_lockout_message_with_its_error_code(
    browser: WebDriver, live_server: Any, django_user_model
) -> None:
    console_user(django_user_model, "olivia", OPERATOR)
    for _attempt in range(5):
        submit_sign_in(browser, live_server.url, "olivia", "not-the-password")
        wait(browser).until(lambda page: page.find_elements(By.CSS_SELECTOR, ".errornote, .errorlist, [role=alert]"))
    text = page_text(browser)
    assert "[E1009] Too many failed sign-in attempts" in text
    assert "Try again in 15 minutes." in text

    # Locked means locked: the right password is refused too, with the same message.
    submit_sign_in(browser, live_server.url, "olivia", "browser-test-password-7")
    wait(browser).until(lambda page: "[E1009]" in page_text(page))
    assert "/admin/login/" in browser.current_url


def test_a_viewer_sees_jobs_but_no_button_that_changes_them(
    browser: WebDriver, live_server: Any, django_user_model
) -> None:
    console_user(django_user_model, "victor", VIEWER)
    job = make_job([("file.copy", {"source": "/tmp/in", "destination": "/tmp/out"})], name="nightly-invoices")
    sign_in(browser, live_server.url, "victor")

    browser.get(live_server.url + reverse("admin:jobs_job_changelist"))
    wait(browser).until(lambda page: "nightly-invoices" in page_text(page))
    assert not browser.find_elements(By.CSS_SELECTOR, f"a[href='{reverse('admin:jobs_job_add')}']")

    browser.get(live_server.url + reverse("admin:jobs_job_change", args=[job.pk]))
    wait(browser).until(lambda page: "nightly-invoices" in page_text(page))
    assert not browser.find_elements(By.CSS_SELECTOR, "input[name=_save], button[name=_save]")
    assert not browser.find_elements(By.CSS_SELECTOR, "input[name=_continue], button[name=_continue]")
    assert not browser.find_elements(By.CSS_SELECTOR, "a.deletelink, a[href$='/delete/']")
