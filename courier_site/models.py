"""Platform tables: applied SQL scripts and process heartbeats."""

from __future__ import annotations

from django.db import models


class SchemaVersion(models.Model):
    script_name = models.TextField(primary_key=True, help_text="SQL script from sql/.")
    checksum = models.TextField(help_text="SHA-256 of the script as applied.")
    applied_at = models.DateTimeField()
    execution_ms = models.IntegerField(null=True, blank=True)

    class Meta:
        managed = False
        db_table = "schema_versions"
        ordering = ("script_name",)

    def __str__(self) -> str:
        return self.script_name


class ProcessHeartbeat(models.Model):
    process_name = models.TextField(primary_key=True)
    kind = models.TextField(choices=[("worker", "worker"), ("beat", "beat")])
    hostname = models.TextField()
    pid = models.IntegerField()
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)
    schema_version = models.TextField(null=True, blank=True)

    class Meta:
        managed = False
        db_table = "process_heartbeats"
        ordering = ("kind", "-last_seen_at")

    def __str__(self) -> str:
        return self.process_name
