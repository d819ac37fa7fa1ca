"""Celery tasks of the job engine; thin callers of jobs.engine."""

from __future__ import annotations

import logging

from celery import shared_task

from courier_site.db import retry_while_database_away
from jobs import chains, scheduling
from jobs.engine import control, dispatch, recovery
from jobs.engine.runner import ExecutionRunner

logger = logging.getLogger(__name__)


# No Celery time limit: a job's steps carry their own timeouts, and a hard kill would
# lose the checkpoint. acks_late + reject_on_worker_lost redeliver a message whose
# worker died; the claim makes the redelivery a no-op once the execution has started.
@shared_task(
    name="jobs.run_execution",
    acks_late=True,
    time_limit=None,
    soft_time_limit=None,
    bind=True,
    ignore_result=True,
)
def run_execution(self, execution_id: str) -> str:
    """Claim a queued execution and run it to its end, pause or cancel; then dispatch the next ones."""
    worker_name = self.request.hostname or "inline"
    # A message that arrives while the database restarts waits for it rather than failing:
    # otherwise the execution would sit queued until the sweep re-sends it.
    if not control.claim_riding_out_outages(execution_id, worker_name):
        return "not-claimed"
    try:
        runner = retry_while_database_away(
            lambda: ExecutionRunner(execution_id, worker_name), what=f"loading execution {execution_id}"
        )
        return runner.run()
    finally:
        control.dispatch_soon()


@shared_task(name="jobs.dispatch_sweep", acks_late=True, ignore_result=True, expires=10)
def dispatch_sweep() -> int:
    """Periodic safety net: dispatch queued executions whose message never arrived."""
    return len(dispatch.dispatch())


@shared_task(name="jobs.recover_lost_executions", acks_late=True, ignore_result=True, expires=60)
def recover_lost_executions() -> int:
    recovered = recovery.recover_lost_executions()
    if recovered:
        logger.warning("recovered %d execution(s) whose worker was lost", len(recovered))
    return len(recovered)


@shared_task(name="jobs.cleanup_work_dirs", acks_late=True, ignore_result=True)
def cleanup_work_dirs() -> int:
    removed = recovery.cleanup_orphan_work_dirs()
    logger.info("removed %d orphaned work directories", len(removed))
    return len(removed)


# Beat sends one tick a second; the tick also waits for instants due within its second,
# so a fire is late by the cost of a query, not by up to a whole tick. acks_late is off:
# a tick lost with its worker is replaced by the next one a second later.
@shared_task(
    name="jobs.fire_due_schedules",
    acks_late=False,
    ignore_result=True,
    expires=5,
    soft_time_limit=20,
    time_limit=30,
)
def fire_due_schedules(window_seconds: float = 1.0) -> int:
    """Fire the job and chain schedules that are due."""
    results = scheduling.tick(min(float(window_seconds), 5.0))
    late = [result for result in results if result.lateness_seconds > 5]
    if late:
        logger.warning("%d schedule(s) fired more than 5 s late (beat or workers were busy or down)", len(late))
    return len(results)


@shared_task(name="jobs.reconcile_chains", acks_late=True, ignore_result=True, expires=60)
def reconcile_chains() -> int:
    """Safety net: move on running chains whose member runs ended without being recorded."""
    return chains.reconcile()
