"""Sending one message over one channel: SMTP through Django's email backend, or a signed webhook POST."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.core.mail import EmailMessage, get_connection

from courier_site.envelope import keyring
from courier_site.errors import CourierError

SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
DEFAULT_WEBHOOK_TIMEOUT = 10
DEFAULT_SMTP_TIMEOUT = 30
# A receiver's answer is read only this far: it is shown in the delivery log, never trusted.
RESPONSE_LIMIT = 2048
SIGNATURE_HEADER = "X-Courier-Signature"
TIMESTAMP_HEADER = "X-Courier-Timestamp"


class ChannelConfigurationError(CourierError):
    """A channel's settings cannot be used (bad URL scheme, no recipients, no host)."""

    code = "E8000"


@dataclass(frozen=True)
class Message:
    subject: str
    body: str
    payload: dict[str, Any]
    event_kind: str
    delivery_id: str


@dataclass(frozen=True)
class SendResult:
    """outcome: sent, retry (worth trying again) or failed (will not get better by itself)."""

    outcome: str
    response_code: int | None = None
    error: str | None = None
    duration_ms: int = 0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value: v1=<hex HMAC-SHA256 of "<timestamp>." + body under the secret>."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify(
    secret: str, timestamp: str, body: bytes, signature: str, *, tolerance: int = 300, now: float | None = None
) -> bool:
    """What a receiver does: recompute the signature, compare in constant time, refuse stale timestamps."""
    try:
        age = abs((now if now is not None else time.time()) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance and hmac.compare_digest(sign(secret, timestamp, body), signature)


def check_webhook_url(url: str) -> str:
    """Only absolute http(s) URLs with a host [E8000]."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ChannelConfigurationError(f"webhook URL must be an absolute http:// or https:// URL, not {url!r}")
    return url


def channel_secret(channel: Any) -> str | None:
    return keyring().open_text(channel.secret_encrypted) if channel.secret_encrypted else None


def send(channel: Any, message: Message) -> SendResult:
    """Send message over channel once; never raises for a receiver's failure, only reports it."""
    started = time.monotonic()
    try:
        if channel.kind == "webhook":
            result = _send_webhook(channel, message)
        elif channel.kind == "email":
            result = _send_email(channel, message)
        else:
            raise ChannelConfigurationError(f"unknown channel kind {channel.kind!r}")
    except ChannelConfigurationError as error:
        result = SendResult("failed", error=str(error))
    return SendResult(result.outcome, result.response_code, result.error, int((time.monotonic() - started) * 1000))


def _send_webhook(channel: Any, message: Message) -> SendResult:
    settings = channel.settings or {}
    url = check_webhook_url(str(settings.get("url", "")))
    timeout = float(settings.get("timeout_seconds") or DEFAULT_WEBHOOK_TIMEOUT)
    parts = urlsplit(url)
    body = json.dumps(message.payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Courier-Webhook/1",
        "X-Courier-Event": message.event_kind,
        "X-Courier-Delivery": message.delivery_id,
        TIMESTAMP_HEADER: timestamp,
    }
    secret = channel_secret(channel)
    if not secret:
        raise ChannelConfigurationError(
            f"webhook channel '{channel.name}' has no signing secret: generate one on the channel's page"
        )
    headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if parts.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    endpoint = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    try:
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read(RESPONSE_LIMIT).decode("utf-8", "replace").strip()
        status = response.status
    except TimeoutError:
        return SendResult("retry", error=f"[E8003] {endpoint} did not answer within {timeout:g} s")
    except ssl.SSLCertVerificationError as error:
        return SendResult("failed", error=f"[E8003] TLS certificate of {endpoint} refused: {error.verify_message}")
    except (OSError, http.client.HTTPException) as error:
        return SendResult("retry", error=f"[E8003] {endpoint} unreachable: {type(error).__name__}: {error}")
    finally:
        connection.close()
    if 200 <= status < 300:
        return SendResult("sent", response_code=status)
    if 300 <= status < 400:
        return SendResult(
            "failed",
            response_code=status,
            error=f"[E8004] {endpoint} answered {status} (redirect to {response.getheader('Location', '?')}); "
            "redirects are not followed: configure the final URL",
        )
    detail = f"[E8002] {endpoint} answered HTTP {status}" + (f": {answer[:300]}" if answer else "")
    # Server trouble, throttling and timeouts may pass; any other client error will not.
    transient = status >= 500 or status in (408, 425, 429)
    return SendResult("retry" if transient else "failed", response_code=status, error=detail)


def _send_email(channel: Any, message: Message) -> SendResult:
    settings = channel.settings or {}
    host = str(settings.get("host") or "").strip()
    recipients = [address for address in settings.get("recipients") or [] if address]
    if not host:
        raise ChannelConfigurationError("email channel has no SMTP host")
    if not recipients:
        raise ChannelConfigurationError("email channel has no recipients")
    security = settings.get("security") or "starttls"
    port = int(settings.get("port") or (465 if security == "tls" else 587))
    connection = get_connection(
        SMTP_BACKEND,
        host=host,
        port=port,
        username=settings.get("username") or "",
        password=channel_secret(channel) or "",
        use_tls=security == "starttls",
        use_ssl=security == "tls",
        timeout=float(settings.get("timeout_seconds") or DEFAULT_SMTP_TIMEOUT),
        fail_silently=False,
    )
    email = EmailMessage(
        subject=message.subject,
        body=message.body,
        from_email=settings.get("from_address") or f"courier@{socket.getfqdn()}",
        to=recipients,
        headers={"X-Courier-Event": message.event_kind, "X-Courier-Delivery": message.delivery_id},
        connection=connection,
    )
    endpoint = f"{host}:{port}"
    try:
        email.send()
    except smtplib.SMTPRecipientsRefused as error:
        codes = sorted({code for code, _ in error.recipients.values()})
        refused = ", ".join(error.recipients)
        return SendResult(_smtp_outcome(codes[0]), codes[0], f"[E8001] {endpoint} refused recipients {refused}")
    except smtplib.SMTPResponseException as error:
        text = error.smtp_error.decode("utf-8", "replace") if isinstance(error.smtp_error, bytes) else error.smtp_error
        return SendResult(
            _smtp_outcome(error.smtp_code), error.smtp_code, f"[E8001] {endpoint}: {error.smtp_code} {text}"
        )
    except TimeoutError:
        return SendResult("retry", error=f"[E8003] SMTP server {endpoint} did not answer in time")
    except (OSError, smtplib.SMTPException) as error:
        return SendResult("retry", error=f"[E8003] SMTP server {endpoint}: {type(error).__name__}: {error}")
    return SendResult("sent", response_code=250)


def _smtp_outcome(code: int) -> str:
    """5xx replies are permanent (bad recipient, refused login); 4xx ask to try again later."""
    return "failed" if 500 <= code < 600 else "retry"
