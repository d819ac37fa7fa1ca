"""The console's sidebar: pages grouped by what an operator came to do, each shown only to users who may view it.

settings.UNFOLD["SIDEBAR"]["navigation"] names sidebar(). An item whose admin page does not
exist (an app not installed yet) is left out, so the sidebar never fails on a missing model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from django.core.cache import cache
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from console.dashboard import FAILED_WINDOW, FAILED_WINDOW_PARAMETER
from jobs.models import JobExecution

FAILED_BADGE_CACHE_SECONDS = 30


def failed_recently(request: HttpRequest) -> int:
    """Executions created in the last 24 h that failed (the dashboard's figure), briefly cached."""
    count = cache.get("courier:navigation:failed-24h")
    if count is None:
        # ix_job_executions_state (state, created_at DESC): one index range, recent partitions only.
        since = timezone.now() - FAILED_WINDOW
        count = JobExecution.objects.filter(state="failed", created_at__gte=since).count()
        cache.set("courier:navigation:failed-24h", count, FAILED_BADGE_CACHE_SECONDS)
    return count


@dataclass(frozen=True)
class Item:
    """One sidebar link: an admin URL name, shown when the user holds view (or change) on model."""

    title: str
    url_name: str
    icon: str
    model: str = ""  # "app_label.model_name"; empty: every signed-in console user
    query: dict[str, str] = field(default_factory=dict)
    badge: Callable[[HttpRequest], int] | None = None  # a count shown next to the title when not 0


@dataclass(frozen=True)
class Group:
    title: str
    items: tuple[Item, ...]
    separator: bool = False


GROUPS: tuple[Group, ...] = (
    Group("Overview", (Item("Dashboard", "admin:index", "dashboard"),)),
    Group(
        "Jobs & runs",
        (
            Item("Jobs", "admin:jobs_job_changelist", "work", "jobs.job"),
            Item("Executions", "admin:jobs_jobexecution_changelist", "play_circle", "jobs.jobexecution"),
            Item(
                "Failed in 24 h",
                "admin:jobs_jobexecution_changelist",
                "error",
                "jobs.jobexecution",
                {"state": "failed", "created_within": FAILED_WINDOW_PARAMETER},
                badge=failed_recently,
            ),
        ),
    ),
    Group(
        "Schedules & chains",
        (
            Item("Job schedules", "admin:jobs_jobschedule_changelist", "schedule", "jobs.jobschedule"),
            Item("Chains", "admin:jobs_jobchain_changelist", "account_tree", "jobs.jobchain"),
            Item("Chain executions", "admin:jobs_chainexecution_changelist", "play_lesson", "jobs.chainexecution"),
            Item("Chain schedules", "admin:jobs_chainschedule_changelist", "event_repeat", "jobs.chainschedule"),
            Item("Job dependencies", "admin:jobs_jobdependency_changelist", "link", "jobs.jobdependency"),
        ),
    ),
    Group(
        "Monitors",
        (
            Item("File monitors", "admin:monitors_filemonitor_changelist", "folder_eye", "monitors.filemonitor"),
            Item("Files seen", "admin:monitors_monitorfilelog_changelist", "description", "monitors.monitorfilelog"),
        ),
    ),
    Group(
        "Partners",
        (
            Item("Connections", "admin:connections_connection_changelist", "lan", "connections.connection"),
            Item("Known hosts", "admin:connections_knownhost_changelist", "verified_user", "connections.knownhost"),
        ),
    ),
    Group(
        "Keys",
        (
            Item("PGP keys", "admin:keystore_pgpkey_changelist", "key", "keystore.pgpkey"),
            Item("SSH keys", "admin:keystore_sshkey_changelist", "vpn_key", "keystore.sshkey"),
        ),
    ),
    Group(
        "Audit",
        (Item("Audit log", "admin:audit_auditlogentry_changelist", "manage_search", "audit.auditlogentry"),),
    ),
)

# Notifications (channels, rules, deliveries) belong between Audit and Administration. Until
# the notifications app is installed its admin pages do not exist and the group stays hidden.
NOTIFICATIONS = Group(
    "Notifications",
    (
        Item("Channels", "admin:notifications_channel_changelist", "campaign", "notifications.channel"),
        Item("Rules", "admin:notifications_rule_changelist", "rule", "notifications.rule"),
        Item("Deliveries", "admin:notifications_delivery_changelist", "outgoing_mail", "notifications.delivery"),
    ),
)

# Users, settings, and the tables operators reach from a parent page (a job's versions, an
# execution's steps, a chain execution's members) or never need at 2 a.m.
ADMINISTRATION = Group(
    "Administration",
    (
        Item("Users", "admin:auth_user_changelist", "person", "auth.user"),
        Item("Groups", "admin:auth_group_changelist", "group", "auth.group"),
        Item("System settings", "admin:system_systemsetting_changelist", "settings", "system.systemsetting"),
        Item("Tags", "admin:tags_tag_changelist", "label", "tags.tag"),
        Item("Tag assignments", "admin:tags_entitytag_changelist", "new_label", "tags.entitytag"),
        Item("Job steps", "admin:jobs_jobstep_changelist", "format_list_numbered", "jobs.jobstep"),
        Item("Job versions", "admin:jobs_jobversion_changelist", "history", "jobs.jobversion"),
        Item("Step executions", "admin:jobs_stepexecution_changelist", "view_timeline", "jobs.stepexecution"),
        Item("Chain members", "admin:jobs_jobchainmember_changelist", "group_work", "jobs.jobchainmember"),
        Item(
            "Chain execution members",
            "admin:jobs_chainexecutionmember_changelist",
            "checklist",
            "jobs.chainexecutionmember",
        ),
        Item("Monitor bindings", "admin:monitors_monitorjobbinding_changelist", "cable", "monitors.monitorjobbinding"),
        Item(
            "Monitor directory states",
            "admin:monitors_monitordirectorystate_changelist",
            "folder_data",
            "monitors.monitordirectorystate",
        ),
        Item("Share links", "admin:keystore_publickeysharetoken_changelist", "share", "keystore.publickeysharetoken"),
        Item("Domain events", "admin:audit_domainevent_changelist", "bolt", "audit.domainevent"),
        Item(
            "Schema versions",
            "admin:courier_site_schemaversion_changelist",
            "database",
            "courier_site.schemaversion",
        ),
        Item(
            "Process heartbeats",
            "admin:courier_site_processheartbeat_changelist",
            "monitor_heart",
            "courier_site.processheartbeat",
        ),
    ),
    separator=True,
)


def may_view(user: Any, model: str) -> bool:
    if not model:
        return True
    app_label, model_name = model.split(".")
    return user.has_perm(f"{app_label}.view_{model_name}") or user.has_perm(f"{app_label}.change_{model_name}")


def link(item: Item) -> str | None:
    """The item's URL, or None when its admin page does not exist (its app is not installed)."""
    try:
        url = reverse(item.url_name)
    except NoReverseMatch:
        return None
    return f"{url}?{urlencode(item.query)}" if item.query else url


def is_active(request: HttpRequest, item: Item, url: str) -> bool:
    """The page is this item's: the same list (the dashboard only itself), with the item's filter if it has one."""
    path = url.split("?", 1)[0]
    if path == reverse("admin:index"):
        return request.path == path
    return request.path.startswith(path) and all(request.GET.get(key) == value for key, value in item.query.items())


def build(request: HttpRequest, groups: tuple[Group, ...]) -> list[dict[str, Any]]:
    """unfold's navigation structure for groups: items the user may view whose pages exist; empty groups left out."""
    navigation = []
    for group in groups:
        items = []
        for item in group.items:
            url = link(item)
            if url is None or not may_view(request.user, item.model):
                continue
            entry: dict[str, Any] = {
                "title": item.title,
                "icon": item.icon,
                "link": url,
                "active": is_active(request, item, url),
            }
            count = item.badge(request) if item.badge else 0
            if count:
                entry["badge"] = str(count)
            items.append(entry)
        if items:
            navigation.append({"title": group.title, "separator": group.separator, "items": items})
    return navigation


def sidebar(request: HttpRequest) -> list[dict[str, Any]]:
    """The sidebar of every console page (settings.UNFOLD["SIDEBAR"]["navigation"])."""
    return build(request, (*GROUPS, NOTIFICATIONS, ADMINISTRATION))
