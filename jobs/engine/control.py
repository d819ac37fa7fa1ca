"""State changes of executions: enqueue, claim, pause, resume, cancel, retries (SPEC 4.2)."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.models import AuditLogEntry
from audit.querysets import actor_name
from courier_site.db import OutageTolerance
from courier_site.errors import CourierError
from jobs.definitions import version_for_run
from jobs.engine import hooks, workdirs
from jobs.engine.dispatch import dispatch
from jobs.engine.states import FINISHED, JOB_EVENTS, check_job_transition
from jobs.errors import IllegalTransition
from jobs.models import Job, JobExecution

logger = logging.getLogger(__name__)


class JobNotRunnable(CourierError):
    """The job is disabled, deleted or has no steps."""

    code = "E2022"


def empty_snapshot(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """context_snapshot layout: context values plus the checkpoint of completed work."""
    return {"values": dict(values or {}), "completed": [], "files": [], "skipped": []}


def _audit_transition(execution: JobExecution, new_state: str, by: Any, details: dict[str, Any]) -> None:
    # A paused run queued again is a resume: its event says so, its audit operation stays the state.
    resumed = new_state == "queued" and details.get("from") == "paused"
    AuditLogEntry.objects.record(
        entity_type="job_execution",
        entity_id=execution.pk,
        operation=new_state,
        performed_by=by,
        details={"job_id": str(execution.job_id), "triggered_by": execution.triggered_by, **details},
        event_type="JobResumed" if resumed else JOB_EVENTS.get(new_state, "JobExecutionChanged"),
    )


def transition(
    execution_id: Any,
    new_state: str,
    *,
    by: Any = "system",
    details: dict[str, Any] | None = None,
    followups: bool = True,
    **fields: Any,
) -> JobExecution:
    """Move an execution to new_state under a row lock, writing its audit row and event.

    Refuses transitions outside the state machine with IllegalTransition [E2010]. An
    execution that ends moves its chain on and queues its dependent jobs in the same
    transaction; callers that may queue a retry first pass followups=False and call
    after_finish themselves.
    """
    with transaction.atomic():
        execution = JobExecution.objects.select_for_update().get(pk=execution_id)
        check_job_transition(execution.state, new_state)
        previous = execution.state
        execution.state = new_state
        now = timezone.now()
        if new_state == "queued":
            execution.queued_at = now
            execution.dispatched_at = None
        if new_state in ("completed", "failed", "cancelled"):
            execution.completed_at = now
        for name, value in fields.items():
            setattr(execution, name, value)
        execution.save()
        _audit_transition(execution, new_state, by, {"from": previous, **(details or {})})
        if followups and new_state in FINISHED:
            after_finish(execution)
    return execution


def after_finish(execution: JobExecution, *, retried_by: JobExecution | None = None) -> None:
    """What an ended execution sets off, in the caller's transaction: every registered finish handler
    (jobs.engine.hooks; chains move on, downstream jobs are queued).

    When its failure policy queued a retry, retried_by names it: a chain follows the retry
    and dependants wait for the retry's outcome.
    """
    for name, handler in hooks.finish_handlers():
        # Each in a savepoint of its own: a fault here must never undo the execution's final
        # state. A chain left behind is moved on by the reconcile sweep.
        try:
            with transaction.atomic():
                handler(execution, retried_by)
        except Exception:
            logger.exception("execution %s: the %s reaction to its end failed", execution.pk, name)


def enqueue(
    job: Job,
    *,
    triggered_by: str,
    requested_by: Any = "system",
    context: dict[str, Any] | None = None,
    chain_execution_id: Any = None,
    attempt: int = 1,
    retry_of: JobExecution | None = None,
    snapshot: dict[str, Any] | None = None,
    version_number: int | None = None,
) -> JobExecution:
    """Insert a queued execution of job pinned to its current version; dispatch once committed.

    Every registered start check (jobs.engine.hooks) may refuse the run first.
    """
    job = Job.all_objects.get(pk=job.pk)
    if job.is_deleted:
        raise JobNotRunnable(f"job '{job.name}' is deleted")
    if not job.is_enabled and not triggered_by.startswith("retry:"):
        raise JobNotRunnable(f"job '{job.name}' is disabled; enable it to run it")
    for _, check in hooks.start_checks():
        check(job, triggered_by)
    if version_number is None:
        version = version_for_run(job)
        if not version.config_snapshot.get("steps"):
            raise JobNotRunnable(f"job '{job.name}' has no steps")
        version_number = version.version_number
    with transaction.atomic():
        execution = JobExecution.objects.create(
            job=job,
            job_version_number=version_number,
            chain_execution_id=chain_execution_id,
            triggered_by=triggered_by,
            state="queued",
            queued_at=timezone.now(),
            attempt=attempt,
            retry_of_execution_id=retry_of.pk if retry_of else None,
            context_snapshot=snapshot or empty_snapshot(context),
        )
        _audit_transition(
            execution,
            "queued",
            requested_by,
            {"from": "created", "job_name": job.name, "version": version_number, "attempt": attempt},
        )
        transaction.on_commit(dispatch_soon)
    return execution


def dispatch_soon() -> None:
    """Hand queued executions to workers now; a failure here is healed by the periodic sweep."""
    try:
        dispatch()
    except Exception:
        logger.exception("immediate dispatch failed; the sweep will dispatch the queued executions")


def claim(execution_id: Any, worker_name: str, *, at: Any = None) -> bool:
    """queued -> running for the worker that received the task; False when another got it first."""
    with transaction.atomic():
        execution = JobExecution.objects.select_for_update(skip_locked=True).filter(pk=execution_id).first()
        if execution is None or execution.state != "queued":
            return False
        now = at or timezone.now()
        execution.state = "running"
        execution.started_at = execution.started_at or now
        execution.worker_name = worker_name
        execution.heartbeat_at = now
        execution.dispatched_at = None
        execution.save()
        _audit_transition(execution, "running", "system", {"from": "queued", "worker": worker_name})
    return True


def claim_riding_out_outages(execution_id: Any, worker_name: str) -> bool:
    """claim(), retried on a new connection while the database restarts. A claim that committed
    although its reply was lost is recognised by its exact claim time, so it is not refused as
    someone else's (the execution would then sit running with nobody running it)."""

    claimed_at = timezone.now()

    def made() -> bool:
        return JobExecution.objects.filter(
            pk=execution_id, state="running", worker_name=worker_name, heartbeat_at=claimed_at
        ).exists()

    outcome = OutageTolerance(f"execution {execution_id}").retry(
        "claiming it", lambda: claim(execution_id, worker_name, at=claimed_at), made
    )
    return outcome is not False  # None: an earlier attempt's claim was made


