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
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.celery_support import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = ROOT / "test-output" / "browser"
WAIT_SECONDS = 20
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
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


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


@pytest.fixture(scope="session", autouse=True)
def _fresh_screenshot_folder() -> None:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)


def console_user(django_user_model: Any, username: str, role: str) -> Any:
    user = django_user_model.objects.create_user(username=username, password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    return user


def wait(driver: WebDriver) -> WebDriverWait:
    return WebDriverWait(driver, WAIT_SECONDS)


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
