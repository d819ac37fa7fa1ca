"""Chains of jobs: definition checks, trigger, propagation of member outcomes, cancel (SPEC 4.6)."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.models import AuditLogEntry
from audit.querysets import actor_name
from courier_site.errors import CourierError
from jobs.definitions import version_for_run
from jobs.dependencies import find_cycle
from jobs.engine import control
from jobs.errors import IllegalTransition
from jobs.models import ChainExecution, ChainExecutionMember, JobChain, JobExecution

logger = logging.getLogger(__name__)


class ChainDisabled(CourierError):
    code = "E2020"


class ChainMemberUnavailable(CourierError):
    """A member's job is deleted, disabled or has no steps, so the chain cannot start."""

    code = "E2021"


class InvalidChainDefinition(CourierError):
    """Duplicate orders, a member depending on itself or on a missing member, or a cycle."""

    code = "E2024"


CHAIN_EVENTS = {
    "running": "ChainStarted",
    "completed": "ChainCompleted",
    "failed": "ChainFailed",
    "cancelled": "ChainCancelled",
}
FINISHED = ("completed", "failed", "cancelled")
# Step outputs look like "<order>.<name>" or "<alias>.<name>"; engine and trigger keys are not outputs.
_NOT_OUTPUTS = ("job.", "loop.", "chain.", "monitor.", "trigger.")
_TRIGGER_PREFIXES = ("monitor.", "trigger.")


@dataclass(frozen=True)
class MemberSpec:
    """A chain member as the console or an import describes it, before it is saved."""

    execution_order: int
    job_id: Any
    depends_on_order: int | None = None
    run_on_upstream_failure: bool = False


def check_members(members: Iterable[MemberSpec]) -> None:
    """Refuse a member list with duplicate orders, dangling or self references, or a cycle [E2024]."""
    members = list(members)
    if not members:
        return
    orders = [member.execution_order for member in members]
    duplicates = sorted({order for order in orders if orders.count(order) > 1})
    if duplicates:
        raise InvalidChainDefinition(f"execution order {duplicates[0]} is used by more than one member")
    known = set(orders)
    for member in members:
        if member.depends_on_order is None:
            continue
        if member.depends_on_order == member.execution_order:
            raise InvalidChainDefinition(f"member {member.execution_order} cannot depend on itself")
        if member.depends_on_order not in known:
            raise InvalidChainDefinition(
                f"member {member.execution_order} depends on member {member.depends_on_order}, "
                "which is not in this chain"
            )
    cycle = find_cycle(
        (member.depends_on_order, member.execution_order) for member in members if member.depends_on_order is not None
    )
    if cycle:
        raise InvalidChainDefinition(f"members depend on each other in a cycle: {' → '.join(map(str, cycle))}")


def member_specs(chain: JobChain) -> list[MemberSpec]:
    members = list(chain.members.select_related("depends_on_member"))
    return [
        MemberSpec(
            execution_order=member.execution_order,
            job_id=member.job_id,
            depends_on_order=member.depends_on_member.execution_order if member.depends_on_member else None,
            run_on_upstream_failure=member.run_on_upstream_failure,
        )
        for member in members
    ]


def check_runnable(chain: JobChain) -> None:
    """Why chain cannot start now: disabled [E2020], a member's job unusable [E2021], a bad definition [E2024]."""
    if chain.is_deleted:
        raise ChainDisabled(f"chain '{chain.name}' is deleted")
    if not chain.is_enabled:
        raise ChainDisabled(f"chain '{chain.name}' is disabled; enable it to run it")
    members = list(chain.members.select_related("job"))
    if not members:
        raise InvalidChainDefinition(f"chain '{chain.name}' has no members")
    check_members(member_specs(chain))
    for member in members:
        job = member.job
        label = f"chain '{chain.name}' member {member.execution_order} (job '{job.name}')"
        if job.is_deleted:
            raise ChainMemberUnavailable(f"{label}: the job is deleted; remove the member or restore the job")
        if not job.is_enabled:
            raise ChainMemberUnavailable(f"{label}: the job is disabled")
        if not version_for_run(job).config_snapshot.get("steps"):
            raise ChainMemberUnavailable(f"{label}: the job has no steps")


