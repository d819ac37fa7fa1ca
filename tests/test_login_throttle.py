"""Console sign-in throttling: repeated failures lock a username or an address for a while, audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client, RequestFactory
from django.urls import reverse

from audit.models import AuditLogEntry
from courier_site.roles import OPERATOR
from system.models import LoginThrottle
from system.signin import client_address

pytestmark = pytest.mark.django_db

PASSWORD = "the-right-password-1"
WRONG = "a-wrong-guess-42"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fast_hashing(settings) -> None:
    # Every attempt hashes a password; the production hasher would make these tests slow.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.COURIER_LOGIN_MAX_FAILURES = 5
    settings.COURIER_LOGIN_LOCKOUT_MINUTES = 15


@pytest.fixture
def alice(django_user_model) -> Any:
    user = django_user_model.objects.create_user(username="alice", password=PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=OPERATOR))
    return user


def sign_in(client: Client, username: str, password: str, address: str = "203.0.113.10") -> Any:
    return client.post(
        reverse("admin:login"),
        {"username": username, "password": password, "next": reverse("admin:index")},
        REMOTE_ADDR=address,
    )


def error_text(response: Any) -> str:
    return " ".join(response.context["form"].non_field_errors())


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def fail(client: Client, times: int, username: str = "alice", *, addresses: bool = True) -> Any:
    """Fail `times` sign-ins; each from its own address unless addresses=False (then one address)."""
    response = None
    for attempt in range(times):
        response = sign_in(client, username, WRONG, f"203.0.113.{attempt + 20}" if addresses else "198.51.100.7")
    return response


def test_four_failures_show_the_ordinary_error_and_the_fifth_locks_the_username(client: Client, alice) -> None:
    fourth = fail(client, 4)
    fifth = sign_in(client, "alice", WRONG, "203.0.113.99")

    assert "Please enter the correct username and password" in error_text(fourth)
    assert error_text(fifth) == (
        "[E1009] Too many failed sign-in attempts: sign-in is temporarily locked. Try again in 15 minutes."
    )
    assert "[E1009]" in fifth.content.decode()


def test_a_locked_username_is_refused_even_with_the_right_password(client: Client, alice) -> None:
    fail(client, 5)

    response = sign_in(client, "alice", PASSWORD, "203.0.113.200")

    assert response.status_code == 200
    assert "[E1009]" in error_text(response)
    assert not signed_in(client)


def test_the_lock_message_does_not_tell_whether_the_username_exists(client: Client, alice) -> None:
    fail(client, 5, "alice")
    fail(client, 5, "nobody-here")

    real = sign_in(client, "alice", WRONG, "203.0.113.201")
    unknown = sign_in(client, "nobody-here", WRONG, "203.0.113.202")

    assert error_text(real) == error_text(unknown)


def test_each_failure_and_the_lockout_are_audited_with_the_address_and_never_the_password(
    client: Client, alice
) -> None:
    fail(client, 5)

    failures = list(AuditLogEntry.objects.for_entity("user", alice.pk).filter(operation="login_failed"))
    [lock] = AuditLogEntry.objects.for_entity("user", alice.pk).filter(operation="login_locked")
    assert len(failures) == 5
    assert {entry.details["address"] for entry in failures} == {f"203.0.113.{n}" for n in range(20, 25)}
    assert all(entry.details["username"] == "alice" for entry in failures)
    assert lock.details["scope"] == "username"
    assert lock.details["failures"] == 5
    every_detail = str(list(AuditLogEntry.objects.filter(entity_type="user").values_list("details", flat=True)))
    assert WRONG not in every_detail and PASSWORD not in every_detail


def test_an_attempt_refused_by_the_lock_is_audited_too(client: Client, alice) -> None:
    fail(client, 5)

    sign_in(client, "alice", PASSWORD, "203.0.113.203")

    [refusal] = AuditLogEntry.objects.for_entity("user", alice.pk).filter(operation="login_refused")
    assert refusal.details["reason"] == "locked"
    assert refusal.details["address"] == "203.0.113.203"


def test_failures_from_one_address_lock_that_address_for_every_username(client: Client, alice) -> None:
    for number in range(5):
        sign_in(client, f"guess{number}", WRONG, "198.51.100.7")

    from_there = sign_in(client, "alice", PASSWORD, "198.51.100.7")
    from_elsewhere = sign_in(client, "alice", PASSWORD, "198.51.100.8")

    assert "[E1009]" in error_text(from_there)
    assert from_elsewhere.status_code == 302
    assert AuditLogEntry.objects.filter(operation="login_locked", details__scope="address").count() == 1


def test_a_successful_sign_in_resets_the_count(client: Client, alice) -> None:
    fail(client, 4)
    assert sign_in(client, "alice", PASSWORD).status_code == 302
    client.logout()

    fourth_again = fail(client, 4)
    after = sign_in(client, "alice", PASSWORD)

    assert "[E1009]" not in error_text(fourth_again)
    assert after.status_code == 302


def test_the_lock_ends_after_the_lockout_minutes(client: Client, alice) -> None:
    with time_machine.travel(START, tick=False):
        fail(client, 5)
    with time_machine.travel(START + timedelta(minutes=14, seconds=59), tick=False):
        still_locked = sign_in(client, "alice", PASSWORD)
    with time_machine.travel(START + timedelta(minutes=15, seconds=1), tick=False):
        unlocked = sign_in(client, "alice", PASSWORD)
        now_signed_in = signed_in(client)

    assert error_text(still_locked).endswith("Try again in 1 minute.")
    assert unlocked.status_code == 302
    assert now_signed_in


def test_failures_spread_over_more_than_the_window_do_not_lock(client: Client, alice) -> None:
    with time_machine.travel(START, tick=False):
        fail(client, 4)
    with time_machine.travel(START + timedelta(minutes=16), tick=False):
        fifth = sign_in(client, "alice", WRONG)
        after = sign_in(client, "alice", PASSWORD)

    assert "[E1009]" not in error_text(fifth)
    assert after.status_code == 302


def test_after_a_lock_ends_a_fresh_run_of_failures_is_needed_to_lock_again(client: Client, alice, settings) -> None:
    settings.COURIER_LOGIN_LOCKOUT_MINUTES = 15
    with time_machine.travel(START, tick=False):
        fail(client, 5)
    with time_machine.travel(START + timedelta(minutes=16), tick=False):
        one_more = sign_in(client, "alice", WRONG)

    assert "[E1009]" not in error_text(one_more)
    assert LoginThrottle.objects.get(scope="username", identifier="alice").failure_count == 1


def test_old_counters_are_pruned(client: Client, alice) -> None:
    with time_machine.travel(START, tick=False):
        sign_in(client, "someone-else", WRONG, "203.0.113.50")
    with time_machine.travel(START + timedelta(minutes=30), tick=False):
        sign_in(client, "alice", WRONG, "203.0.113.51")

    assert set(LoginThrottle.objects.values_list("identifier", flat=True)) == {"alice", "203.0.113.51"}


def test_usernames_are_counted_regardless_of_letter_case(client: Client, alice) -> None:
    for username in ("alice", "Alice", "ALICE", "aLiCe", "alicE"):
        sign_in(client, username, WRONG, "203.0.113.77")

    # A new address each time would not help either: the username itself is locked.
    assert "[E1009]" in error_text(sign_in(client, "alice", PASSWORD, "203.0.113.78"))


def test_unlock_login_lets_a_locked_user_in_before_the_lock_ends(
    client: Client, alice, capsys: pytest.CaptureFixture[str]
) -> None:
    fail(client, 5)

    call_command("unlock_login", "Alice", "--by", "ops-admin")
    response = sign_in(client, "alice", PASSWORD)

    assert "Unlocked Alice (username)." in capsys.readouterr().out
    assert response.status_code == 302
    [entry] = AuditLogEntry.objects.for_entity("user", alice.pk).filter(operation="login_unlocked")
    assert entry.performed_by == "ops-admin"


@pytest.mark.parametrize(
    ("remote", "forwarded", "expected"),
    [
        ("127.0.0.1", "192.0.2.1, 203.0.113.9", "203.0.113.9"),
        ("10.0.0.5", "203.0.113.9", "203.0.113.9"),
        # A peer on the internet talks to Courier directly: what it claims to forward is ignored.
        ("93.184.216.34", "10.1.2.3", "93.184.216.34"),
        ("127.0.0.1", "not-an-address", "127.0.0.1"),
        ("127.0.0.1", "", "127.0.0.1"),
    ],
)
def test_client_address_trusts_only_the_entry_a_local_proxy_added(remote: str, forwarded: str, expected: str) -> None:
    request = RequestFactory().post("/admin/login/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)

    assert client_address(request) == expected
