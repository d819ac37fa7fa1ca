"""Figures of the console's index page, each with the link to the list behind it."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.core.cache import cache
from django.db.models import Count, Min, Q
from django.db.models.functions import Coalesce, TruncDate
from django.urls import reverse
from django.utils import timezone

from audit import relay
from courier_site.health import RELAY_LAG_WARNING_SECONDS, partition_report
from jobs.models import JobExecution
from keystore.models import PgpKey
from monitors.models import FileMonitor
from notifications.models import Delivery
from system.values import setting_int

# job_executions is partitioned by created_at and can hold millions of rows: every
# query below is bounded by created_at so PostgreSQL prunes to the recent partitions.
# Queued, running and paused executions are recent by nature (the dispatch sweep and
# crash recovery settle older ones); a month covers any legitimate long pause.
ACTIVE_WINDOW = timedelta(days=30)
ACTIVE_WINDOW_PARAMETER = "30d"
FAILED_WINDOW = timedelta(hours=24)
FAILED_WINDOW_PARAMETER = "24h"
CHART_DAYS = 14
# Days before today are counted once per this many seconds (they hold thirteen of the
# chart's fourteen days of rows); today's bar is counted on every request.
CLOSED_DAYS_CACHE_SECONDS = 300
RECENT_LIMIT = 10
EXPIRING_KEYS_LISTED = 5
ACTIVE_STATES = ("queued", "running", "paused")
OUTCOMES = ("completed", "failed", "cancelled")


def changelist_url(admin_name: str, **params: Any) -> str:
    """The console list of admin_name ("jobs_jobexecution"), filtered by params."""
    return filtered(reverse(f"admin:{admin_name}_changelist"), **params)


def filtered(list_url: str, **params: Any) -> str:
    return f"{list_url}?{urlencode(params)}" if params else list_url


def gather(now: datetime | None = None) -> dict[str, Any]:
    """Everything the dashboard shows, as plain values and links."""
    now = now or timezone.now()
    return {
        "generated_at": now,
        "executions": execution_figures(now),
        "chart": execution_chart(now),
        "recent": recent_executions(now),
        "monitors": monitors_by_state(),
        "expiring_keys": expiring_keys(now),
        "partitions": partition_figures(),
        "relay": relay_figures(),
    }


def relay_figures() -> dict[str, Any]:
    """The event relay's lag and the notifications it could not deliver in the last 24 h."""
    figures = relay.lag()
    since = timezone.now() - timedelta(hours=24)
    figures["failed_deliveries"] = Delivery.objects.filter(state="failed", created_at__gte=since).count()
    figures["deliveries_url"] = changelist_url("notifications_delivery", state="failed")
    figures["events_url"] = changelist_url("audit_domainevent", relay="failed")
    figures["stale"] = figures["lag_seconds"] > RELAY_LAG_WARNING_SECONDS
    return figures


def execution_figures(now: datetime) -> dict[str, Any]:
    """Running, queued (with the age of the oldest), paused and failed-in-24-h counts in one query."""
    failed_since = now - FAILED_WINDOW
    # Two index ranges on ix_job_executions_state (state, created_at DESC), OR-ed into
    # one bitmap scan over the last month's partitions; no row outside them is read.
    figures = JobExecution.objects.filter(
        Q(state__in=ACTIVE_STATES) | Q(state="failed", created_at__gte=failed_since),
        created_at__gte=now - ACTIVE_WINDOW,
    ).aggregate(
        running=Count("id", filter=Q(state="running")),
        queued=Count("id", filter=Q(state="queued")),
        paused=Count("id", filter=Q(state="paused")),
        failed=Count("id", filter=Q(state="failed", created_at__gte=failed_since)),
        oldest_queued_at=Min(Coalesce("queued_at", "created_at"), filter=Q(state="queued")),
    )
    oldest = figures["oldest_queued_at"]
    return {
        "running": figures["running"],
        "queued": figures["queued"],
        "paused": figures["paused"],
        "failed_last_24h": figures["failed"],
        "oldest_queued_at": oldest,
        "oldest_queued_age_seconds": (now - oldest).total_seconds() if oldest else None,
        "active_window_days": ACTIVE_WINDOW.days,
        "links": {
            "running": changelist_url("jobs_jobexecution", state="running", created_within=ACTIVE_WINDOW_PARAMETER),
            "queued": changelist_url("jobs_jobexecution", state="queued", created_within=ACTIVE_WINDOW_PARAMETER),
            "paused": changelist_url("jobs_jobexecution", state="paused", created_within=ACTIVE_WINDOW_PARAMETER),
            "failed_last_24h": changelist_url(
                "jobs_jobexecution", state="failed", created_within=FAILED_WINDOW_PARAMETER
            ),
        },
    }


def execution_chart(now: datetime) -> dict[str, Any]:
    """Finished executions per day (in the console's time zone) by outcome, for the last CHART_DAYS days."""
    zone = timezone.get_current_timezone()
    today = timezone.localtime(now, zone).date()
    first_day = today - timedelta(days=CHART_DAYS - 1)
    start = datetime.combine(first_day, datetime.min.time(), tzinfo=zone)
    today_start = datetime.combine(today, datetime.min.time(), tzinfo=zone)
    counts = {**closed_day_counts(start, today_start), **outcome_counts(today_start, None)}
    execution_list = reverse("admin:jobs_jobexecution_changelist")
    days = []
    for offset in range(CHART_DAYS):
        day = first_day + timedelta(days=offset)
        day_start = datetime.combine(day, datetime.min.time(), tzinfo=zone)
        # Same bounds the Django date filter writes, so the list shows exactly this bar.
        bounds = {"created_at__gte": str(day_start), "created_at__lt": str(day_start + timedelta(days=1))}
        entry: dict[str, Any] = {"day": day, "total": 0, "links": {}}
        for outcome in OUTCOMES:
            entry[outcome] = counts.get((day, outcome), 0)
            entry["total"] += entry[outcome]
            entry["links"][outcome] = filtered(execution_list, state=outcome, **bounds)
        entry["links"]["all"] = filtered(execution_list, **bounds)
        days.append(entry)
    return {
        "days": days,
        "outcomes": OUTCOMES,
        "max_total": max((entry["total"] for entry in days), default=0),
        "totals": {outcome: sum(entry[outcome] for entry in days) for outcome in OUTCOMES},
        "closed_days_recounted_every_seconds": CLOSED_DAYS_CACHE_SECONDS,
    }


