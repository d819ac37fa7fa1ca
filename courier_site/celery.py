"""The Celery application: configuration from Django settings, beat schedule, process hooks."""

from __future__ import annotations

import os

from celery import Celery
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "courier_site.settings")

app = Celery("courier")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Entries are named for their cadence; arguments are bounded.
app.conf.beat_schedule = {
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
}

# Worker start-up checks and heartbeat live in courier_site.worker.
import courier_site.worker  # noqa: E402,F401
