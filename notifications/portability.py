"""Notification channels and rules in the definitions file: exported without secrets, imported by name."""

from __future__ import annotations

from typing import Any

from jobs.models import Job, JobChain
from jobs.portability import ImportRefused
from monitors.models import FileMonitor
from notifications.models import Channel, EventKind, Rule
from notifications.senders import ChannelConfigurationError, check_webhook_url
from tags.models import Tag

SECTION = "notifications"
REPORT_KEYS = ("notification_channels", "notification_rules", "channels_needing_secret")
CHANNEL_FIELDS = ("name", "kind", "enabled", "description")
# Settings keys that travel; a password or signing secret never does.
SETTINGS_KEYS = {
    "email": ("host", "port", "security", "username", "from_address", "recipients", "timeout_seconds"),
    "webhook": ("url", "timeout_seconds"),
}


def export_section(document: dict[str, Any]) -> dict[str, Any]:
    """Every channel and rule; rules name their channels and scope (jobs, chains, monitors, tags) by name."""
    channels = [
        {
            **{field: getattr(channel, field) for field in CHANNEL_FIELDS},
            "settings": {
                key: channel.settings.get(key) for key in SETTINGS_KEYS[channel.kind] if key in channel.settings
            },
        }
        for channel in Channel.objects.order_by("name")
    ]
    rules = [
        {
            "name": rule.name,
            "enabled": rule.enabled,
            "events": list(rule.events),
            "quiet": rule.quiet,
            "description": rule.description,
            "channels": sorted(channel.name for channel in rule.channels.all()),
            "jobs": sorted(job.name for job in rule.jobs.all()),
            "chains": sorted(chain.name for chain in rule.chains.all()),
            "monitors": sorted(monitor.name for monitor in rule.monitors.all()),
            "tags": sorted(tag.name for tag in rule.tags.all()),
        }
        for rule in Rule.objects.prefetch_related("channels", "jobs", "chains", "monitors", "tags").order_by("name")
    ]
    return {"channels": channels, "rules": rules}


def import_section(section: Any, report: dict[str, list[str]], by: Any) -> None:
    """Create or update channels, then rules, by name (inside the import's transaction; a refusal undoes all)."""
    if not isinstance(section, dict):
        raise ImportRefused('"notifications" must be an object with "channels" and "rules"')
    for data in section.get("channels") or []:
        _import_channel(data, report)
    for data in section.get("rules") or []:
        _import_rule(data, report)


def _import_channel(data: Any, report: dict[str, list[str]]) -> None:
    if not isinstance(data, dict) or not data.get("name") or data.get("kind") not in SETTINGS_KEYS:
        raise ImportRefused("a notification channel needs a name and a kind email or webhook")
    settings = {key: value for key, value in (data.get("settings") or {}).items() if key in SETTINGS_KEYS[data["kind"]]}
    if data["kind"] == "webhook":
        try:
            check_webhook_url(str(settings.get("url", "")))
        except ChannelConfigurationError as error:
            raise ImportRefused(f"channel '{data['name']}': {error.detail}") from None
    channel = Channel.objects.filter(name__iexact=data["name"]).first()
    if channel is None:
        channel = Channel(name=data["name"], created_by="import")
    elif channel.kind != data["kind"]:
        channel.secret_encrypted = None  # a secret of the other kind means nothing here
    channel.kind = data["kind"]
    channel.enabled = bool(data.get("enabled", True))
    channel.description = data.get("description")
    channel.settings = settings
    channel.save()
    report["notification_channels"].append(channel.name)
    needs_secret = channel.kind == "webhook" or bool(settings.get("username"))
    if needs_secret and not channel.secret_encrypted:
        report["channels_needing_secret"].append(channel.name)


def _named(model: Any, names: Any, what: str, rule: str) -> list[Any]:
    found = []
    for name in names or []:
        manager = model.objects
        row = manager.filter(name__iexact=name).first()
        if row is None:
            raise ImportRefused(f"rule '{rule}' names {what} '{name}', which is neither in the file nor here")
        found.append(row)
    return found


def _import_rule(data: Any, report: dict[str, list[str]]) -> None:
    if not isinstance(data, dict) or not data.get("name"):
        raise ImportRefused("a notification rule needs a name")
    unknown = sorted(set(data.get("events") or []) - set(EventKind.values))
    if unknown:
        raise ImportRefused(f"rule '{data['name']}' names unknown events {', '.join(unknown)}")
    channels = _named(Channel, data.get("channels"), "channel", data["name"])
    if not channels:
        raise ImportRefused(f"rule '{data['name']}' sends to no channel")
    rule = Rule.objects.filter(name__iexact=data["name"]).first() or Rule(name=data["name"], created_by="import")
    rule.enabled = bool(data.get("enabled", True))
    rule.events = list(data.get("events") or [])
    rule.quiet = bool(data.get("quiet", True))
    rule.description = data.get("description")
    rule.save()
    rule.channels.set(channels)
    rule.jobs.set(_named(Job, data.get("jobs"), "job", rule.name))
    rule.chains.set(_named(JobChain, data.get("chains"), "chain", rule.name))
    rule.monitors.set(_named(FileMonitor, data.get("monitors"), "monitor", rule.name))
    rule.tags.set(_named(Tag, data.get("tags"), "tag", rule.name))
    report["notification_rules"].append(rule.name)