def outcome_counts(start: datetime, end: datetime | None) -> dict[tuple[date, str], int]:
    """(day, outcome) -> finished executions created in [start, end)."""
    queryset = JobExecution.objects.filter(created_at__gte=start, state__in=OUTCOMES)
    if end is not None:
        queryset = queryset.filter(created_at__lt=end)
    # COUNT(*) rather than COUNT(id): state and created_at are all the query reads, so
    # PostgreSQL answers from ix_job_executions_state alone (an index-only scan).
    rows = (
        queryset.annotate(day=TruncDate("created_at", tzinfo=timezone.get_current_timezone()))
        .values("day", "state")
        .annotate(count=Count("*"))
        .order_by()
    )
    return {(row["day"], row["state"]): row["count"] for row in rows}


def closed_day_counts(start: datetime, end: datetime) -> dict[tuple[date, str], int]:
    """outcome_counts of the days before today, cached: they hold most of the fortnight's rows and barely change."""
    key = f"courier:dashboard:closed-days:{start.isoformat()}:{end.isoformat()}"
    counts = cache.get(key)
    if counts is None:
        counts = outcome_counts(start, end)
        cache.set(key, counts, CLOSED_DAYS_CACHE_SECONDS)
    return counts


def recent_executions(now: datetime) -> list[dict[str, Any]]:
    """The newest RECENT_LIMIT executions of the chart's fortnight, with links to their pages."""
    since = now - timedelta(days=CHART_DAYS)
    # No index leads with created_at, so "newest of all" would sort the whole fortnight.
    # ix_job_executions_state (state, created_at DESC) yields the newest of each state
    # directly; the union of those few rows holds the newest overall.
    newest_per_state = [
        JobExecution.objects.filter(state=state, created_at__gte=since)
        .order_by("-created_at")
        .values_list("id", "created_at")[:RECENT_LIMIT]
        for state in JobExecution.State.values
    ]
    newest = newest_per_state[0].union(*newest_per_state[1:], all=True).order_by("-created_at")[:RECENT_LIMIT]
    rows = (
        JobExecution.objects.filter(pk__in=[pk for pk, _ in newest], created_at__gte=since)
        .select_related("job")
        .only("id", "state", "created_at", "started_at", "completed_at", "triggered_by", "job__name")
        .order_by("-created_at")
    )
    return [
        {
            "id": execution.pk,
            "short_id": str(execution.pk)[:8],
            "job_name": execution.job.name,
            "state": execution.state,
            "triggered_by": execution.triggered_by,
            "created_at": execution.created_at,
            "duration_seconds": execution.duration_seconds,
            "url": reverse("admin:jobs_jobexecution_change", args=[execution.pk]),
        }
        for execution in rows
    ]


def monitors_by_state() -> list[dict[str, Any]]:
    """Every monitor state with its count (zero included) and the filtered monitor list."""
    counts = dict(FileMonitor.objects.order_by().values_list("state").annotate(count=Count("id")))
    return [
        {
            "state": state,
            "label": label,
            "count": counts.get(state, 0),
            "url": changelist_url("monitors_filemonitor", state__exact=state),
        }
        for state, label in FileMonitor.State.choices
    ]


def expiring_keys(now: datetime) -> dict[str, Any]:
    """Usable PGP keys whose expiry falls inside key.expiration_warning_days (keystore.lifecycle's window)."""
    warning_days = setting_int("key.expiration_warning_days", 30)
    until = now + timedelta(days=warning_days)
    # A key already past expires_at counts as retired (lifecycle.effective_status), so
    # the window starts now; the daily scan moves such keys on.
    keys = PgpKey.objects.filter(
        status__in=("active", "expiring"), expires_at__isnull=False, expires_at__gt=now, expires_at__lte=until
    ).order_by("expires_at")
    listed = list(keys.only("id", "name", "status", "expires_at")[:EXPIRING_KEYS_LISTED])
    return {
        "count": keys.count() if len(listed) == EXPIRING_KEYS_LISTED else len(listed),
        "warning_days": warning_days,
        "keys": [
            {
                "name": key.name,
                "status": key.status,
                "expires_at": key.expires_at,
                "url": reverse("admin:keystore_pgpkey_change", args=[key.pk]),
            }
            for key in listed
        ],
        "url": changelist_url(
            "keystore_pgpkey",
            status__in="active,expiring",
            expires_at__gt=str(now.replace(microsecond=0)),
            expires_at__lte=str(until.replace(microsecond=0)),
        ),
    }


def partition_figures() -> dict[str, Any]:
    """courier_site.health.partition_report(), flattened to one row per table for the template."""
    try:
        report = partition_report()
    except Exception as error:  # the dashboard must render even when the catalogue query fails
        return {"status": "unknown", "error": type(error).__name__, "tables": [], "url": reverse("health-partitions")}
    return {
        "status": report["status"],
        "tables": [{"table": table, **figures} for table, figures in report["tables"].items()],
        "url": reverse("health-partitions"),
    }
