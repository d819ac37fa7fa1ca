"""Jobs, their steps and versions, executions (partitioned), chains, dependencies and schedules."""

from __future__ import annotations

import uuid
from typing import Any

from django.db import models
from django.db.models.functions import Now

from courier_site.softdelete import SoftDeleteModel
from jobs.querysets import JobExecutionQuerySet, StepExecutionQuerySet

DEFAULT_FAILURE_POLICY = {"type": "stop", "max_retries": 3, "backoff_base_seconds": 1, "backoff_max_seconds": 60}


def default_failure_policy() -> dict[str, Any]:
    return dict(DEFAULT_FAILURE_POLICY)


class Job(SoftDeleteModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.TextField(help_text="Name operators know the job by, e.g. 'ACME invoices inbound'.")
    description = models.TextField(
        blank=True, null=True, help_text="What the job is for and whom to call when it fails."
    )
    current_version = models.IntegerField(default=1, editable=False, help_text="Version the next run will use.")
    failure_policy = models.JSONField(default=default_failure_policy, help_text="What happens when a step fails.")
    is_enabled = models.BooleanField(
        default=True, help_text="Disabled jobs are not run by schedules, monitors or operators."
    )
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        managed = False
        db_table = "jobs"
        ordering = ("name",)
        permissions = [
            ("run_job", "Can run jobs now"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def policy_type(self) -> str:
        return (self.failure_policy or {}).get("type", "stop")


class JobStep(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="steps", db_column="job_id")
    step_order = models.IntegerField(help_text="Position of the step, from 0. Steps run in this order.")
    name = models.TextField(help_text="Short description shown in the execution timeline.")
    type_key = models.TextField(help_text="Step type, e.g. sftp.download or file.zip.")
    alias = models.TextField(
        blank=True,
        null=True,
        help_text="Optional name for context references ('<alias>.<output>'); letters, digits and _.",
    )
    configuration = models.JSONField(default=dict, blank=True, help_text="The step type's settings, as JSON.")
    timeout_seconds = models.IntegerField(
        default=300, help_text="The step is stopped and failed [E2030] after this long."
    )

    class Meta:
        managed = False
        db_table = "job_steps"
        ordering = ("job", "step_order")

    def __str__(self) -> str:
        return f"{self.step_order}. {self.name} ({self.type_key})"


class JobVersion(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="versions", db_column="job_id")
    version_number = models.IntegerField(help_text="Increases with every saved change of steps or policy.")
    config_snapshot = models.JSONField(help_text="The full definition as it was at this version.")
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    created_by = models.TextField(help_text="Operator who saved this version.")

    class Meta:
        managed = False
        db_table = "job_versions"
        ordering = ("job", "-version_number")

    def __str__(self) -> str:
        return f"{self.job} v{self.version_number}"


class JobExecution(models.Model):
    """One run of a job. Partitioned by created_at; id alone is unique and serves as the key."""

    class State(models.TextChoices):
        CREATED = "created"
        QUEUED = "queued"
        RUNNING = "running"
        PAUSED = "paused"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(
        Job, on_delete=models.DO_NOTHING, db_constraint=False, db_column="job_id", related_name="executions"
    )
    job_version_number = models.IntegerField(help_text="Definition version this run executes.")
    chain_execution = models.ForeignKey(
        "ChainExecution",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        db_column="chain_execution_id",
        related_name="job_executions",
    )
    triggered_by = models.TextField(
        help_text="manual:<user>, schedule, monitor:<id>, chain:<id>, dependency:<execution> or retry:<execution>."
    )
    state = models.TextField(choices=State.choices, default=State.CREATED)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    context_snapshot = models.JSONField(
        default=dict, null=True, blank=True, help_text="Context values and the checkpoint of completed steps."
    )
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    attempt = models.IntegerField(default=1, help_text="1 for a first run; retries count up.")
    retry_of_execution_id = models.UUIDField(null=True, blank=True, help_text="The execution this one retries.")
    dispatched_at = models.DateTimeField(null=True, blank=True, help_text="When it was handed to a worker.")
    worker_name = models.TextField(null=True, blank=True, help_text="Worker running it.")
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last sign of life from its worker.")
    control_request = models.TextField(null=True, blank=True, help_text="Pending pause or cancel.")
    control_requested_by = models.TextField(null=True, blank=True)
    error_message = models.TextField(null=True, blank=True, help_text="Why it failed or was cancelled.")
    updated_at = models.DateTimeField(auto_now=True)

    objects = JobExecutionQuerySet.as_manager()

    class Meta:
        managed = False
        db_table = "job_executions"
        ordering = ("-created_at",)
        permissions = [
            ("control_jobexecution", "Can pause, resume, cancel and retry executions"),
        ]

    def __str__(self) -> str:
        return f"{self.job.name if self.job_id else '?'} #{str(self.id)[:8]} {self.state}"

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.completed_at:
            return (self.completed_at - self.started_at).total_seconds()
        return None


class StepExecution(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        SKIPPED = "skipped"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job_execution = models.ForeignKey(
        JobExecution,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_column="job_execution_id",
        related_name="step_executions",
    )
    job_step = models.ForeignKey(
        JobStep, on_delete=models.DO_NOTHING, db_constraint=False, db_column="job_step_id", related_name="+"
    )
    step_order = models.IntegerField()
    state = models.TextField(choices=State.choices, default=State.PENDING)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.BigIntegerField(null=True, blank=True)
    bytes_processed = models.BigIntegerField(null=True, blank=True)
    output_data = models.JSONField(null=True, blank=True, help_text="Outputs the step added to the context.")
    error_message = models.TextField(null=True, blank=True)
    error_stack_trace = models.TextField(null=True, blank=True)
    retry_attempt = models.IntegerField(default=0, help_text="0 for the first attempt, then 1, 2 …")
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    iteration_index = models.IntegerField(null=True, blank=True, help_text="Loop iteration this row ran in.")
    position = models.TextField(null=True, blank=True, help_text="Step position within loops, e.g. 2[3].4.")
    step_name = models.TextField(null=True, blank=True)
    type_key = models.TextField(null=True, blank=True)
    progress = models.JSONField(null=True, blank=True, help_text="Live progress while running.")

    objects = StepExecutionQuerySet.as_manager()

    class Meta:
        managed = False
        db_table = "step_executions"
        ordering = ("job_execution", "started_at")

    def __str__(self) -> str:
        return f"step {self.position or self.step_order} {self.state}"


class JobChain(SoftDeleteModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.TextField(help_text="Name of the chain of jobs.")
    description = models.TextField(blank=True, null=True)
    is_enabled = models.BooleanField(default=True, help_text="Disabled chains cannot be triggered [E2020].")
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        managed = False
        db_table = "job_chains"
        ordering = ("name",)
        permissions = [
            ("run_jobchain", "Can trigger and cancel chains"),
        ]

    def __str__(self) -> str:
        return self.name


class JobChainMember(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    chain = models.ForeignKey(JobChain, on_delete=models.CASCADE, db_column="chain_id", related_name="members")
    job = models.ForeignKey(Job, on_delete=models.PROTECT, db_column="job_id", related_name="chain_memberships")
    execution_order = models.IntegerField(help_text="Unique position of the member in the chain.")
    depends_on_member = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        db_column="depends_on_member_id",
        related_name="dependents",
        help_text="Runs after this member; empty for entry points.",
    )
    run_on_upstream_failure = models.BooleanField(default=False, help_text="Run even when the upstream member failed.")

    class Meta:
        managed = False
        db_table = "job_chain_members"
        ordering = ("chain", "execution_order")

    def __str__(self) -> str:
        return f"{self.chain} #{self.execution_order}: {self.job}"


class ChainExecution(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        PAUSED = "paused"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    chain = models.ForeignKey(JobChain, on_delete=models.CASCADE, db_column="chain_id", related_name="executions")
    triggered_by = models.TextField()
    state = models.TextField(choices=State.choices, default=State.PENDING)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    error_message = models.TextField(null=True, blank=True, help_text="Why the chain failed or who cancelled it.")
    context = models.JSONField(default=dict, blank=True, help_text="Trigger values handed to every member.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        managed = False
        db_table = "chain_executions"
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"{self.chain} #{str(self.id)[:8]} {self.state}"

    @property
    def is_finished(self) -> bool:
        return self.state in ("completed", "failed", "cancelled")


class ChainExecutionMember(models.Model):
    """What happened to one chain member within one chain execution."""

    class State(models.TextChoices):
        PENDING = "pending"
        QUEUED = "queued"
        COMPLETED = "completed"
        FAILED = "failed"
        SKIPPED = "skipped"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    chain_execution = models.ForeignKey(
        ChainExecution, on_delete=models.CASCADE, db_column="chain_execution_id", related_name="member_runs"
    )
    member = models.ForeignKey(
        JobChainMember, on_delete=models.SET_NULL, null=True, blank=True, db_column="member_id", related_name="+"
    )
    job = models.ForeignKey(Job, on_delete=models.DO_NOTHING, db_constraint=False, db_column="job_id", related_name="+")
    execution_order = models.IntegerField(help_text="The member's position in the chain at trigger time.")
    depends_on_order = models.IntegerField(null=True, blank=True, help_text="Order of the member it waited for.")
    run_on_upstream_failure = models.BooleanField(default=False)
    state = models.TextField(choices=State.choices, default=State.PENDING)
    job_execution = models.ForeignKey(
        JobExecution,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        db_column="job_execution_id",
        related_name="+",
        help_text="The member's job execution (the latest one when its job policy retried it).",
    )
    note = models.TextField(null=True, blank=True, help_text="Why the member was skipped, refused or cancelled.")
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        managed = False
        db_table = "chain_execution_members"
        ordering = ("chain_execution", "execution_order")

    def __str__(self) -> str:
        return f"#{self.execution_order} {self.state}"


class JobDependency(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    upstream_job = models.ForeignKey(
        Job,
        on_delete=models.CASCADE,
        db_column="upstream_job_id",
        related_name="downstream_edges",
        help_text="Must finish first.",
    )
    downstream_job = models.ForeignKey(
        Job,
        on_delete=models.CASCADE,
        db_column="downstream_job_id",
        related_name="upstream_edges",
        help_text="Queued when the upstream finishes.",
    )
    run_on_failure = models.BooleanField(default=False, help_text="Also run when the upstream failed.")

    class Meta:
        managed = False
        db_table = "job_dependencies"
        verbose_name_plural = "job dependencies"

    def __str__(self) -> str:
        return f"{self.upstream_job} → {self.downstream_job}"


class ScheduleType(models.TextChoices):
    CRON = "cron"
    ONE_SHOT = "one_shot"


class Schedule(models.Model):
    """Fields shared by job and chain schedules."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    schedule_type = models.TextField(choices=ScheduleType.choices, default=ScheduleType.CRON)
    cron_expression = models.TextField(
        null=True,
        blank=True,
        help_text="5-field cron ('30 2 * * 1-5'), or Quartz 6/7 fields starting with seconds ('0 30 2 ? * MON-FRI').",
    )
    run_at = models.DateTimeField(null=True, blank=True, help_text="For one-shot schedules: when to run.")
    time_zone = models.TextField(
        null=True,
        blank=True,
        help_text="IANA time zone the cron expression is read in, e.g. Europe/Berlin; empty for UTC.",
    )
    is_enabled = models.BooleanField(default=True, help_text="Disabled schedules do not fire.")
    last_fired_at = models.DateTimeField(null=True, blank=True, help_text="When the schedule last fired.")
    next_fire_at = models.DateTimeField(null=True, blank=True, help_text="When the schedule fires next (UTC).")
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class JobSchedule(Schedule):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, db_column="job_id", related_name="schedules")

    class Meta:
        managed = False
        db_table = "job_schedules"

    def __str__(self) -> str:
        return f"{self.job}: {self.cron_expression or self.run_at}"


class ChainSchedule(Schedule):
    chain = models.ForeignKey(JobChain, on_delete=models.CASCADE, db_column="chain_id", related_name="schedules")

    class Meta:
        managed = False
        db_table = "chain_schedules"

    def __str__(self) -> str:
        return f"{self.chain}: {self.cron_expression or self.run_at}"
