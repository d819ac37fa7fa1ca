"""Dispatcher: hands queued executions to Celery under the global concurrency limit (SPEC 4.2)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from system.values import setting_int

logger = logging.getLogger(__name__)

# Serialises "count running, then claim" across every worker and web process, so two
# dispatchers cannot both see the last free slot.
DISPATCH_LOCK_KEY = 12346_001
# The Celery task that runs one execution (jobs.tasks.run_execution), sent by name: the
# engine sits below the task layer and never imports it.
RUN_EXECUTION_TASK = "jobs.run_execution"


def redispatch_after() -> timedelta:
    """A dispatched execution that no worker claimed within this time lost its Celery message
    (Redis restart, worker crash before ack): the sweep dispatches it again."""
    return timedelta(seconds=settings.COURIER_REDISPATCH_AFTER_SECONDS)


_CLAIM_QUEUED = """
SELECT id FROM job_executions
WHERE state = 'queued' AND (dispatched_at IS NULL OR dispatched_at < %s)
ORDER BY queued_at
LIMIT %s
FOR UPDATE SKIP LOCKED
"""


def _busy_slots(stale_before: Any) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*) FILTER (WHERE state = 'running')
                 + count(*) FILTER (WHERE state = 'queued' AND dispatched_at >= %s)
            FROM job_executions WHERE state IN ('running', 'queued')
            """,
            [stale_before],
        )
        return cursor.fetchone()[0]


def dispatch() -> list[str]:
    """Claim queued executions FIFO while fewer than job.concurrency_limit run, and send their tasks."""
    limit = setting_int("job.concurrency_limit", 5)
    stale_before = timezone.now() - redispatch_after()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [DISPATCH_LOCK_KEY])
        free = limit - _busy_slots(stale_before)
        if free <= 0:
            return []
        cursor.execute(_CLAIM_QUEUED, [stale_before, free])
        claimed = [str(row[0]) for row in cursor.fetchall()]
        if claimed:
            cursor.execute(
                "UPDATE job_executions SET dispatched_at = now() WHERE id = ANY(%s::uuid[]) AND state = 'queued'",
                [claimed],
            )
    for execution_id in claimed:
        current_app.send_task(RUN_EXECUTION_TASK, args=[execution_id], queue=settings.COURIER_QUEUE)
    return claimed
