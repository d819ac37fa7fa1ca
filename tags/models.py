"""Tags (case-insensitive unique names) attached to jobs, chains, connections, keys and monitors."""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Now

from courier_site.softdelete import SoftDeleteModel
from tags.querysets import EntityTagQuerySet

DUPLICATE_NAME_CODE = "E1008"


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

    def clean(self) -> None:
        """Refuse a name another live tag has in any letter case [E1008] (ix_tags_name enforces it too)."""
        self.name = (self.name or "").strip()
        taken = Tag.objects.filter(name__iexact=self.name).exclude(pk=self.pk).values_list("name", flat=True).first()
        if taken is not None:
            raise ValidationError(
                {
                    "name": ValidationError(
                        f"[{DUPLICATE_NAME_CODE}] A tag named {taken!r} already exists; "
                        "tag names are unique regardless of letter case.",
                        code=DUPLICATE_NAME_CODE,
                    )
                }
            )


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

    objects = EntityTagQuerySet.as_manager()

    class Meta:
        managed = False
        db_table = "entity_tags"

    def __str__(self) -> str:
        return f"{self.tag} on {self.entity_type} {str(self.entity_id)[:8]}"
