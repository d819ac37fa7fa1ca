"""In a real browser, with real Celery workers: a chain execution's page follows its members to the end
without being reloaded."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from courier_site.roles import OPERATOR
from jobs import chains
from jobs.models import ChainExecution, JobChain, JobChainMember
from tests.browser_support import console_user, content_text, sign_in, wait
from tests.celery_support import CeleryCluster
from tests.engine_support import make_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.celery]

# Longest the two short members may take once a worker is up, its start-up included.
RUN_SECONDS = 60


def _live_state(driver: WebDriver) -> str:
    return driver.find_element(By.ID, "courier-chain-live").get_attribute("data-state")


def _member_states(driver: WebDriver) -> list[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#courier-chain-members tbody tr")
    return [found.get_attribute("data-member-state") for found in rows]


def test_the_chain_execution_page_updates_itself_until_the_chain_completes(
    browser: WebDriver, live_server: Any, django_user_model, console_workers: CeleryCluster
) -> None:
    chain = JobChain.objects.create(name="Month end")
    first = JobChainMember.objects.create(
        chain=chain, job=make_job([("test.sleep", {"seconds": 2})], name="Collect statements"), execution_order=0
    )
    JobChainMember.objects.create(
        chain=chain,
        job=make_job([("test.write", {"name": "done.txt", "text": "ok"})], name="Send the summary"),
        execution_order=1,
        depends_on_member=first,
    )
    console_user(django_user_model, "olivia", OPERATOR)
    sign_in(browser, live_server.url, "olivia")

    # No worker yet: the first member is queued, the second waits for it.
    execution = chains.trigger(chain, triggered_by="manual:olivia")
    browser.get(live_server.url + reverse("admin:jobs_chainexecution_change", args=[execution.pk]))
    wait(browser).until(lambda page: _live_state(page) == "running")
    assert _member_states(browser) == ["queued", "pending"]
    assert "0 of 2 members completed" in content_text(browser)
    browser.execute_script("window.courierNotReloaded = true;")

    console_workers.start_worker("w1", concurrency=2)
    # From here on the test never reloads: member by member the page moves on to the chain's end.
    wait(browser, RUN_SECONDS).until(lambda page: _member_states(page)[0] == "completed")
    wait(browser, RUN_SECONDS).until(lambda page: _live_state(page) == "completed")

    assert _member_states(browser) == ["completed", "completed"]
    text = content_text(browser)
    assert "2 of 2 members completed" in text and "Cancel chain" not in text and "● live" not in text
    assert browser.execute_script("return window.courierNotReloaded === true;"), "the page was reloaded"
    assert ChainExecution.objects.get(pk=execution.pk).state == "completed"
