"""Append-only audit records and domain events (both partitioned by month)."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models.functions import Now

from audit.querysets import AuditLogEntryQuerySet, DomainEventQuerySet


class AuditLogEntry(models.Model):
    class EntityType(models.TextChoices):
        JOB = "job"
        JOB_EXECUTION = "job_execution"
        STEP_EXECUTION = "step_execution"
        CHAIN = "chain"
        CHAIN_EXECUTION = "chain_execution"
        CONNECTION = "connection"
        PGP_KEY = "pgp_key"
        SSH_KEY = "ssh_key"
        FILE_MONITOR = "file_monitor"
        JOB_STEP = "job_step"
        JOB_SCHEDULE = "job_schedule"
        CHAIN_SCHEDULE = "chain_schedule"
        JOB_DEPENDENCY = "job_dependency"
        KNOWN_HOST = "known_host"
        SHARE_TOKEN = "share_token"
        TAG = "tag"
        SYSTEM_SETTING = "system_setting"
        USER = "user"
        SYSTEM = "system"
        NOTIFICATION_CHANNEL = "notification_channel"
        NOTIFICATION_RULE = "notification_rule"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    entity_type = models.TextField(choices=EntityType.choices)
    entity_id = models.UUIDField()
    operation = models.TextField()
    performed_by = models.TextField(help_text="Name of the operator or process; kept even when the user is removed.")
    performed_at = models.DateTimeField(db_default=Now(), editable=False)
    details = models.JSONField(default=dict, null=True, blank=True)

    objects = AuditLogEntryQuerySet.as_manager()

    class Meta:
        managed = False
        db_table = "audit_log_entries"
        verbose_name = "audit record"
        verbose_name_plural = "audit log"
        ordering = ("-performed_at",)

    def __str__(self) -> str:
        return f"{self.performed_at:%Y-%m-%d %H:%M:%S} {self.performed_by} {self.operation} {self.entity_type}"


class DomainEvent(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    event_type = models.TextField()
    entity_type = models.TextField()
    entity_id = models.UUIDField()
    payload = models.JSONField()
    occurred_at = models.DateTimeField(db_default=Now(), editable=False)
    processed_at = models.DateTimeField(null=True, blank=True)
    processed_by = models.TextField(null=True, blank=True)
    relay_attempts = models.IntegerField(default=0, help_text="Tries of its handling that failed.")
    relay_error = models.TextField(null=True, blank=True, help_text="Why its last handling failed.")
    relay_retry_at = models.DateTimeField(null=True, blank=True, help_text="When the relay tries it again.")
    relay_failed_at = models.DateTimeField(null=True, blank=True, help_text="When the relay gave up on it.")

    objects = DomainEventQuerySet.as_manager()

    class Meta:
        managed = False
        db_table = "domain_events"
        ordering = ("-occurred_at",)

    def __str__(self) -> str:
        return f"{self.event_type} {self.entity_type} {str(self.entity_id)[:8]}"
