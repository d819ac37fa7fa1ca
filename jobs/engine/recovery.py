"""Crash recovery of executions whose worker died, and cleanup of orphaned work directories."""

from __future__ import annotations

import logging
import shutil
from typing import Any

from django.db import transaction
from django.utils import timezone

from courier_site import heartbeats
from jobs.engine import control, workdirs
from jobs.policy import FailurePolicy
from system.values import setting_int

logger = logging.getLogger(__name__)


def recover_lost_executions(now: Any = None) -> list[str]:
    """Fail running executions whose heartbeat expired ("worker lost") and requeue those whose policy retries.

    The requeued execution resumes from the lost one's checkpoint and work directory.
    """
    from jobs.models import JobExecution, JobVersion

    now = now or timezone.now()
    expired_before = heartbeats.expired_before(now)
    if expired_before is None:  # the database restarted a moment ago: running workers report again soon
        return []
    recovered = []
    with transaction.atomic():
        lost = list(
            JobExecution.objects.select_for_update(skip_locked=True)
            .filter(state="running", heartbeat_at__lt=expired_before)
            .select_related("job")
        )
        for execution in lost:
            message = f"worker lost: {execution.worker_name or 'unknown worker'} stopped reporting"
            failed = control.transition(
                execution.pk,
                "failed",
                details={"error": message},
                error_message=message,
                control_request=None,
                followups=False,
            )
            recovered.append(str(execution.pk))
            retry = None
            version = JobVersion.objects.filter(
                job_id=execution.job_id, version_number=execution.job_version_number
            ).first()
            try:
                policy = FailurePolicy.from_json((version.config_snapshot if version else {}).get("failure_policy"))
            except Exception:
                logger.exception("execution %s: unreadable failure policy; not requeued", execution.pk)
                control.after_finish(failed)
                continue
            if policy.type in ("retry_step", "retry_job") and execution.attempt <= policy.max_retries:
                snapshot = execution.context_snapshot or control.empty_snapshot()
                retry = control.enqueue(
                    execution.job,
                    triggered_by=f"retry:{execution.pk}",
                    attempt=execution.attempt + 1,
                    retry_of=execution,
                    version_number=execution.job_version_number,
                    chain_execution_id=execution.chain_execution_id,
                    snapshot={
                        "values": snapshot.get("values") or {},
                        "completed": snapshot.get("completed") or [],
                        "files": snapshot.get("files") or [],
                        "skipped": [],
                    },
                )
                logger.warning("execution %s lost its worker; resumed as %s", execution.pk, retry.pk)
            control.after_finish(failed, retried_by=retry)
    return recovered


def cleanup_orphan_work_dirs() -> list[str]:
    """Remove work directories of executions that are neither active nor resumable, after job.temp_cleanup_days."""
    from jobs.models import JobExecution

    days = setting_int("job.temp_cleanup_days", 7)
    # Active executions, and failed ones that may still be retried from their failed step
    # within the cleanup window, keep their directories (possibly one inherited on resume).
    keep = set()
    for pk, snapshot in JobExecution.objects.filter(state__in=("queued", "running", "paused")).values_list(
        "pk", "context_snapshot"
    ):
        keep.add(workdirs.for_snapshot(pk, snapshot).name)
    removed = []
    for path in workdirs.orphans(keep, days):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed
