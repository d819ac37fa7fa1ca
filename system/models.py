"""System settings: product-wide switches and limits edited by Admins."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now


class SystemSetting(models.Model):
    key = models.TextField(primary_key=True, help_text="Setting name, e.g. job.concurrency_limit.")
    value = models.TextField(help_text="Current value.")
    description = models.TextField(null=True, blank=True)
    updated_at = models.DateTimeField(db_default=Now())
    updated_by = models.TextField(help_text="Who changed it last.")

    class Meta:
        managed = False
        db_table = "system_settings"
        ordering = ("key",)

    def __str__(self) -> str:
        return f"{self.key} = {self.value}"
