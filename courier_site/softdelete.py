"""Soft delete: rows flagged is_deleted stay in the table but vanish from the default manager."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils import timezone


class SoftDeleteQuerySet(models.QuerySet):
    def delete(self) -> tuple[int, dict[str, int]]:
        """Soft-delete every row of the queryset (sets is_deleted and deleted_at)."""
        count = self.update(is_deleted=True, deleted_at=timezone.now())
        return count, {self.model._meta.label: count}

    def hard_delete(self) -> tuple[int, dict[str, int]]:
        return super().delete()

    def alive(self) -> SoftDeleteQuerySet:
        return self.filter(is_deleted=False)


class SoftDeleteManager(models.Manager.from_queryset(SoftDeleteQuerySet)):
    """Default manager: hides soft-deleted rows."""

    def get_queryset(self) -> SoftDeleteQuerySet:
        return super().get_queryset().filter(is_deleted=False)


class AllObjectsManager(models.Manager.from_queryset(SoftDeleteQuerySet)):
    """Sees soft-deleted rows too."""


class SoftDeleteModel(models.Model):
    is_deleted = models.BooleanField(default=False, editable=False, help_text="Deleted rows are kept for history.")
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False, help_text="When it was deleted.")

    objects = SoftDeleteManager()
    all_objects = AllObjectsManager()

    class Meta:
        abstract = True
        base_manager_name = "all_objects"

    def delete(self, using: Any = None, keep_parents: bool = False) -> tuple[int, dict[str, int]]:
        """Soft delete: the row stays, flagged, so history and references keep working."""
        self.is_deleted = True
        self.deleted_at = timezone.now()
        fields = ["is_deleted", "deleted_at"]
        if any(field.name == "updated_at" for field in self._meta.concrete_fields):
            fields.append("updated_at")
        self.save(update_fields=fields, using=using)
        return 1, {self._meta.label: 1}

    def hard_delete(self) -> tuple[int, dict[str, int]]:
        return super().delete()
