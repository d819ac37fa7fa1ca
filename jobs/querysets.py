"""Named filters for jobs and executions."""

from __future__ import annotations

from django.db import models


class JobExecutionQuerySet(models.QuerySet):
    def queued(self) -> JobExecutionQuerySet:
        return self.filter(state="queued")

    def running(self) -> JobExecutionQuerySet:
        return self.filter(state="running")

    def active(self) -> JobExecutionQuerySet:
        """Queued, running or paused: not finished yet."""
        return self.filter(state__in=("queued", "running", "paused"))

    def finished(self) -> JobExecutionQuerySet:
        return self.filter(state__in=("completed", "failed", "cancelled"))


class StepExecutionQuerySet(models.QuerySet):
    def for_execution(self, execution_id: object) -> StepExecutionQuerySet:
        """The timeline of one execution (served by ix_step_executions_job_execution)."""
        return self.filter(job_execution_id=execution_id).order_by("started_at", "retry_attempt")
