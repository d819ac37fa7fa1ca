"""Job definitions: snapshots, versions and the checks a definition passes before anything runs."""

from __future__ import annotations

import re
from typing import Any

from django.db import transaction

from audit.models import AuditLogEntry
from audit.querysets import actor_name
from jobs.engine import context as context_refs
from jobs.engine.flow import parse, walk
from jobs.errors import ContextReferenceError, CourierError, StepConfigurationError
from jobs.models import Job, JobVersion
from jobs.policy import FailurePolicy
from jobs.steps.base import get_step_type

# Keys the engine itself puts in every context, and prefixes filled by triggers and loops.
BUILTIN_KEYS = ("job.execution_id", "job.name", "job.work_dir", "job.started_at", "job.attempt")
BUILTIN_PREFIXES = ("monitor.", "chain.", "loop.", "trigger.")
_ORDER_OR_ALIAS = re.compile(r"^([A-Za-z0-9_]+)\.(.+)$")


def step_snapshot(step: Any) -> dict[str, Any]:
    return {
        "id": str(step.id),
        "step_order": step.step_order,
        "name": step.name,
        "type_key": step.type_key,
        "alias": step.alias or None,
        "configuration": step.configuration,
        "timeout_seconds": step.timeout_seconds,
    }


def snapshot(job: Job) -> dict[str, Any]:
    """The full definition of job as stored in job_versions.config_snapshot."""
    return {
        "name": job.name,
        "description": job.description or "",
        "failure_policy": job.failure_policy,
        "steps": [step_snapshot(step) for step in job.steps.order_by("step_order")],
    }


def _step_label(step: dict[str, Any]) -> str:
    return f"step {step['step_order']} ({step.get('name') or step['type_key']})"


def check_references(steps: list[dict[str, Any]]) -> list[str]:
    """References that can never resolve: unknown built-ins, or outputs of no earlier step."""
    problems = []
    produced: dict[str, tuple[str, ...]] = {}  # "<order>" and "<alias>" -> declared outputs
    for step in sorted(steps, key=lambda item: item["step_order"]):
        for reference in context_refs.references(step.get("configuration") or {}):
            if reference in BUILTIN_KEYS or reference.startswith(BUILTIN_PREFIXES):
                continue
            if any(reference == key or reference.startswith((key + ".", key + "[")) for key in BUILTIN_KEYS):
                continue
            match = _ORDER_OR_ALIAS.match(reference)
            owner = match.group(1) if match else None
            if owner is None or owner not in produced:
                problems.append(
                    f"{_step_label(step)}: context reference 'context:{reference}' names no built-in key "
                    "and no earlier step"
                )
                continue
            output = match.group(2)
            if not any(output == name or output.startswith((name + ".", name + "[")) for name in produced[owner]):
                declared = ", ".join(produced[owner]) or "none"
                problems.append(
                    f"{_step_label(step)}: context reference 'context:{reference}': step {owner} has no output "
                    f"'{output}' (it declares: {declared})"
                )
        try:
            outputs = get_step_type(step["type_key"]).outputs
        except CourierError:
            outputs = ()
        produced[str(step["step_order"])] = outputs
        if step.get("alias"):
            produced[step["alias"]] = outputs
    return problems


def check_definition(definition: dict[str, Any]) -> None:
    """Raise the first problem of a definition with its code: E2001 unknown type, E2002 bad keys,
    E2025 malformed blocks, E2003 unresolvable references, E2004 bad failure policy."""
    FailurePolicy.from_json(definition.get("failure_policy"))
    steps = definition.get("steps") or []
    problems = []
    for step in steps:
        step_type = get_step_type(step["type_key"])  # E2001
        problems.extend(step_type.validate(step.get("configuration") or {}, _step_label(step)))
        timeout = step.get("timeout_seconds", 300)
        if not isinstance(timeout, int) or timeout <= 0:
            problems.append(f"{_step_label(step)}: timeout_seconds must be a positive whole number")
    if problems:
        raise StepConfigurationError("; ".join(problems))
    parse(steps)  # E2025
    reference_problems = check_references(steps)
    if reference_problems:
        raise ContextReferenceError("; ".join(reference_problems))


def control_flow_nodes(definition: dict[str, Any]) -> list[Any]:
    return walk(parse(definition.get("steps") or []))


@transaction.atomic
def record_version(job: Job, *, created_by: Any, operation: str = "definition_changed") -> JobVersion:
    """Write a job_versions row for the job's definition as saved now and make it current."""
    locked = Job.all_objects.select_for_update().get(pk=job.pk)
    latest = locked.versions.order_by("-version_number").values_list("version_number", flat=True).first()
    # The first version of a job takes its current_version (1 for a new job).
    number = latest + 1 if latest is not None else locked.current_version
    version = JobVersion.objects.create(
        job=locked,
        version_number=number,
        config_snapshot=snapshot(locked),
        created_by=actor_name(created_by),
    )
    Job.all_objects.filter(pk=job.pk).update(current_version=number)
    job.current_version = number
    AuditLogEntry.objects.record(
        entity_type="job",
        entity_id=job.pk,
        operation=operation,
        performed_by=created_by,
        details={"job_name": locked.name, "version": number},
        event_type="JobVersionCreated",
    )
    return version


def version_for_run(job: Job) -> JobVersion:
    """The job_versions row an execution of job pins; snapshots the definition when it has none yet.

    A job created by SQL or import may not have a version row for its current_version.
    """
    with transaction.atomic():
        locked = Job.all_objects.select_for_update().get(pk=job.pk)
        version = JobVersion.objects.filter(job=locked, version_number=locked.current_version).first()
        if version is None:
            version = JobVersion.objects.create(
                job=locked,
                version_number=locked.current_version,
                config_snapshot=snapshot(locked),
                created_by="system",
            )
    return version
