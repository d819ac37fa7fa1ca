"""In a real browser against a real sshd: an Admin adds a connection and tests it, and approves a changed host key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from audit.models import AuditLogEntry
from connections import hostkeys
from connections.models import Connection, KnownHost
from connections.transfer.sessions import open_session
from courier_site.roles import ADMIN
from tests.browser_support import (
    click_labelled,
    console_user,
    content_text,
    fill,
    page_text,
    row,
    row_text,
    sign_in,
    tour_screenshot,
    wait,
)
from tests.servers import SFTP_PASSWORD, SFTP_USER, SshServer, sftp_connection, ssh_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    with ssh_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def _test_result(driver: WebDriver) -> str | None:
    text = content_text(driver)
    return text if "Connected" in text or "Failed" in text else None


def _test_from_the_list(driver: WebDriver, base_url: str, name: str) -> str:
    """Click "Test" in the connection's row of the list; returns the result page's text once it is shown."""
    driver.get(f"{base_url}{reverse('admin:connections_connection_changelist')}?q={name}")
    wait(driver).until(lambda page: name in row_text(page, name))
    row = driver.find_elements(By.XPATH, f"//*[@id='content']//tr[contains(normalize-space(.), '{name}')]")[-1]
    row.find_element(
        By.XPATH, ".//a[normalize-space(.)='Test' or contains(normalize-space(.), 'Test connection')]"
    ).click()
    return wait(driver).until(_test_result)


def test_an_admin_adds_an_sftp_connection_and_tests_it_against_the_partner(
    browser: WebDriver, live_server: Any, django_user_model, sshd: SshServer
) -> None:
    console_user(django_user_model, "ada", ADMIN)
    sign_in(browser, live_server.url, "ada")

    browser.get(live_server.url + reverse("admin:connections_connection_add"))
    for name, value in (
        ("name", "ACME SFTP"),
        ("protocol", "sftp"),
        ("host", "127.0.0.1"),
        ("port", str(sshd.port)),
        ("auth_method", "password"),
        ("username", SFTP_USER),
        ("new_password", SFTP_PASSWORD),
    ):
        fill(browser, name, value)
    browser.find_element(By.CSS_SELECTOR, "[name=_save]").click()
    connection = wait(browser).until(lambda _page: Connection.objects.filter(name="ACME SFTP").first())
    assert connection.password_encrypted and SFTP_PASSWORD.encode() not in bytes(connection.password_encrypted)

    result = _test_from_the_list(browser, live_server.url, "ACME SFTP")

    assert "Connected" in result, result
    assert f"127.0.0.1:{sshd.port}" in result
    trusted = KnownHost.objects.get(connection=connection)
    assert trusted.approved_by == "system", "trusted on first use"
    assert trusted.fingerprint in result, "the result names the host key it trusted"
    assert SFTP_PASSWORD not in browser.page_source
    tested = AuditLogEntry.objects.for_entity("connection", connection.pk).get(operation="tested")
    assert tested.details["ok"] is True


def test_an_admin_approves_a_changed_host_key_in_the_console_and_the_approval_is_audited(
    browser: WebDriver, live_server: Any, django_user_model, sshd: SshServer, tmp_path: Path
) -> None:
    connection = sftp_connection(sshd, name="Globex SFTP")
    open_session(connection, by="tester").close()  # trusted on first use
    old = KnownHost.objects.get(connection=connection).fingerprint
    console_user(django_user_model, "ada", ADMIN)
    sign_in(browser, live_server.url, "ada")

    # The partner moved to a server with another host key: Courier refuses it and keeps it pending.
    with ssh_server(tmp_path / "rekeyed", host_key_type="rsa") as rekeyed:
        Connection.objects.filter(pk=connection.pk).update(port=rekeyed.port)
        refused = _test_from_the_list(browser, live_server.url, "Globex SFTP")
        assert "[E3002]" in refused and "changed" in refused, refused
        pending = KnownHost.objects.get(connection=connection, approved_by=hostkeys.PENDING)
        assert pending.fingerprint != old

        browser.get(f"{live_server.url}{reverse('admin:connections_knownhost_changelist')}?q=Globex")
        wait(browser).until(lambda page: "waiting for approval" in row_text(page, pending.fingerprint))
        browser.find_element(By.CSS_SELECTOR, f"input[name=_selected_action][value='{pending.pk}']").click()
        fill(browser, "action", "approve_keys")
        tour_screenshot(browser, "host-key-approval", focus=row(browser, pending.fingerprint))
        click_labelled(browser, "Run", kinds=("button", "submit"))
        wait(browser).until(lambda page: "Approved 1 host key" in page_text(page))
        assert "trusted" in row_text(browser, pending.fingerprint)

        connection.refresh_from_db()
        assert connection.stored_host_fingerprint == pending.fingerprint
        assert list(KnownHost.objects.filter(connection=connection).values_list("fingerprint", flat=True)) == [
            pending.fingerprint
        ]
        approval = AuditLogEntry.objects.for_entity("connection", connection.pk).get(operation="host_key_approved")
        assert approval.performed_by == "ada"
        assert approval.details["fingerprint"] == pending.fingerprint

        assert "Connected" in _test_from_the_list(browser, live_server.url, "Globex SFTP")