def trigger(
    chain: JobChain, *, triggered_by: str, by: Any = "system", context: dict[str, Any] | None = None
) -> ChainExecution:
    """Start a chain execution: one row per member, entry points queued together."""
    with transaction.atomic():
        chain = JobChain.all_objects.select_for_update().get(pk=chain.pk)
        check_runnable(chain)
        now = timezone.now()
        execution = ChainExecution.objects.create(
            chain=chain,
            triggered_by=triggered_by,
            state="running",
            started_at=now,
            context={key: value for key, value in (context or {}).items() if key.startswith(_TRIGGER_PREFIXES)},
        )
        members = list(chain.members.select_related("depends_on_member"))
        ChainExecutionMember.objects.bulk_create(
            ChainExecutionMember(
                chain_execution=execution,
                member=member,
                job_id=member.job_id,
                execution_order=member.execution_order,
                depends_on_order=member.depends_on_member.execution_order if member.depends_on_member else None,
                run_on_upstream_failure=member.run_on_upstream_failure,
            )
            for member in members
        )
        AuditLogEntry.objects.record(
            entity_type="chain_execution",
            entity_id=execution.pk,
            operation="running",
            performed_by=by,
            details={
                "chain_id": str(chain.pk),
                "chain_name": chain.name,
                "triggered_by": triggered_by,
                "members": len(members),
            },
            event_type=CHAIN_EVENTS["running"],
        )
        _advance(execution)
    return execution


def _outputs_of(run: ChainExecutionMember) -> dict[str, Any]:
    values = ((run.job_execution.context_snapshot if run.job_execution else None) or {}).get("values") or {}
    return {
        f"chain.{run.execution_order}.{key}": value for key, value in values.items() if not key.startswith(_NOT_OUTPUTS)
    }


def _member_context(execution: ChainExecution, runs: list[ChainExecutionMember]) -> dict[str, Any]:
    context: dict[str, Any] = {
        "chain.id": str(execution.chain_id),
        "chain.name": execution.chain.name,
        "chain.execution_id": str(execution.pk),
        **(execution.context or {}),
    }
    for run in runs:
        if run.state == "completed":
            context.update(_outputs_of(run))
    return context


def _queue_member(execution: ChainExecution, run: ChainExecutionMember, runs: list[ChainExecutionMember]) -> None:
    try:
        job_execution = control.enqueue(
            run.job,
            triggered_by=f"chain:{execution.pk}",
            chain_execution_id=execution.pk,
            context=_member_context(execution, runs),
        )
    except CourierError as error:
        run.state = "failed"
        run.note = f"could not be queued: {error}"
    else:
        run.state = "queued"
        run.job_execution = job_execution
    run.save(update_fields=["state", "note", "job_execution", "updated_at"])


def _advance(execution: ChainExecution) -> None:
    """Queue members whose upstream completed, skip those whose upstream failed, and end the chain when done.

    Caller holds the chain execution's row lock. Repeats until nothing changes, so a skip
    travels down to every descendant in one call.
    """
    runs = list(execution.member_runs.select_related("job", "job_execution").order_by("execution_order"))
    by_order = {run.execution_order: run for run in runs}
    changed = True
    while changed:
        changed = False
        for run in runs:
            if run.state != "pending":
                continue
            upstream = by_order.get(run.depends_on_order) if run.depends_on_order is not None else None
            if upstream is None:
                _queue_member(execution, run, runs)
            elif upstream.state in ("pending", "queued"):
                continue
            elif upstream.state == "completed" or (upstream.state == "failed" and run.run_on_upstream_failure):
                _queue_member(execution, run, runs)
            else:
                run.state = "skipped"
                run.note = f"member {upstream.execution_order} {upstream.state}"
                run.save(update_fields=["state", "note", "updated_at"])
            changed = True
    if any(run.state in ("pending", "queued") for run in runs):
        return
    failed = [run for run in runs if run.state != "completed"]
    if failed:
        summary = ", ".join(f"member {run.execution_order} {run.state}" for run in failed)
        _finish(execution, "failed", message=summary)
    else:
        _finish(execution, "completed")


