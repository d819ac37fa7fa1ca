"""Browser-test support: headless Debian chromium driven by selenium against the live console."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from courier_site.db import conninfo_for
from tests.celery_support import ROOT, CeleryCluster, LiveDatabase

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = ROOT / "test-output" / "browser"
# README's operator tour: written only when COURIER_TOUR_SCREENSHOTS=1, then committed.
TOUR = ROOT / "docs" / "tour"
TOUR_WINDOW = (1280, 800)  # wide enough for the sidebar, small enough for ~100 KB
WAIT_SECONDS = 20
PAGE_LOAD_SECONDS = 60
DRIVER_COMMAND_SECONDS = 90
PASSWORD = "browser-test-password-7"


def chromium_or_skip() -> None:
    """Outside CI a machine without Debian's chromium skips; in CI (`bin/courier test` installs it) it fails."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing and os.environ.get("CI") != "true":
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install chromium chromium-driver)")
    assert not missing, f"the browser tests need {', '.join(missing)}"


def start_chromium(downloads: Path) -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    # Tests run as root in CI, where chromium's sandbox cannot start; /dev/shm is small there.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(argument)
    # Explicit paths keep Selenium Manager from trying to download a browser or a driver.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    # Bounded: a page that never loads, or a browser that stops answering, fails its test instead of
    # hanging the run (Selenium's own default is to wait for chromedriver forever).
    driver.set_page_load_timeout(PAGE_LOAD_SECONDS)
    driver.command_executor.client_config.timeout = DRIVER_COMMAND_SECONDS
    return driver


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    """Where the browser saves what a test downloads."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


@pytest.fixture
def browser(request: pytest.FixtureRequest, downloads: Path, settings: Any) -> Iterator[WebDriver]:
    chromium_or_skip()
    # The live server runs in the test's process: a fast hasher makes its sign-ins quick too.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    driver = start_chromium(downloads)
    try:
        yield driver
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(SCREENSHOTS / f"{request.node.name}.png"))
        driver.quit()


@pytest.fixture
def console_workers(live_server: Any, redis_url: str, tmp_path: Path, settings: Any) -> Iterator[CeleryCluster]:
    """Real Celery workers (started by the test) on the live server's database, sharing its data directory."""
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    settings.COURIER_DATA_DIR.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    group = CeleryCluster(LiveDatabase.from_conninfo(conninfo_for()), redis_url, settings.COURIER_DATA_DIR, logs)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture(scope="session", autouse=True)
def _fresh_screenshot_folder() -> None:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)


def tour_screenshot(driver: WebDriver, name: str, focus: Any = None) -> None:
    """With COURIER_TOUR_SCREENSHOTS=1, save what the operator sees as docs/tour/<name>.png (focus scrolled
    into view), in a modest window so that the picture stays small; the test's window comes back after."""
    if os.environ.get("COURIER_TOUR_SCREENSHOTS") != "1":
        return
    size = driver.get_window_size()
    driver.set_window_size(*TOUR_WINDOW)
    try:
        if focus is not None:
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", focus)
        TOUR.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(TOUR / f"{name}.png"))
    finally:
        driver.set_window_size(size["width"], size["height"])


def console_user(django_user_model: Any, username: str, role: str) -> Any:
    user = django_user_model.objects.create_user(username=username, password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    return user


def wait(driver: WebDriver, seconds: float = WAIT_SECONDS) -> WebDriverWait:
    """An explicit wait; elements a self-refreshing page replaced while being read are read again."""
    return WebDriverWait(driver, seconds, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))


def page_text(driver: WebDriver) -> str:
    """The text of the page's body. Read while the browser replaces the page (after a submit), the body
    found may belong to the old document: that is a stale element, which wait() reads again."""
    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except WebDriverException as error:
        if "does not belong to the document" in (error.msg or ""):
            raise StaleElementReferenceException(error.msg) from error
        raise


def content_text(driver: WebDriver) -> str:
    """The page's main content (Django admin's #content), without the navigation around it."""
    found = driver.find_elements(By.ID, "content")
    return found[0].text if found else page_text(driver)


_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def shows_exactly(driver: WebDriver, text: str) -> bool:
    """True when an element of the main content reads text and nothing else (a state cell, badge or field),
    case aside: a help text that merely mentions the word does not count."""
    lowered = text.lower()
    xpath = f"//*[@id='content']//*[translate(normalize-space(.), '{_UPPER}', '{_UPPER.lower()}') = '{lowered}']"
    return any(found.is_displayed() for found in driver.find_elements(By.XPATH, xpath))


def row(driver: WebDriver, label: str) -> Any:
    """The innermost table row of the main content naming label, or None."""
    rows = driver.find_elements(By.XPATH, f"//*[@id='content']//tr[contains(normalize-space(.), '{label}')]")
    return rows[-1] if rows else None


def row_text(driver: WebDriver, label: str) -> str:
    """Text of label's row ('' while there is none)."""
    found = row(driver, label)
    return found.text if found is not None else ""


def fill(driver: WebDriver, name: str, value: str) -> None:
    """Type value into the form field called name (a select picks the option of that value or label)."""
    field = wait(driver).until(lambda page: page.find_element(By.NAME, name))
    if field.tag_name == "select":
        choice = Select(field)
        values = [option.get_attribute("value") for option in choice.options]
        choice.select_by_value(value) if value in values else choice.select_by_visible_text(value)
        return
    field.clear()
    field.send_keys(value)


def _labelled(text: str, kinds: tuple[str, ...]) -> str:
    quoted = f"'{text}'" if "'" not in text else f'"{text}"'
    parts = {
        "link": f"//a[contains(normalize-space(.), {quoted})]",
        "button": f"//button[contains(normalize-space(.), {quoted})]",
        "submit": f"//input[@type='submit'][contains(@value, {quoted})]",
    }
    return " | ".join(parts[kind] for kind in kinds)


def click_labelled(driver: WebDriver, text: str, kinds: tuple[str, ...] = ("link", "button", "submit")) -> None:
    """Click the first visible link or button whose text holds text (how an operator finds it)."""

    def visible(page: WebDriver) -> Any:
        return next(
            (found for found in page.find_elements(By.XPATH, _labelled(text, kinds)) if found.is_displayed()), None
        )

    target = wait(driver).until(visible)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", target)
    target.click()


def downloaded(folder: Path, suffix: str) -> Path:
    """The one finished download ending in suffix, once the browser has written it."""

    def finished(_driver: Any) -> Path | None:
        found = [path for path in folder.iterdir() if path.name.endswith(suffix)]
        return found[0] if len(found) == 1 else None

    return WebDriverWait(None, WAIT_SECONDS).until(finished)


def submit_sign_in(driver: WebDriver, base_url: str, username: str, password: str) -> None:
    driver.get(f"{base_url}/admin/login/")
    wait(driver).until(expected_conditions.presence_of_element_located((By.NAME, "username")))
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "form [type=submit]").click()


def sign_in(driver: WebDriver, base_url: str, username: str) -> None:
    """Sign in through the login form and wait for the console to show the user's name."""
    submit_sign_in(driver, base_url, username, PASSWORD)
    wait(driver).until(lambda page: "/admin/login/" not in page.current_url)
