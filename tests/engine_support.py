"""Helpers for engine tests: step types that sleep, fail or write files, and job builders."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from jobs.errors import StepFailed
from jobs.steps.base import ConfigField, StepResult, StepType, register

# Attempts seen by test.flaky, per key, so a test can make a step fail N times then pass.
FLAKY_ATTEMPTS: dict[str, int] = {}
CLEANUPS: list[str] = []


@register
class SleepStep(StepType):
    """Sleeps cooperatively in small chunks, like a long transfer checking for cancel."""

    type_key = "test.sleep"
    fields = (ConfigField("seconds", "number", required=True), ConfigField("label", "any"))
    outputs = ("slept",)

    def execute(self, config: dict[str, Any], context: Any, cancel: Any) -> StepResult:
        deadline = time.monotonic() + float(config["seconds"])
        while time.monotonic() < deadline:
            cancel.check()
            context.progress.add(1024)
            time.sleep(0.02)
        return StepResult(outputs={"slept": config["seconds"]}, bytes_processed=context.progress.bytes_done)


@register
class StubbornStep(StepType):
    """Ignores cancel requests entirely (a badly behaved plug-in)."""

    type_key = "test.stubborn"
    fields = (ConfigField("seconds", "number", required=True),)

    def execute(self, config: dict[str, Any], context: Any, cancel: Any) -> StepResult:
        time.sleep(float(config["seconds"]))
        return StepResult()


@register
class FlakyStep(StepType):
    """Fails the first `failures` attempts for its key, then succeeds."""

    type_key = "test.flaky"
    fields = (ConfigField("key", "string", required=True), ConfigField("failures", "integer", required=True))
    outputs = ("attempts",)

    def execute(self, config: dict[str, Any], context: Any, cancel: Any) -> StepResult:
        seen = FLAKY_ATTEMPTS.get(config["key"], 0) + 1
        FLAKY_ATTEMPTS[config["key"]] = seen
        if seen <= config["failures"]:
            raise StepFailed(f"flaky failure {seen} of {config['failures']}")
        return StepResult(outputs={"attempts": seen})

    def cleanup_before_retry(self, config: dict[str, Any], context: Any) -> None:
        CLEANUPS.append(config["key"])


@register
class WriteStep(StepType):
    """Writes a file in the work directory and reports it."""

    type_key = "test.write"
    fields = (ConfigField("name", "string", required=True), ConfigField("text", "any", default=""))
    outputs = ("path", "text")

    def execute(self, config: dict[str, Any], context: Any, cancel: Any) -> StepResult:
        path = Path(context.work_dir) / config["name"]
        path.write_text(str(config["text"]))
        return StepResult(outputs={"path": str(path), "text": config["text"]}, files=[str(path)])


def make_job(
    steps: list[tuple[str, dict[str, Any]]],
    *,
    policy: dict[str, Any] | None = None,
    timeout: int = 30,
    name: str | None = None,
    aliases: dict[int, str] | None = None,
) -> Any:
    from jobs.definitions import record_version
    from jobs.models import Job, JobStep

    job = Job.objects.create(
        name=name or f"test-job-{uuid.uuid4().hex[:8]}",
        failure_policy=policy
        or {"type": "stop", "max_retries": 3, "backoff_base_seconds": 0, "backoff_max_seconds": 0},
    )
    for order, (type_key, configuration) in enumerate(steps):
        JobStep.objects.create(
            job=job,
            step_order=order,
            name=f"{type_key} #{order}",
            type_key=type_key,
            configuration=configuration,
            timeout_seconds=timeout,
            alias=(aliases or {}).get(order),
        )
    record_version(job, created_by="tester")
    return job


def run_inline(job: Any, **enqueue_options: Any) -> Any:
    """Enqueue, claim and run an execution in this process; returns the reloaded execution."""
    from jobs.engine import control
    from jobs.engine.runner import ExecutionRunner
    from jobs.models import JobExecution

    execution = control.enqueue(job, triggered_by="manual:tester", requested_by="tester", **enqueue_options)
    assert control.claim(execution.pk, "inline-test")
    ExecutionRunner(execution.pk, "inline-test").run()
    return JobExecution.objects.get(pk=execution.pk)


def step_rows(execution: Any) -> list[Any]:
    from jobs.models import StepExecution

    return list(StepExecution.objects.filter(job_execution_id=execution.pk).order_by("started_at", "retry_attempt"))


@register
class SleepOnceStep(StepType):
    """Long the first time in a work directory, short afterwards: shows a resumed run reuses its directory."""

    type_key = "test.sleep_once"
    fields = (ConfigField("seconds", "number", required=True), ConfigField("again_seconds", "number", default=0.1))
    outputs = ("runs",)

    def execute(self, config: dict[str, Any], context: Any, cancel: Any) -> StepResult:
        marker = Path(context.work_dir) / ".sleep_once"
        runs = int(marker.read_text()) + 1 if marker.exists() else 1
        marker.write_text(str(runs))
        seconds = float(config["seconds"] if runs == 1 else config["again_seconds"])
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            cancel.check()
            time.sleep(0.02)
        return StepResult(outputs={"runs": runs})
