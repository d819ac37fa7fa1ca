"""Finding a definition by the name operators type or by its id, for management commands."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import CommandError
from django.db.models import QuerySet


def find_by_name_or_id(queryset: QuerySet, reference: str, noun: str) -> Any:
    """The row named reference, or whose id it is; unknown or ambiguous names are CommandErrors."""
    try:
        return queryset.get(pk=uuid.UUID(reference))
    except (ValueError, queryset.model.DoesNotExist):
        pass
    matches = list(queryset.filter(name=reference)[:2])
    if not matches:
        raise CommandError(f"no {noun} named or with id {reference!r}")
    if len(matches) > 1:
        raise CommandError(f"several {noun}s are named {reference!r}; give the {noun} id instead")
    return matches[0]
