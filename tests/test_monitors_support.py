"""Helpers shared by the file monitor tests: monitor rows, bindings, aged files, triggered executions.

(Named test_monitors_* so that it sits with the monitor tests; it holds no tests itself.)
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from jobs.models import JobExecution
from monitors import detection
from monitors.models import FileMonitor, MonitorJobBinding

WRITE = [("test.write", {"name": "seen.txt", "text": "context:monitor.trigger_event"})]


def make_monitor(target: Path | dict[str, Any], **fields: Any) -> FileMonitor:
    """A saved monitor on a local directory (or the given watch target), FileCreated, batch mode."""
    watch_target = target if isinstance(target, dict) else {"type": "local", "path": str(target)}
    values: dict[str, Any] = {
        "name": f"monitor-{uuid.uuid4().hex[:6]}",
        "watch_target": watch_target,
        "trigger_events": detection.FILE_CREATED,
        "polling_interval_sec": 60,
        "stability_window_sec": 5,
        "batch_mode": True,
        **fields,
    }
    return FileMonitor.objects.create(**values)


def bind(monitor: FileMonitor, job: Any = None, chain: Any = None) -> MonitorJobBinding:
    return MonitorJobBinding.objects.create(monitor=monitor, job=job, chain=chain)


def drop(directory: Path, name: str, content: bytes | str = b"payload", age: float = 60.0) -> Path:
    """A file whose last write lies `age` seconds back (0: just written)."""
    path = directory / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    if age:
        set_age(path, age)
    return path


def set_age(path: Path, age: float) -> None:
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def executions_of(job: Any) -> list[JobExecution]:
    return list(JobExecution.objects.filter(job=job).order_by("queued_at"))


def monitor_values(execution: JobExecution) -> dict[str, Any]:
    """The monitor.* keys an execution was queued with."""
    values = (execution.context_snapshot or {}).get("values") or {}
    return {key: value for key, value in values.items() if key.startswith("monitor.")}


def triggered_names(execution: JobExecution) -> list[str]:
    return [item["name"] for item in monitor_values(execution)["monitor.triggered_files"]]


def run_queued(execution_id: Any) -> JobExecution:
    """Claim and run a queued execution in this process, as a worker would."""
    from jobs.engine import control
    from jobs.engine.runner import ExecutionRunner

    assert control.claim(execution_id, "inline-test")
    ExecutionRunner(execution_id, "inline-test").run()
    return JobExecution.objects.get(pk=execution_id)
