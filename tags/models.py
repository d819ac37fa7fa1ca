"""Tags (case-insensitive unique names) attached to jobs, chains, connections, keys and monitors."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models.functions import Now

from courier_site.softdelete import SoftDeleteModel


class Tag(SoftDeleteModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.TextField(help_text="Unique, case-insensitive, e.g. 'finance' or 'partner:acme'.")
    color = models.TextField(null=True, blank=True, help_text="Display colour, e.g. #2e7d32.")
    category = models.TextField(null=True, blank=True, help_text="Optional grouping of tags.")
    description = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        managed = False
        db_table = "tags"
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name


class EntityTag(models.Model):
    class EntityType(models.TextChoices):
        JOB = "job"
        JOB_CHAIN = "job_chain"
        CONNECTION = "connection"
        PGP_KEY = "pgp_key"
        SSH_KEY = "ssh_key"
        FILE_MONITOR = "file_monitor"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tag = models.ForeignKey(Tag, on_delete=models.CASCADE, db_column="tag_id", related_name="assignments")
    entity_type = models.TextField(choices=EntityType.choices)
    entity_id = models.UUIDField()

    class Meta:
        managed = False
        db_table = "entity_tags"

    def __str__(self) -> str:
        return f"{self.tag} on {self.entity_type} {str(self.entity_id)[:8]}"
