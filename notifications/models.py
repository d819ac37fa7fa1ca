"""Notification channels (email, webhook), rules, and the log of deliveries and their attempts."""

from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models.functions import Now

from jobs.models import Job, JobChain
from monitors.models import FileMonitor
from tags.models import Tag


class EventKind(models.TextChoices):
    JOB_FAILED = "job_failed", "Job failed"
    JOB_COMPLETED = "job_completed", "Job completed"
    STEP_FAILED = "step_failed", "Step failed after its retries"
    CHAIN_FAILED = "chain_failed", "Chain failed"
    MONITOR_ERROR = "monitor_error", "Monitor entered error"
    KEY_EXPIRING = "key_expiring", "PGP key expiring"
    KEY_RETIRED = "key_retired", "PGP key retired"
    PARTITION_MISSING = "partition_missing", "Partition missing"
    ARCHIVE_FAILED = "archive_failed", "Partition archive failed"
    HOST_KEY_CHANGED = "host_key_changed", "Host key changed, awaiting approval"


class Channel(models.Model):
    class Kind(models.TextChoices):
        EMAIL = "email", "Email (SMTP)"
        WEBHOOK = "webhook", "Webhook (HTTPS POST)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.TextField(help_text="Unique, case-insensitive, e.g. 'ops mail' or 'pager webhook'.")
    kind = models.TextField(choices=Kind.choices)
    enabled = models.BooleanField(default=True)
    settings = models.JSONField(default=dict, blank=True)
    secret_encrypted = models.BinaryField(null=True, blank=True, editable=False)
    description = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.TextField(null=True, blank=True, editable=False)

    class Meta:
        managed = False
        db_table = "notification_channels"
        ordering = ("name",)
        verbose_name = "notification channel"
        permissions = [("test_channel", "Can send a test notification")]

    def __str__(self) -> str:
        return self.name

    @property
    def has_secret(self) -> bool:
        return bool(self.secret_encrypted)

    @property
    def target(self) -> str:
        """Where it sends, for lists and messages (never a secret)."""
        if self.kind == self.Kind.WEBHOOK:
            return str(self.settings.get("url", ""))
        recipients = self.settings.get("recipients") or []
        return ", ".join(recipients) + f" via {self.settings.get('host', '?')}:{self.settings.get('port', '?')}"


class Rule(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.TextField(help_text="Unique, case-insensitive.")
    enabled = models.BooleanField(default=True)
    events = ArrayField(models.TextField(choices=EventKind.choices), default=list, blank=True)
    quiet = models.BooleanField(
        default=True,
        help_text="Only the first failure of a job, chain or monitor is sent until it succeeds again.",
    )
    description = models.TextField(null=True, blank=True)
    channels = models.ManyToManyField(Channel, db_table="notification_rule_channels", related_name="rules")
    jobs = models.ManyToManyField(Job, db_table="notification_rule_jobs", related_name="+", blank=True)
    chains = models.ManyToManyField(JobChain, db_table="notification_rule_chains", related_name="+", blank=True)
    monitors = models.ManyToManyField(FileMonitor, db_table="notification_rule_monitors", related_name="+", blank=True)
    tags = models.ManyToManyField(Tag, db_table="notification_rule_tags", related_name="+", blank=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.TextField(null=True, blank=True, editable=False)

    class Meta:
        managed = False
        db_table = "notification_rules"
        ordering = ("name",)
        verbose_name = "notification rule"

    def __str__(self) -> str:
        return self.name


class Delivery(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        SENT = "sent"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    event_id = models.UUIDField(null=True, blank=True, help_text="The domain event; empty for a test message.")
    event_type = models.TextField()
    event_kind = models.TextField()
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, db_column="channel_id", related_name="deliveries")
    rule = models.ForeignKey(
        Rule, on_delete=models.SET_NULL, null=True, blank=True, db_column="rule_id", related_name="deliveries"
    )
    state = models.TextField(choices=State.choices, default=State.PENDING)
    subject = models.TextField()
    body = models.TextField()
    payload = models.JSONField(default=dict)
    attempts = models.IntegerField(default=0)
    next_attempt_at = models.DateTimeField(db_default=Now())
    last_error = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    sent_at = models.DateTimeField(null=True, blank=True)
    event_occurred_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        managed = False
        db_table = "notification_deliveries"
        ordering = ("-created_at",)
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"{self.event_kind} to {self.channel_id} {self.state}"


class Attempt(models.Model):
    class Outcome(models.TextChoices):
        SENT = "sent"
        RETRY = "retry"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, db_column="delivery_id", related_name="tries")
    attempt = models.IntegerField()
    started_at = models.DateTimeField(db_default=Now())
    duration_ms = models.IntegerField()
    outcome = models.TextField(choices=Outcome.choices)
    response_code = models.IntegerField(null=True, blank=True, help_text="HTTP status or SMTP reply code.")
    error = models.TextField(null=True, blank=True)

    class Meta:
        managed = False
        db_table = "notification_attempts"
        ordering = ("attempt",)

    def __str__(self) -> str:
        return f"attempt {self.attempt} {self.outcome}"
