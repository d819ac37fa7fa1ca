"""Helpers for step tests: a step context over a temporary data directory."""

from __future__ import annotations

from pathlib import Path

from jobs.steps.base import CancelToken, StepContext


def make_context(tmp_path: Path, cancel: CancelToken | None = None) -> StepContext:
    work = tmp_path / "data" / "work" / "exec"
    work.mkdir(parents=True)
    return StepContext(
        execution_id="exec",
        work_dir=work,
        values={},
        cancel=cancel or CancelToken(),
        allowed_roots=(tmp_path / "data",),
    )
