"""File monitors watching local or remote directories, their bindings, snapshots and file log."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models.functions import Now

from courier_site.softdelete import SoftDeleteModel


class FileMonitor(SoftDeleteModel):
    class State(models.TextChoices):
        ACTIVE = "active"
        DEGRADED = "degraded"
        PAUSED = "paused"
        DISABLED = "disabled"
        ERROR = "error"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.TextField(help_text="Name of the monitor, e.g. 'ACME inbox'.")
    description = models.TextField(null=True, blank=True)
    watch_target = models.JSONField(help_text="Local path, or connection and remote path, to watch.")
    trigger_events = models.IntegerField(help_text="Flags: 1 file created, 2 modified, 4 exists (add them up).")
    file_patterns = models.JSONField(default=list, blank=True, help_text="Globs on the file name; empty = all files.")
    polling_interval_sec = models.IntegerField(default=60, help_text="Seconds between scans (30 or more).")
    stability_window_sec = models.IntegerField(default=5, help_text="A file must stay unchanged this long to trigger.")
    batch_mode = models.BooleanField(default=True, help_text="One run per poll with all files, or one per file.")
    max_consecutive_failures = models.IntegerField(default=5, help_text="Failures in a row before the monitor errors.")
    consecutive_failure_count = models.IntegerField(default=0, editable=False)
    state = models.TextField(choices=State.choices, default=State.ACTIVE)
    next_poll_at = models.DateTimeField(db_default=Now(), editable=False, help_text="When the next scan is due.")
    last_polled_at = models.DateTimeField(null=True, blank=True, editable=False, help_text="Last successful scan.")
    last_error = models.TextField(null=True, blank=True, editable=False, help_text="Why the last scan failed.")
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        managed = False
        db_table = "file_monitors"
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name


class MonitorJobBinding(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    monitor = models.ForeignKey(FileMonitor, on_delete=models.CASCADE, db_column="monitor_id", related_name="bindings")
    job = models.ForeignKey(
        "jobs.Job",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        db_column="job_id",
        related_name="monitor_bindings",
        help_text="Job to run (or choose a chain).",
    )
    chain = models.ForeignKey(
        "jobs.JobChain",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        db_column="chain_id",
        related_name="monitor_bindings",
        help_text="Chain to run (or choose a job).",
    )

    class Meta:
        managed = False
        db_table = "monitor_job_bindings"

    def __str__(self) -> str:
        return f"{self.monitor} → {self.job or self.chain}"


class MonitorDirectoryState(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    monitor = models.ForeignKey(
        FileMonitor, on_delete=models.CASCADE, db_column="monitor_id", related_name="directory_states"
    )
    directory_listing = models.JSONField()
    captured_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        managed = False
        db_table = "monitor_directory_state"
        ordering = ("-captured_at",)

    def __str__(self) -> str:
        return f"{self.monitor} listing"


class MonitorFileLog(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    monitor = models.ForeignKey(
        FileMonitor, on_delete=models.DO_NOTHING, db_constraint=False, db_column="monitor_id", related_name="file_log"
    )
    file_path = models.TextField()
    file_size = models.BigIntegerField()
    file_hash = models.TextField(null=True, blank=True)
    last_modified = models.DateTimeField()
    triggered_at = models.DateTimeField(db_default=Now(), editable=False)
    execution_id = models.UUIDField(help_text="Job or chain execution the file triggered.")
    trigger_event = models.TextField(null=True, blank=True, help_text="FileCreated, FileModified or FileExists.")

    class Meta:
        managed = False
        db_table = "monitor_file_log"
        ordering = ("-triggered_at",)

    def __str__(self) -> str:
        return self.file_path
