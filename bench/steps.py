"""Step types used by the engine benchmarks (loaded by workers through COURIER_STEP_MODULES)."""

from __future__ import annotations

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