def _finish(execution: ChainExecution, state: str, *, message: str = "", by: Any = "system") -> None:
    execution.state = state
    execution.completed_at = timezone.now()
    execution.error_message = message or None
    execution.save(update_fields=["state", "completed_at", "error_message", "updated_at"])
    AuditLogEntry.objects.record(
        entity_type="chain_execution",
        entity_id=execution.pk,
        operation=state,
        performed_by=by,
        details={"chain_id": str(execution.chain_id), "error": message}
        if message
        else {"chain_id": str(execution.chain_id)},
        event_type=CHAIN_EVENTS[state],
    )


def member_finished(job_execution: JobExecution, *, retried_by: JobExecution | None = None) -> None:
    """A member's job execution ended: record it and move the chain on, in the caller's transaction.

    When the job's own policy queued a retry, the member follows the retry instead.
    """
    if job_execution.chain_execution_id is None:
        return
    execution = ChainExecution.objects.select_for_update().filter(pk=job_execution.chain_execution_id).first()
    run = ChainExecutionMember.objects.filter(
        chain_execution_id=job_execution.chain_execution_id, job_execution_id=job_execution.pk
    ).first()
    if execution is None or run is None:
        return  # e.g. an operator's retry of a member after the chain ended
    if retried_by is not None and not execution.is_finished:
        run.job_execution = retried_by
        run.save(update_fields=["job_execution", "updated_at"])
        return
    run.state = job_execution.state if job_execution.state in FINISHED else "failed"
    run.note = (job_execution.error_message or "")[:500] or None
    run.save(update_fields=["state", "note", "updated_at"])
    if execution.state == "running":
        _advance(execution)


def member_finished_hook(job_execution: JobExecution, retried_by: JobExecution | None) -> None:
    """The engine's finish hook (jobs.engine.hooks): move the execution's chain on."""
    member_finished(job_execution, retried_by=retried_by)


def cancel(chain_execution_id: Any, *, by: Any) -> ChainExecution:
    """Cancel a running chain: pending members are skipped, running ones cancelled."""
    with transaction.atomic():
        execution = ChainExecution.objects.select_for_update().get(pk=chain_execution_id)
        if execution.is_finished:
            raise IllegalTransition(f"chain execution {str(execution.pk)[:8]} already {execution.state}")
        execution.member_runs.filter(state="pending").update(
            state="skipped", note=f"chain cancelled by {actor_name(by)}", updated_at=timezone.now()
        )
        _finish(execution, "cancelled", message=f"cancelled by {actor_name(by)}", by=by)
        active = list(execution.member_runs.filter(state="queued").values_list("job_execution_id", flat=True))
    # Each member's cancel takes its own row lock after the chain's is released, so a member
    # finishing at this moment cannot deadlock with the cancel.
    for job_execution_id in active:
        # A member that ended meanwhile refuses the cancel; member_finished records how it ended.
        with contextlib.suppress(CourierError):
            control.request_cancel(job_execution_id, by=by)
    return execution


def reconcile(now: Any = None) -> int:
    """Safety net behind member_finished: move on running chains whose member runs ended unnoticed."""
    moved = 0
    stale = ChainExecutionMember.objects.filter(
        state="queued", chain_execution__state="running", job_execution__state__in=FINISHED
    ).values_list("job_execution_id", flat=True)
    for job_execution_id in list(stale[:500]):
        with transaction.atomic():
            job_execution = JobExecution.objects.get(pk=job_execution_id)
            retry = JobExecution.objects.filter(retry_of_execution_id=job_execution.pk).order_by("-created_at").first()
            member_finished(job_execution, retried_by=retry)
            moved += 1
    for execution_id in ChainExecution.objects.filter(state="running").values_list("pk", flat=True)[:500]:
        with transaction.atomic():
            execution = ChainExecution.objects.select_for_update(skip_locked=True).filter(pk=execution_id).first()
            if execution is not None and execution.state == "running":
                _advance(execution)
    return moved


def describe_trigger(triggered_by: str) -> str:
    match = re.match(r"^(\w+):(.+)$", triggered_by)
    return f"{match.group(1)} {match.group(2)}" if match else triggered_by
