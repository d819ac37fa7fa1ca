"""Tag assignments: reading an entity's tags and replacing them, audited on the entity."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django.db import models, transaction

from audit.models import AuditLogEntry

if TYPE_CHECKING:
    from tags.models import Tag

# entity_tags names a chain 'job_chain'; the audit log has always called it 'chain'.
AUDIT_ENTITY_TYPES = {"job_chain": "chain"}


class EntityTagQuerySet(models.QuerySet):
    def of_entity(self, entity_type: str, entity_id: Any) -> EntityTagQuerySet:
        """Assignments of one entity to tags that are not deleted (served by ix_entity_tags_entity)."""
        return self.filter(entity_type=entity_type, entity_id=entity_id, tag__is_deleted=False)

    def set_tags(
        self, entity_type: str, entity_id: Any, tags: Iterable[Tag], *, by: Any
    ) -> tuple[list[str], list[str]]:
        """Make tags exactly the entity's tags; audit the names added and removed on the entity.

        Returns (added, removed) tag names; nothing is written when both are empty.
        """
        wanted = {tag.pk: tag.name for tag in tags}
        with transaction.atomic(using=self.db):
            current = dict(
                self.of_entity(entity_type, entity_id)
                .select_for_update(of=("self",))
                .values_list("tag_id", "tag__name")
            )
            added = sorted(name for pk, name in wanted.items() if pk not in current)
            removed = sorted(name for pk, name in current.items() if pk not in wanted)
            if not added and not removed:
                return [], []
            self.filter(entity_type=entity_type, entity_id=entity_id, tag_id__in=set(current) - set(wanted)).delete()
            # Two people saving the same entity at once may both add a tag: the unique index
            # ix_entity_tags_unique keeps one row and the other insert is skipped.
            self.bulk_create(
                [
                    self.model(tag_id=pk, entity_type=entity_type, entity_id=entity_id)
                    for pk in wanted
                    if pk not in current
                ],
                ignore_conflicts=True,
            )
            AuditLogEntry.objects.record(
                entity_type=AUDIT_ENTITY_TYPES.get(entity_type, entity_type),
                entity_id=entity_id,
                operation="tags_changed",
                performed_by=by,
                details={"added": added, "removed": removed},
            )
        return added, removed
