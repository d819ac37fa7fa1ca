"""Public key share links: token shown once, hash stored, expiry, revocation, counting, no login."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditLogEntry
from keystore.models import PublicKeyShareToken
from keystore.services import generate_pgp_key, generate_ssh_key
from keystore.sharing import ShareLinkRefused, create_link, revoke_link, token_hash
from system.models import SystemSetting

pytestmark = pytest.mark.django_db


@pytest.fixture
def enabled() -> None:
    SystemSetting.objects.filter(key="security.public_key_share_links_enabled").update(value="true")


def test_links_are_refused_while_the_setting_is_off() -> None:
    key = generate_pgp_key("k", "ecc_p256", by="admin")
    with pytest.raises(ShareLinkRefused, match=r"\[E4004\].*disabled"):
        create_link("pgp", key, days=7, by="admin")


def test_a_link_serves_the_public_key_without_login_and_counts(enabled, client: Client) -> None:
    key = generate_pgp_key("partner copy", "rsa_2048", by="admin")
    link, token = create_link("pgp", key, days=7, by="admin")
    assert link.token_hash == token_hash(token) and token not in link.token_hash

    response = client.get(reverse("shared-public-key", args=[token]), REMOTE_ADDR="203.0.113.9")

    assert response.status_code == 200
    assert response.content.decode() == key.public_key_data
    assert PublicKeyShareToken.objects.get(pk=link.pk).download_count == 1
    entry = AuditLogEntry.objects.get(entity_id=link.pk, operation="downloaded")
    assert entry.details["client_address"] == "203.0.113.9"


def test_expired_revoked_and_unknown_links_are_404(enabled, client: Client) -> None:
    key = generate_ssh_key("ssh", "ed25519", by="admin")
    expired, expired_token = create_link("ssh", key, days=1, by="admin")
    PublicKeyShareToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    revoked, revoked_token = create_link("ssh", key, days=1, by="admin")
    revoke_link(revoked, by="admin")
    for token in (expired_token, revoked_token, "not-a-token"):
        assert client.get(reverse("shared-public-key", args=[token])).status_code == 404


def test_link_lifetime_is_capped_by_the_setting(enabled) -> None:
    key = generate_pgp_key("k", "ecc_p256", by="admin")
    with pytest.raises(ShareLinkRefused, match="1 to 30 days"):
        create_link("pgp", key, days=31, by="admin")


def test_admin_creates_a_link_and_sees_the_token_once(enabled, client: Client, django_user_model) -> None:
    key = generate_pgp_key("shared", "ecc_p256", by="admin")
    user = django_user_model.objects.create_user(username="share-admin", password="x" * 16, is_staff=True)
    user.groups.add(Group.objects.get(name="Admin"))
    client.force_login(user)
    response = client.post(
        reverse("admin:keystore_publickeysharetoken_add"), {"key_choice": f"pgp:{key.pk}", "days": 5}, follow=True
    )
    text = response.content.decode()
    url = re.search(r"(http://testserver/share/[^/\s<]+/)", text).group(1)
    assert client.get(url).status_code == 200
    listing = client.get(reverse("admin:keystore_publickeysharetoken_changelist")).content.decode()
    assert url.split("/")[-2] not in listing


def test_operators_cannot_create_links(enabled, client: Client, django_user_model) -> None:
    user = django_user_model.objects.create_user(username="share-op", password="x" * 16, is_staff=True)
    user.groups.add(Group.objects.get(name="Operator"))
    client.force_login(user)
    assert client.get(reverse("admin:keystore_publickeysharetoken_add")).status_code == 403
