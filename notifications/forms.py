"""Console forms for notification channels (settings per kind, write-only secrets) and rules."""

from __future__ import annotations

import secrets
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from courier_site.envelope import keyring
from notifications.models import Channel, EventKind, Rule
from notifications.senders import ChannelConfigurationError, check_webhook_url

SECURITY_CHOICES = (
    ("starttls", "STARTTLS (usually port 587)"),
    ("tls", "TLS from the start (usually port 465)"),
    ("none", "None (plain SMTP, only inside a trusted network)"),
)
CONFIG_CODE = "E8000"


def _refuse(message: str) -> ValidationError:
    return ValidationError(f"[{CONFIG_CODE}] {message}", code=CONFIG_CODE)


def _duplicate_name(model: type, name: str, pk: Any) -> str | None:
    return model.objects.filter(name__iexact=name).exclude(pk=pk).values_list("name", flat=True).first()


class ChannelForm(forms.ModelForm):
    """One form for both kinds, in one fieldset per kind; the fields of the other kind are ignored on save."""

    smtp_host = forms.CharField(required=False, label="SMTP host")
    smtp_port = forms.IntegerField(required=False, min_value=1, max_value=65535, label="SMTP port")
    smtp_security = forms.ChoiceField(choices=SECURITY_CHOICES, required=False, initial="starttls", label="Security")
    smtp_username = forms.CharField(required=False, label="SMTP user")
    smtp_password = forms.CharField(
        required=False,
        strip=False,
        label="SMTP password",
        widget=forms.PasswordInput(render_value=False),
        help_text="Write-only, sealed with the master key: type one to set or replace it; empty keeps the stored one.",
    )
    clear_password = forms.BooleanField(required=False, help_text="Remove the stored SMTP password.")
    from_address = forms.CharField(required=False, help_text="Sender address, e.g. courier@example.com.")
    recipients = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One address per line (or separated by commas).",
    )
    url = forms.CharField(
        required=False,
        label="Webhook URL",
        help_text="http:// or https:// only; redirects are not followed.",
    )
    timeout_seconds = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=120,
        initial=10,
        help_text="Seconds to wait for the receiver before the attempt counts as failed and is retried.",
    )
    new_secret = forms.BooleanField(
        required=False,
        label="Generate a new signing secret",
        help_text="Webhooks: replaces the secret receivers verify signatures with; the new one is shown once.",
    )

    class Meta:
        model = Channel
        fields = ("name", "kind", "enabled", "description")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generated_secret: str | None = None
        stored = self.instance.settings if self.instance and self.instance.pk else {}
        if stored:
            self.initial.update(
                {
                    "smtp_host": stored.get("host", ""),
                    "smtp_port": stored.get("port"),
                    "smtp_security": stored.get("security", "starttls"),
                    "smtp_username": stored.get("username", ""),
                    "from_address": stored.get("from_address", ""),
                    "recipients": "\n".join(stored.get("recipients") or []),
                    "url": stored.get("url", ""),
                    "timeout_seconds": stored.get("timeout_seconds"),
                }
            )

    def clean_name(self) -> str:
        name = (self.cleaned_data.get("name") or "").strip()
        if not name:
            raise _refuse("a channel needs a name")
        taken = _duplicate_name(Channel, name, self.instance.pk)
        if taken:
            raise ValidationError(f"[E1008] a channel named {taken!r} already exists", code="E1008")
        return name

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        kind = data.get("kind")
        if kind == Channel.Kind.EMAIL:
            self._settings = self._email_settings(data)
        elif kind == Channel.Kind.WEBHOOK:
            self._settings = self._webhook_settings(data)
        return data

    def _email_settings(self, data: dict[str, Any]) -> dict[str, Any]:
        host = (data.get("smtp_host") or "").strip()
        if not host:
            self.add_error("smtp_host", _refuse("an email channel needs the SMTP server's host name"))
        recipients = [
            part.strip() for chunk in (data.get("recipients") or "").splitlines() for part in chunk.split(",")
        ]
        recipients = [address for address in recipients if address]
        if not recipients:
            self.add_error("recipients", _refuse("an email channel needs at least one recipient"))
        for address in [*recipients, *([data["from_address"].strip()] if data.get("from_address") else [])]:
            try:
                validate_email(address)
            except ValidationError:
                self.add_error("recipients", _refuse(f"{address!r} is not an email address"))
        security = data.get("smtp_security") or "starttls"
        return {
            "host": host,
            "port": data.get("smtp_port") or (465 if security == "tls" else 587),
            "security": security,
            "username": (data.get("smtp_username") or "").strip(),
            "from_address": (data.get("from_address") or "").strip(),
            "recipients": recipients,
            "timeout_seconds": data.get("timeout_seconds") or 30,
        }

    def _webhook_settings(self, data: dict[str, Any]) -> dict[str, Any]:
        url = (data.get("url") or "").strip()
        try:
            check_webhook_url(url)
        except ChannelConfigurationError as error:
            self.add_error("url", ValidationError(str(error), code=CONFIG_CODE))
        return {"url": url, "timeout_seconds": data.get("timeout_seconds") or 10}

    def save(self, commit: bool = True) -> Channel:
        channel = super().save(commit=False)
        channel.settings = getattr(self, "_settings", channel.settings)
        data = self.cleaned_data
        ring = keyring()
        if channel.kind == Channel.Kind.EMAIL:
            if data.get("clear_password"):
                channel.secret_encrypted = None
            elif data.get("smtp_password"):
                channel.secret_encrypted = ring.seal(data["smtp_password"])
        elif channel.kind == Channel.Kind.WEBHOOK and (data.get("new_secret") or not channel.secret_encrypted):
            self.generated_secret = secrets.token_urlsafe(32)
            channel.secret_encrypted = ring.seal(self.generated_secret)
        if commit:
            channel.save()
        return channel


class RuleForm(forms.ModelForm):
    events = forms.MultipleChoiceField(
        choices=EventKind.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="Events that send a notification.",
    )

    class Meta:
        model = Rule
        fields = ("name", "enabled", "events", "quiet", "channels", "jobs", "chains", "monitors", "tags", "description")
        help_texts = {
            "jobs": "Only these jobs (with the chains, monitors and tags below); nothing chosen anywhere = all.",
            "tags": "Or any job, chain, monitor, key or connection with one of these tags. "
            "Partition and archive events are never limited by scope.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "channels" in self.fields:
            self.fields["channels"].required = False  # refused in clean_channels, with its code

    def clean_name(self) -> str:
        name = (self.cleaned_data.get("name") or "").strip()
        if not name:
            raise _refuse("a rule needs a name")
        taken = _duplicate_name(Rule, name, self.instance.pk)
        if taken:
            raise ValidationError(f"[E1008] a rule named {taken!r} already exists", code="E1008")
        return name

    def clean_channels(self) -> Any:
        channels = self.cleaned_data.get("channels")
        if not channels:
            raise _refuse("a rule needs at least one channel to send to")
        return channels
