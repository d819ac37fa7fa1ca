"""Sign-in throttling: the console login form refuses locked usernames and addresses; signals count failures."""

from __future__ import annotations

import ipaddress
import math
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.utils import timezone
from unfold.forms import AuthenticationForm

from system.models import LoginThrottle

LOCKED_CODE = "E1009"


def lockout() -> timedelta:
    return timedelta(minutes=settings.COURIER_LOGIN_LOCKOUT_MINUTES)


def client_address(request: HttpRequest | None) -> str | None:
    """The address the sign-in came from.

    Courier runs behind a TLS proxy on the same host or network, where REMOTE_ADDR is the
    proxy's: every user would share one counter. When the peer is a loopback or private
    address, the last X-Forwarded-For entry is used instead — the one the proxy appended,
    which the client cannot forge. A public peer is taken as the client itself.
    """
    if request is None:
        return None
    remote = request.META.get("REMOTE_ADDR") or None
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if remote is None or not forwarded:
        return remote
    try:
        peer = ipaddress.ip_address(remote)
        nearest = ipaddress.ip_address(forwarded.split(",")[-1].strip())
    except ValueError:
        return remote
    return str(nearest) if peer.is_loopback or peer.is_private else remote


def locked_message(locked_until: datetime) -> str:
    # The same words whether the username exists or not, and whether the username or the
    # address is locked: the message must not tell an attacker which names are real.
    minutes = max(1, math.ceil((locked_until - timezone.now()).total_seconds() / 60))
    return (
        f"[{LOCKED_CODE}] Too many failed sign-in attempts: sign-in is temporarily locked. "
        f"Try again in {minutes} minute{'s' if minutes != 1 else ''}."
    )


class ThrottledAuthenticationForm(AuthenticationForm):
    """The console login form, refusing a locked username or address before checking the password."""

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username")
        if not username:
            return super().clean()
        address = client_address(self.request)
        locked_until = LoginThrottle.objects.locked_until(username, address, now=timezone.now())
        if locked_until is not None:
            LoginThrottle.objects.record_refusal(username, address, locked_until=locked_until)
            raise ValidationError(locked_message(locked_until), code="locked")
        try:
            return super().clean()
        except ValidationError:
            # The failure just counted (user_login_failed) may have been the one that locked.
            locked_until = LoginThrottle.objects.locked_until(username, address, now=timezone.now())
            if locked_until is not None:
                raise ValidationError(locked_message(locked_until), code="locked") from None
            raise


def on_login_failed(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any) -> None:
    """user_login_failed: count the failure for the username and the address (the password is never read)."""
    username = credentials.get("username")
    if not username:
        return
    LoginThrottle.objects.record_failure(
        str(username),
        client_address(request),
        now=timezone.now(),
        max_failures=settings.COURIER_LOGIN_MAX_FAILURES,
        lockout=lockout(),
    )


def on_logged_in(sender: Any, request: HttpRequest | None, user: Any, **_: Any) -> None:
    """user_logged_in: a successful sign-in clears the failures of its username and address."""
    LoginThrottle.objects.reset(user.get_username(), client_address(request))
