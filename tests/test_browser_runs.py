"""In a real browser, with real Celery workers: a job built in the console runs, a running one is watched and
cancelled, and a failed transfer shows its error code on the execution page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.urls import reverse
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from courier_site.roles import OPERATOR
from jobs.definitions import record_version
from jobs.models import Job, JobExecution
from tests.browser_support import (
    click_labelled,
    console_user,
    content_text,
    fill,
    row,
    row_text,
    shows_exactly,
    sign_in,
    tour_screenshot,
    wait,
)
from tests.celery_support import CeleryCluster, wait_for
from tests.engine_support import make_job
from tests.servers import SshServer, sftp_connection, ssh_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.celery]

# Longest a short run may take from the click to its end, worker start-up aside.
RUN_SECONDS = 45


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    with ssh_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def _add_step(driver: WebDriver, base_url: str, job: Job, type_key: str, fields: dict[str, str]) -> None:
    """The per-type step form opened for job, filled and saved; a form error fails the test with its text."""
    driver.get(f"{base_url}{reverse('admin:jobs_jobstep_add')}?job={job.pk}&type_key={type_key}")
    for name, value in fields.items():
        if name == "step_order" and not driver.find_elements(By.NAME, name):
            continue  # a form that numbers new steps itself
        fill(driver, name, value)
    driver.find_element(By.CSS_SELECTOR, "[name=_save]").click()
    wait(driver).until(
        lambda page: "/add/" not in page.current_url or page.find_elements(By.CSS_SELECTOR, ".errorlist")
    )
    assert not driver.find_elements(By.CSS_SELECTOR, ".errorlist"), content_text(driver)


def _run_now(driver: WebDriver, base_url: str, job: Job) -> JobExecution:
    """Run now from the job list, confirmed; returns the execution whose page the browser landed on."""
    driver.get(f"{base_url}{reverse('admin:jobs_job_changelist')}?q={job.name.split()[0]}")
    click_labelled(driver, "Run now")
    if "/jobexecution/" not in driver.current_url:  # a confirmation page names the version that will run
        click_labelled(driver, "Run", kinds=("button", "submit"))
    wait(driver).until(lambda page: "/jobexecution/" in page.current_url)
    execution = JobExecution.objects.get(job=job)
    assert str(execution.pk) in driver.current_url
    return execution


def _named_job(steps: list[tuple[str, str, dict[str, Any]]], name: str) -> Job:
    """A job of (type, step name, configuration) steps whose current version carries the step names."""
    job = make_job([(type_key, configuration) for type_key, _, configuration in steps], name=name, timeout=300)
    for order, (_, step_name, _) in enumerate(steps):
        job.steps.filter(step_order=order).update(name=step_name)
    record_version(job, created_by="tester")
    return job


def _row_if(driver: WebDriver, label: str, word: str) -> str | None:
    """The text of label's row once it holds word, else None."""
    text = row_text(driver, label)
    return text if word in text.lower() else None


def _state(execution: JobExecution) -> str:
    return JobExecution.objects.values_list("state", flat=True).get(pk=execution.pk)


def _settles(execution: JobExecution, timeout: float = RUN_SECONDS) -> str:
    """The execution's final state, once its worker is done with it."""
    return wait_for(
        lambda: (state := _state(execution)) in ("completed", "failed", "cancelled") and state,
        timeout,
        f"execution {execution.pk} to finish (now {_state(execution)})",
        interval=0.2,
    )


