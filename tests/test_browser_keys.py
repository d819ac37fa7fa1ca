"""In a real browser: an Admin generates a PGP key pair and downloads its public half, never the private one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from audit.models import AuditLogEntry
from courier_site.roles import ADMIN
from keystore.models import PgpKey
from tests.browser_support import console_user, downloaded, sign_in, wait

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_admin_generates_a_pgp_key_and_downloads_its_public_half(
    browser: WebDriver, live_server: Any, django_user_model, downloads: Path
) -> None:
    console_user(django_user_model, "ada", ADMIN)
    sign_in(browser, live_server.url, "ada")

    browser.get(live_server.url + reverse("admin:keystore_pgpkey_add"))
    wait(browser).until(lambda page: page.find_element(By.NAME, "name")).send_keys("Partner invoices 2027")
    Select(browser.find_element(By.NAME, "algorithm_choice")).select_by_value("ecc_curve25519")
    browser.find_element(By.NAME, "email").send_keys("mft@example.com")
    browser.find_element(By.CSS_SELECTOR, "[name=_save]").click()

    wait(browser).until(lambda page: PgpKey.objects.filter(name="Partner invoices 2027").exists())
    key = PgpKey.objects.get(name="Partner invoices 2027")
    public_url = reverse("admin:keystore_pgpkey_public", args=[key.pk])
    link = wait(browser).until(lambda page: page.find_element(By.CSS_SELECTOR, f"a[href='{public_url}']"))
    link.click()

    armored = downloaded(downloads, ".asc").read_text()
    assert armored.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert "PRIVATE KEY" not in armored
    assert AuditLogEntry.objects.for_entity("pgp_key", key.pk).filter(operation="public_key_exported").exists()
