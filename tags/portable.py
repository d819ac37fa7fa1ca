"""Tags in definition files: the details of the tags a file uses, and each entity's tags by name."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tags.models import EntityTag, Tag

DETAIL_FIELDS = ("color", "category", "description")


def names_of(entity_type: str, entity_id: Any) -> list[str]:
    """The names of an entity's live tags, sorted."""
    return sorted(EntityTag.objects.of_entity(entity_type, entity_id).values_list("tag__name", flat=True))


def described(names: Iterable[str]) -> list[dict[str, Any]]:
    """Name, colour, category and description of the named live tags, sorted by name."""
    return [
        {"name": tag.name, **{field: getattr(tag, field) for field in DETAIL_FIELDS}}
        for tag in Tag.objects.filter(name__in=set(names)).order_by("name")
    ]


def section_problems(section: Any) -> list[str]:
    """What is wrong with a file's "tags" section: a list of objects, each a non-empty name and text details."""
    if not isinstance(section, list):
        return ['"tags" must be a list of objects with a non-empty "name"']
    problems = []
    seen: set[str] = set()
    for item in section:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip():
            problems.append(f'every tag needs a non-empty "name", not {item!r}')
            continue
        if item["name"].strip().casefold() in seen:
            problems.append(f"the file describes tag '{item['name']}' more than once (names ignore letter case)")
        seen.add(item["name"].strip().casefold())
        for field in DETAIL_FIELDS:
            if item.get(field) is not None and not isinstance(item[field], str):
                problems.append(f"tag '{item['name']}': {field} must be text or null, not {item[field]!r}")
    return problems


def names_problems(owner: str, names: Any) -> list[str]:
    """What is wrong with an entity's "tags": a list of non-empty names."""
    if names is None:
        return []
    if not isinstance(names, list) or not all(isinstance(name, str) and name.strip() for name in names):
        return [f'{owner}: "tags" must be a list of non-empty tag names, not {names!r}']
    return []


def import_details(section: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Create the described tags that do not exist and bring the details of those that do in line.

    A name matches an existing tag in any letter case. Returns (created, updated) tag names.
    """
    created, updated = [], []
    for item in section:
        name = item["name"].strip()
        details = {field: item.get(field) or None for field in DETAIL_FIELDS if field in item}
        tag = Tag.objects.filter(name__iexact=name).first()
        if tag is None:
            Tag.objects.create(name=name, **details)
            created.append(name)
        elif any(getattr(tag, field) != value for field, value in details.items()):
            for field, value in details.items():
                setattr(tag, field, value)
            tag.save(update_fields=list(details))
            updated.append(tag.name)
    return created, updated


def assign(entity_type: str, entity_id: Any, names: list[str] | None, *, by: Any) -> None:
    """Make the named tags exactly the entity's tags (creating bare tags the file does not describe).

    None leaves the entity's tags as they are: a file without the key says nothing about them.
    """
    if names is None:
        return
    tags = []
    for name in dict.fromkeys(name.strip() for name in names):
        tags.append(Tag.objects.filter(name__iexact=name).first() or Tag.objects.create(name=name))
    EntityTag.objects.set_tags(entity_type, entity_id, tags, by=by)
