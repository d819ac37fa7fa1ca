"""PGP key lifecycle: expiry scan, retire, revoke, delete wipes, successors."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditLogEntry
from keystore import lifecycle
from keystore.errors import KeyNotUsable
from keystore.models import PgpKey
from keystore.services import generate_pgp_key

pytestmark = pytest.mark.django_db


def key(name: str, expires_in_days: int | None = None) -> PgpKey:
    created = generate_pgp_key(name, "ecc_curve25519", by="admin")
    if expires_in_days is not None:
        PgpKey.objects.filter(pk=created.pk).update(expires_at=timezone.now() + timedelta(days=expires_in_days))
    return PgpKey.objects.get(pk=created.pk)


def test_expiry_scan_moves_keys_to_expiring_then_retired(capsys: pytest.CaptureFixture[str]) -> None:
    soon, gone, later = key("soon", 10), key("gone", -1), key("later", 90)

    call_command("scan_key_expiry")

    assert "1 key(s) now expiring, 1 retired." in capsys.readouterr().out
    statuses = dict(PgpKey.objects.filter(pk__in=[soon.pk, gone.pk, later.pk]).values_list("name", "status"))
    assert statuses == {"soon": "expiring", "gone": "retired", "later": "active"}
    assert AuditLogEntry.objects.filter(entity_id=gone.pk, operation="expired", performed_by="system").exists()


def test_retired_keys_decrypt_and_verify_only_and_revoked_keys_nothing() -> None:
    retired, revoked = key("r"), key("x")
    lifecycle.retire(retired, by="admin")
    lifecycle.revoke(revoked, by="admin")
    lifecycle.check_use(retired, "decrypt")
    lifecycle.check_use(retired, "verify")
    with pytest.raises(KeyNotUsable, match=r"\[E4003\].*retired and cannot encrypt"):
        lifecycle.check_use(retired, "encrypt")
    for use in ("encrypt", "sign", "decrypt", "verify"):
        with pytest.raises(KeyNotUsable):
            lifecycle.check_use(revoked, use)
    with pytest.raises(KeyNotUsable):
        lifecycle.retire(revoked, by="admin")  # revoked is terminal


def test_delete_wipes_the_private_material() -> None:
    doomed = key("doomed")
    lifecycle.delete(doomed, by="admin")
    kept = PgpKey.all_objects.get(pk=doomed.pk)
    assert kept.status == "deleted" and kept.is_deleted and kept.private_key_data is None
    assert kept.public_key_data.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")


def test_encrypting_to_a_retired_key_uses_its_active_successor_and_says_so() -> None:
    old, new = key("2025"), key("2026")
    PgpKey.objects.filter(pk=old.pk).update(successor_key=new)
    lifecycle.retire(old, by="admin")
    chosen, note = lifecycle.encryption_key(PgpKey.objects.get(pk=old.pk))
    assert chosen.pk == new.pk and "successor" in note and old.short_key_id in note


def test_successor_chains_may_not_loop() -> None:
    first, second = key("a"), key("b")
    assert lifecycle.successor_problem(first, first) == "a key cannot be its own successor"
    PgpKey.objects.filter(pk=second.pk).update(successor_key=first)
    assert "loops back" in lifecycle.successor_problem(first, PgpKey.objects.get(pk=second.pk))


def test_a_key_past_its_expiry_cannot_encrypt_or_sign_before_the_daily_scan_retires_it() -> None:
    lapsed = key("lapsed", -1)
    assert lapsed.status == "active"
    for use in ("encrypt", "sign"):
        with pytest.raises(KeyNotUsable, match=r"\[E4003\].*expired at .* and cannot " + use):
            lifecycle.check_use(lapsed, use)
    lifecycle.check_use(lapsed, "decrypt")
    lifecycle.check_use(lapsed, "verify")


def test_encrypting_to_a_lapsed_key_uses_its_successor_before_the_daily_scan() -> None:
    old, new = key("2025", -1), key("2026")
    PgpKey.objects.filter(pk=old.pk).update(successor_key=new)
    chosen, note = lifecycle.encryption_key(PgpKey.objects.select_related("successor_key").get(pk=old.pk))
    assert chosen.pk == new.pk and "successor" in note


def test_the_change_form_cannot_change_a_key_status(client: Client, django_user_model) -> None:
    retired = key("retired")
    lifecycle.retire(retired, by="admin")
    user = django_user_model.objects.create_user(username="keys-admin", password="x" * 16, is_staff=True)
    user.groups.add(Group.objects.get(name="Admin"))
    client.force_login(user)
    url = reverse("admin:keystore_pgpkey_change", args=[retired.pk])
    page = client.get(url)
    assert page.status_code == 200 and 'name="status"' not in page.content.decode()

    response = client.post(url, {"name": "retired, renamed", "purpose": "", "status": "active", "successor_key": ""})

    assert response.status_code == 302, response.content.decode()[:1500]
    stored = PgpKey.objects.get(pk=retired.pk)
    assert stored.name == "retired, renamed" and stored.status == "retired"
    change = AuditLogEntry.objects.get(entity_id=retired.pk, operation="changed")
    assert change.details["fields"] == ["name"]
