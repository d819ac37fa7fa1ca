"""In a real browser: a schedule with a bad cron expression is refused with E2012 and nothing is stored."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from courier_site.roles import OPERATOR
from jobs.models import JobSchedule
from tests.browser_support import console_user, page_text, sign_in, wait
from tests.engine_support import make_job

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_schedule_with_a_bad_cron_expression_shows_e2012_and_is_not_saved(
    browser: WebDriver, live_server: Any, django_user_model
) -> None:
    console_user(django_user_model, "olivia", OPERATOR)
    job = make_job([("file.copy", {"source": "/tmp/in", "destination": "/tmp/out"})], name="partner-feed")
    sign_in(browser, live_server.url, "olivia")

    browser.get(f"{live_server.url}{reverse('admin:jobs_jobschedule_add')}?job={job.pk}")
    cron = wait(browser).until(lambda page: page.find_element(By.NAME, "cron_expression"))
    cron.clear()
    cron.send_keys("61 * * * *")
    browser.find_element(By.CSS_SELECTOR, "[name=_save]").click()

    wait(browser).until(lambda page: "[E2012]" in page_text(page))
    error = page_text(browser)
    assert "61" in error.split("[E2012]", 1)[1].splitlines()[0], "the message names the value at fault"
    assert browser.find_element(By.NAME, "cron_expression").get_attribute("value") == "61 * * * *"
    assert not JobSchedule.objects.filter(job=job).exists()
