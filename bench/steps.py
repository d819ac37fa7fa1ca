"""Step types used by the engine benchmarks (loaded by workers through COURIER_STEP_MODULES)."""

from __future__ import annotations

import os
import time
from typing import Any

from jobs.steps.base import ConfigField, StepResult, StepType, register


@register
class BenchSleepStep(StepType):
    type_key = "bench.sleep"
    label = "Sleep (benchmark)"
    fields = (ConfigField("seconds", "number", required=True),)

    def execute(self, config: dict[str, Any], context: Any, cancel: Any) -> StepResult:
        deadline = time.monotonic() + float(config["seconds"])
        while time.monotonic() < deadline:
            cancel.check()
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return StepResult()


@register
class BenchWriteStep(StepType):
    """Writes `size` random bytes to `name` in the work directory (the payload a run carries)."""

    type_key = "bench.write"
    label = "Write a payload (benchmark)"
    fields = (ConfigField("name", "string", required=True), ConfigField("size", "integer", default=4096))
    outputs = ("written_file",)

    def execute(self, config: dict[str, Any], context: Any, cancel: Any) -> StepResult:
        cancel.check()
        target = context.work_dir / config["name"]
        target.write_bytes(os.urandom(int(config["size"])))
        size = target.stat().st_size
        return StepResult(outputs={"written_file": str(target)}, bytes_processed=size, files=[str(target)])
