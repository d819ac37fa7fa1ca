"""The execution state machines (SPEC 4.2); any other transition is refused [E2010]."""

from __future__ import annotations

from jobs.errors import IllegalTransition

JOB_TRANSITIONS: dict[str, frozenset[str]] = {
    "created": frozenset({"queued", "cancelled"}),
    "queued": frozenset({"running", "cancelled"}),
    "running": frozenset({"completed", "failed", "cancelled", "paused"}),
    "paused": frozenset({"queued", "cancelled"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
STEP_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"running", "skipped"}),
    "running": frozenset({"completed", "failed", "skipped"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "skipped": frozenset(),
}
FINISHED = frozenset({"completed", "failed", "cancelled"})
ACTIVE = frozenset({"queued", "running", "paused"})

JOB_EVENTS = {
    "queued": "JobQueued",
    "running": "JobStarted",
    "completed": "JobCompleted",
    "failed": "JobFailed",
    "cancelled": "JobCancelled",
    "paused": "JobPaused",
}
STEP_EVENTS = {
    "running": "StepStarted",
    "completed": "StepCompleted",
    "failed": "StepFailed",
    "skipped": "StepSkipped",
}


def check_job_transition(current: str, new: str) -> None:
    if new not in JOB_TRANSITIONS.get(current, frozenset()):
        raise IllegalTransition(f"job execution cannot go from {current} to {new}")


def check_step_transition(current: str, new: str) -> None:
    if new not in STEP_TRANSITIONS.get(current, frozenset()):
        raise IllegalTransition(f"step execution cannot go from {current} to {new}")