def test_an_operator_builds_a_three_step_job_in_the_console_and_runs_it_to_completion(
    browser: WebDriver, live_server: Any, django_user_model, console_workers: CeleryCluster
) -> None:
    console_workers.start_worker("w1", concurrency=2)
    inbox = console_workers.data_dir / "inbox"
    inbox.mkdir()
    (inbox / "report.csv").write_text("id,amount\n1,10\n2,20\n")
    outbox = console_workers.data_dir / "outbox"
    console_user(django_user_model, "olivia", OPERATOR)
    sign_in(browser, live_server.url, "olivia")

    browser.get(live_server.url + reverse("admin:jobs_job_add"))
    fill(browser, "name", "ACME reports outbound")
    fill(browser, "description", "Stages the daily report, dates it and hands it to the outbox.")
    browser.find_element(By.CSS_SELECTOR, "[name=_save]").click()
    job = wait(browser).until(lambda _page: Job.objects.filter(name="ACME reports outbound").first())

    # Path keys take paths as typed, one per line.
    steps = [
        ("file.copy", "Stage the report", {"source_path": f"{inbox}/report.csv", "destination_path": "staged/"}),
        ("file.rename", "Date the report", {"path": "staged/report.csv", "new_name": "report-2027-03-01.csv"}),
        (
            "file.copy",
            "Hand to the outbox",
            {"source_path": "staged/report-2027-03-01.csv", "destination_path": f"{outbox}/"},
        ),
    ]
    for order, (type_key, name, configuration) in enumerate(steps):
        fields = {"step_order": str(order), "name": name}
        fields.update({f"config__{key}": value for key, value in configuration.items()})
        _add_step(browser, live_server.url, job, type_key, fields)
    assert list(job.steps.order_by("step_order").values_list("name", flat=True)) == [name for _, name, _ in steps]

    execution = _run_now(browser, live_server.url, job)

    assert _settles(execution) == "completed", JobExecution.objects.get(pk=execution.pk).error_message
    # The page follows the run by itself: every step's row comes to read completed, without a reload.
    for _, name, _ in steps:
        wait(browser).until(lambda page, name=name: "completed" in row_text(page, name).lower())
    assert (outbox / "report-2027-03-01.csv").read_text() == "id,amount\n1,10\n2,20\n"
    browser.refresh()
    wait(browser).until(lambda page: shows_exactly(page, "completed"))
    tour_screenshot(browser, "execution-completed", focus=row(browser, "Hand to the outbox"))


def test_the_page_of_a_running_execution_updates_itself_and_cancels_it(
    browser: WebDriver, live_server: Any, django_user_model, console_workers: CeleryCluster
) -> None:
    job = _named_job([("test.sleep", "Wait for the partner", {"seconds": 120})], "Slow partner feed")
    console_user(django_user_model, "olivia", OPERATOR)
    sign_in(browser, live_server.url, "olivia")

    # No worker yet: the execution page opens on a queued run.
    execution = _run_now(browser, live_server.url, job)
    assert _state(execution) == "queued"
    wait(browser).until(lambda page: shows_exactly(page, "queued"))
    assert "running" not in row_text(browser, "Wait for the partner").lower()

    console_workers.start_worker("w1", concurrency=2)
    # From here on the test never reloads: the running step appears and its progress moves on the page.
    first = wait(browser, RUN_SECONDS).until(lambda page: _row_if(page, "Wait for the partner", "running"))
    wait(browser).until(lambda page: row_text(page, "Wait for the partner") not in ("", first))
    assert _state(execution) == "running"

    execution_page = browser.current_url
    click_labelled(browser, "Cancel")
    if browser.current_url != execution_page:  # a confirmation page first
        click_labelled(browser, "Cancel", kinds=("button", "submit"))
    wait(browser).until(lambda page: page.current_url == execution_page)

    assert _settles(execution, timeout=15) == "cancelled"
    wait(browser).until(lambda page: "cancel" in row_text(page, "Wait for the partner").lower())
    browser.refresh()
    wait(browser).until(lambda page: shows_exactly(page, "cancelled"))
    assert "running" not in row_text(browser, "Wait for the partner").lower()


def test_a_failed_transfer_shows_its_error_code_on_the_execution_page(
    browser: WebDriver,
    live_server: Any,
    django_user_model,
    console_workers: CeleryCluster,
    sshd: SshServer,
) -> None:
    connection = sftp_connection(sshd, name="ACME SFTP")
    job = _named_job(
        [
            (
                "sftp.download",
                "Fetch the statements",
                {"connection_id": str(connection.pk), "remote_path": "no-such-folder"},
            )
        ],
        "ACME statements inbound",
    )
    console_workers.start_worker("w1", concurrency=2)
    console_user(django_user_model, "olivia", OPERATOR)
    sign_in(browser, live_server.url, "olivia")

    execution = _run_now(browser, live_server.url, job)

    assert _settles(execution) == "failed"
    error = JobExecution.objects.get(pk=execution.pk).error_message
    assert "[E3005] cannot list no-such-folder" in error, error
    # The failed step's row shows the code and what went wrong, once the page has caught up by itself.
    wait(browser).until(lambda page: "[E3005]" in row_text(page, "Fetch the statements"))
    assert "no-such-folder" in row_text(browser, "Fetch the statements")
    browser.refresh()
    wait(browser).until(lambda page: shows_exactly(page, "failed"))
    assert "E3005" in content_text(browser)
    tour_screenshot(browser, "execution-failed", focus=row(browser, "Fetch the statements"))
