"""The Celery application: configuration from Django settings, beat schedule, process hooks."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "courier_site.settings")

app = Celery("courier")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Short, frequent tasks that keep the clock going; they must not queue behind job runs.
CONTROL_TASKS = frozenset(
    {
        "jobs.fire_due_schedules",
        "jobs.dispatch_sweep",
        "jobs.recover_lost_executions",
        "jobs.reconcile_chains",
        "monitors.poll_due_monitors",
        "audit.relay_events",
    }
)
# Monitor scans list directories, remote ones over the network: they get a queue (and
# worker) of their own so that a slow partner server never holds up the clock.
MONITOR_TASKS = frozenset({"monitors.poll_monitor"})
# Notification deliveries wait on mail servers and webhook receivers: a queue of their own, so a
# hanging receiver holds up neither a job nor the clock.
NOTIFY_TASKS = frozenset({"notifications.send_due"})


def control_queue() -> str:
    from django.conf import settings

    return settings.COURIER_CONTROL_QUEUE or f"{settings.COURIER_QUEUE}-control"


def monitor_queue() -> str:
    from django.conf import settings

    return f"{settings.COURIER_QUEUE}-monitors"


def notify_queue() -> str:
    from django.conf import settings

    return f"{settings.COURIER_QUEUE}-notify"


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any) -> dict[str, str] | None:
    """Celery router: clock tasks go to the control queue, everything else to COURIER_QUEUE."""
    from django.conf import settings

    if name in CONTROL_TASKS:
        return {"queue": control_queue()}
    if name in MONITOR_TASKS:
        return {"queue": monitor_queue()}
    if name in NOTIFY_TASKS:
        return {"queue": notify_queue()}
    return {"queue": settings.COURIER_QUEUE}


# Entries are named for their cadence; arguments are bounded.
app.conf.beat_schedule = {
    # Schedules of jobs and chains (SPEC 4.5); each tick also covers instants due within
    # its second, and two beats never fire one instant twice (SKIP LOCKED claims).
    "every-1s-fire-due-schedules": {
        "task": "jobs.fire_due_schedules",
        "schedule": 1.0,
        "args": (1.0,),
        "options": {"expires": 5},
    },
    # File monitors whose scan is due (SPEC 7); each is then polled by a task of its own.
    "every-2s-poll-due-monitors": {
        "task": "monitors.poll_due_monitors",
        "schedule": 2.0,
        "options": {"expires": 10},
    },
    # Event relay (outbox): every second, so a failure is told within about two seconds.
    "every-1s-relay-events": {
        "task": "audit.relay_events",
        "schedule": 1.0,
        "options": {"expires": 5},
    },
    # Behind the wake-up after each relay batch: retries whose back-off has passed.
    "every-10s-send-due-notifications": {
        "task": "notifications.send_due",
        "schedule": 10.0,
        "options": {"expires": 30},
    },
    "hourly-check-partitions": {
        "task": "courier_site.tasks.check_partitions",
        "schedule": crontab(minute=23),
        "options": {"expires": 3000},
    },
    "daily-prune-monitor-file-log": {
        "task": "monitors.prune_file_log",
        "schedule": crontab(minute=47, hour=3),
        "options": {"expires": 6 * 3600},
    },
    # Behind the in-transaction propagation: chains whose member ended unnoticed move on.
    "every-30s-reconcile-chains": {
        "task": "jobs.reconcile_chains",
        "schedule": 30.0,
        "options": {"expires": 60},
    },
    # Safety net behind the immediate dispatch on enqueue and completion: picks up
    # executions whose Celery message was lost (Redis restart, crashed worker).
    "every-5s-dispatch-queued-executions": {
        "task": "jobs.dispatch_sweep",
        "schedule": 5.0,
        "options": {"expires": 10},
    },
    "every-30s-recover-lost-executions": {
        "task": "jobs.recover_lost_executions",
        "schedule": 30.0,
        "options": {"expires": 60},
    },
    "daily-scan-key-expiry": {
        "task": "keystore.scan_key_expiry",
        "schedule": crontab(minute=37, hour=2),
        "options": {"expires": 6 * 3600},
    },
    "daily-cleanup-orphan-work-dirs": {
        "task": "jobs.cleanup_work_dirs",
        "schedule": crontab(minute=7, hour=4),
        "options": {"expires": 6 * 3600},
    },
    "weekly-create-monthly-partitions": {
        "task": "courier_site.tasks.create_monthly_partitions",
        "schedule": crontab(minute=17, hour=3, day_of_week="mon"),
        "options": {"expires": 6 * 3600},
    },
    # Retention (SPEC 3): export, verify and drop partitions past retention, an hour after
    # the partitions ahead were made. Default queue: a long run must not hold up the clock.
    "weekly-archive-expired-partitions": {
        "task": "courier_site.tasks.archive_expired_partitions",
        "schedule": crontab(minute=17, hour=4, day_of_week="mon"),
        "options": {"expires": 12 * 3600},
    },
}

# Worker start-up checks and heartbeat live in courier_site.worker.
import courier_site.worker  # noqa: E402,F401
