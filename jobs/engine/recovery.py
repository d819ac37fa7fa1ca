"""Crash recovery of executions whose worker died, and cleanup of orphaned work directories."""

from __future__ import annotations

import logging
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from audit.models import AuditLogEntry
from courier_site import heartbeats
from jobs.engine import context as context_refs
from jobs.engine import control, workdirs
from jobs.engine.states import STEP_EVENTS
from jobs.models import JobExecution, JobVersion, StepExecution
from jobs.policy import FailurePolicy
from jobs.secrets import unseal_config
from jobs.steps.base import CancelToken, StepContext, get_step_type
from system.values import setting_int

logger = logging.getLogger(__name__)


def recover_lost_executions(now: Any = None) -> list[str]:
    """Fail running executions whose heartbeat expired ("worker lost") and requeue those whose policy retries.

    The requeued execution resumes from the lost one's checkpoint and work directory.
    """

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
            version = JobVersion.objects.filter(
                job_id=execution.job_id, version_number=execution.job_version_number
            ).first()
            snapshot = execution.context_snapshot or control.empty_snapshot()
            work_dir = workdirs.for_snapshot(execution.pk, snapshot)
            interrupted = _fail_interrupted_steps(execution, message)
            # Under the row lock, before the retry is queued: no second recoverer can clean up
            # after the retry has started writing. Local files only, no network.
            _clean_partial_output(execution, version, snapshot, work_dir, interrupted)
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
            try:
                policy = FailurePolicy.from_json((version.config_snapshot if version else {}).get("failure_policy"))
            except Exception:
                logger.exception("execution %s: unreadable failure policy; not requeued", execution.pk)
                control.after_finish(failed)
                continue
            if policy.type in ("retry_step", "retry_job") and execution.attempt <= policy.max_retries:
                retry = control.enqueue(
                    execution.job,
                    triggered_by=f"retry:{execution.pk}",
                    attempt=execution.attempt + 1,
                    retry_of=execution,
                    version_number=execution.job_version_number,
                    chain_execution_id=execution.chain_execution_id,
                    snapshot={
                        # A worker killed before the first checkpoint left no job.work_dir in the
                        # snapshot: named here, the retry still resumes in (and then removes) the
                        # directory that holds the partial output, instead of orphaning it.
                        "values": {**(snapshot.get("values") or {}), "job.work_dir": str(work_dir)},
                        "completed": snapshot.get("completed") or [],
                        "files": snapshot.get("files") or [],
                        "skipped": [],
                    },
                )
                logger.warning("execution %s lost its worker; resumed as %s", execution.pk, retry.pk)
            control.after_finish(failed, retried_by=retry)
    return recovered


def _fail_interrupted_steps(execution: Any, message: str) -> set[str]:
    """The steps the lost worker was running end failed with the same message, on record; their job step ids."""

    now = timezone.now()
    interrupted = set()
    for row in StepExecution.objects.select_for_update().filter(job_execution_id=execution.pk, state="running"):
        row.state = "failed"
        row.completed_at = now
        row.duration_ms = int((now - row.started_at).total_seconds() * 1000) if row.started_at else None
        row.error_message = message
        row.progress = None
        row.save()
        AuditLogEntry.objects.record(
            entity_type="step_execution",
            entity_id=row.pk,
            operation="failed",
            performed_by="system",
            details={
                "job_execution_id": str(execution.pk),
                "job_id": str(execution.job_id),
                "step_order": row.step_order,
                "position": row.position,
                "type_key": row.type_key,
                "error": message,
            },
            event_type=STEP_EVENTS["failed"],
        )
        interrupted.add(str(row.job_step_id))
    return interrupted


def _clean_partial_output(
    execution: Any, version: Any, snapshot: dict[str, Any], work_dir: Path, interrupted: set[str]
) -> None:
    """Each interrupted step removes its partial output, as before any retry (SPEC 4.2); best effort."""
    steps = {str(step.get("id")): step for step in ((version.config_snapshot if version else {}).get("steps") or [])}
    values = dict(snapshot.get("values") or {})
    for job_step_id in interrupted:
        step = steps.get(job_step_id)
        if step is None:
            continue
        context = StepContext(
            execution_id=str(execution.pk),
            work_dir=work_dir,
            values=values,
            cancel=CancelToken(),
            allowed_roots=workdirs.allowed_roots(),
        )
        try:
            step_type = get_step_type(step["type_key"])
            configuration = context_refs.resolve(
                unseal_config(step.get("configuration") or {}),
                values,
                now=datetime.now(UTC),
                execution_id=str(execution.pk),
            )
            step_type.cleanup_before_retry(step_type.with_defaults(configuration), context)
        except Exception:
            logger.exception(
                "execution %s: cleanup of step %s after its worker was lost failed",
                execution.pk,
                step.get("step_order"),
            )


class RecoveryLoop(threading.Thread):
    """A worker's own periodic check for executions whose worker was lost.

    Beat's sweep runs every 30 s, and only where beat runs; a worker started while the dead
    one's heartbeat was still fresh finds nothing at start. Each worker therefore looks
    again every half heartbeat timeout (at most 30 s), so a lost execution is recovered
    within the timeout and a few seconds, beat or no beat. The claims are SKIP LOCKED:
    several workers checking at once recover each execution once.
    """

    def __init__(self, extra: Any = None) -> None:
        super().__init__(name="courier-recovery", daemon=True)
        self.extra = extra  # called each round too (process-local cleanup)
        self.stopping = threading.Event()

    @staticmethod
    def interval() -> float:
        return min(30.0, max(1.0, settings.COURIER_HEARTBEAT_TIMEOUT / 2))

    def run(self) -> None:
        while not self.stopping.wait(self.interval()):
            try:
                close_old_connections()
                recovered = recover_lost_executions()
                if recovered:
                    logger.warning("recovered %d execution(s) whose worker was lost", len(recovered))
                if self.extra is not None:
                    self.extra()
            except Exception:  # the database may be restarting; try again next round
                logger.exception("periodic recovery of lost executions failed")
            finally:
                connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)


def cleanup_orphan_work_dirs(*, dry_run: bool = False, older_than_days: int | None = None) -> list[str]:
    """Remove work directories of executions that are neither active nor resumable, after job.temp_cleanup_days
    (or older_than_days); with dry_run, only name them."""

    days = setting_int("job.temp_cleanup_days", 7) if older_than_days is None else older_than_days
    # Active executions, and failed ones that may still be retried from their failed step
    # within the cleanup window, keep their directories (possibly one inherited on resume).
    keep = set()
    for pk, snapshot in JobExecution.objects.filter(state__in=("queued", "running", "paused")).values_list(
        "pk", "context_snapshot"
    ):
        keep.add(workdirs.for_snapshot(pk, snapshot).name)
    removed = []
    for path in workdirs.orphans(keep, days):
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed
