"""Live progress of a run that a command waits for (run_job/run_chain --wait), drawn on stderr."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.management.base import OutputWrapper

from courier_site.archival.service import format_bytes
from jobs.models import ChainExecution, JobExecution, StepExecution

BAR_WIDTH = 20
MEMBER_ENDED = ("completed", "failed", "skipped", "cancelled")


@dataclass(frozen=True)
class Status:
    """What a run is doing (logged each time it changes) and its figures (only drawn on a terminal)."""

    what: str
    figures: str = ""

    def __str__(self) -> str:
        return f"{self.what} {self.figures}" if self.figures else self.what


def step_figures(progress: dict | None) -> str:
    """Bytes against the total when known, as a bar and a percentage, and the rate."""
    progress = progress or {}
    done, total = progress.get("bytes_done") or 0, progress.get("bytes_total")
    parts = []
    if total:
        filled = BAR_WIDTH * min(done, total) // total
        parts.append(f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {100 * min(done, total) // total}%")
        parts.append(f"{format_bytes(done)} of {format_bytes(total)}")
    elif done:
        parts.append(format_bytes(done))
    if progress.get("rate_bytes_per_second"):
        parts.append(f"{format_bytes(progress['rate_bytes_per_second'])}/s")
    return " ".join(parts)


def execution_status(execution: JobExecution) -> Status:
    """State of a job execution and, while it runs, its latest step with that step's bytes."""
    if execution.state != "running":
        return Status(execution.state)
    step = StepExecution.objects.filter(job_execution_id=execution.pk).order_by("-started_at").first()
    if step is None:
        return Status(execution.state)
    what = f"running · step {step.position or step.step_order} {step.type_key or ''}".rstrip()
    if step.step_name:
        what += f" ({step.step_name})"
    if step.retry_attempt:
        what += f", retry {step.retry_attempt}"
    return Status(what, step_figures(step.progress))


def chain_status(execution: ChainExecution) -> Status:
    """State of a chain execution and how many of its members have ended."""
    states = list(execution.member_runs.values_list("state", flat=True))
    ended = sum(state in MEMBER_ENDED for state in states)
    running = sum(state == "queued" for state in states)
    return Status(f"{execution.state} · {ended}/{len(states)} members ended, {running} queued or running")


class ProgressLine:
    """One line of progress: redrawn in place on a terminal; in a log (cron, CI), a line per change of state."""

    def __init__(self, stream: OutputWrapper) -> None:
        self.stream = stream
        self.interactive = stream.isatty()
        self.drawn = False
        self.last_logged = ""

    def show(self, status: Status) -> None:
        if self.interactive:
            self.stream.write(f"\r{str(status)[:119]:<119}", ending="")
            self.stream.flush()
            self.drawn = True
        elif status.what != self.last_logged:
            self.last_logged = status.what
            self.stream.write(status.what)

    def close(self) -> None:
        if self.drawn:
            self.stream.write("")
            self.drawn = False