def request_pause(execution_id: Any, *, by: Any) -> JobExecution:
    """Ask the worker running the execution to pause it at the next chunk boundary."""
    with transaction.atomic():
        execution = JobExecution.objects.select_for_update().get(pk=execution_id)
        if execution.state != "running":
            raise IllegalTransition(f"only a running execution can be paused; this one is {execution.state}")
        execution.control_request = "pause"
        execution.control_requested_by = actor_name(by)
        execution.save()
        AuditLogEntry.objects.record(
            entity_type="job_execution",
            entity_id=execution.pk,
            operation="pause_requested",
            performed_by=by,
            details={"job_id": str(execution.job_id)},
        )
    return execution


def request_cancel(execution_id: Any, *, by: Any) -> JobExecution:
    """Cancel at once when queued or paused; ask the worker to stop when running."""
    with transaction.atomic():
        execution = JobExecution.objects.select_for_update().get(pk=execution_id)
        if execution.state in ("queued", "paused", "created"):
            was_paused = execution.state == "paused"
            snapshot = execution.context_snapshot
            execution = transition(
                execution.pk, "cancelled", by=by, control_request=None, error_message=f"cancelled by {actor_name(by)}"
            )
            if was_paused:
                transaction.on_commit(lambda: workdirs.remove(execution_id, snapshot))
            return execution
        if execution.state != "running":
            raise IllegalTransition(f"a {execution.state} execution cannot be cancelled")
        execution.control_request = "cancel"
        execution.control_requested_by = actor_name(by)
        execution.save()
        AuditLogEntry.objects.record(
            entity_type="job_execution",
            entity_id=execution.pk,
            operation="cancel_requested",
            performed_by=by,
            details={"job_id": str(execution.job_id)},
        )
    return execution


def resume(execution_id: Any, *, by: Any) -> JobExecution:
    """paused -> queued: continue from the checkpoint on whichever worker picks it up."""
    execution = transition(
        execution_id, "queued", by=by, control_request=None, control_requested_by=None, worker_name=None
    )
    transaction.on_commit(dispatch_soon)
    return execution


def retry_from_failed_step(execution_id: Any, *, by: Any) -> JobExecution:
    """A new execution that resumes a failed one: completed steps are kept, the failed step runs again."""
    failed = JobExecution.objects.get(pk=execution_id)
    if failed.state != "failed":
        raise IllegalTransition(
            f"only a failed execution can be retried from its failed step; this one is {failed.state}"
        )
    snapshot = failed.context_snapshot or empty_snapshot()
    resumed = {
        "values": dict(snapshot.get("values") or {}),
        "completed": list(snapshot.get("completed") or []),
        "files": list(snapshot.get("files") or []),
        "skipped": [],
    }
    # The new execution keeps the failed one's work directory (job.work_dir in the values).
    return enqueue(
        failed.job,
        triggered_by=f"retry:{failed.pk}",
        requested_by=by,
        attempt=failed.attempt + 1,
        retry_of=failed,
        snapshot=resumed,
        version_number=failed.job_version_number,
        chain_execution_id=failed.chain_execution_id,
    )
