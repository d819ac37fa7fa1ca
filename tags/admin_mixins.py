"""Tags on every taggable console page: a field on the change form, a column and a filter on the list.

entity_tags has no foreign key to the entities (entity_type + entity_id), so a generic
inline cannot be used; TaggableAdminMixin adds a "tags" multiple choice to the entity's
form and saves the assignments through EntityTag.objects.set_tags (audited).
"""

from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.postgres.expressions import ArraySubquery
from django.db.models import OuterRef, QuerySet
from django.http import HttpRequest
from unfold.widgets import UnfoldAdminSelect2MultipleWidget

from tags.models import EntityTag, Tag

TAGS_FIELD = "tags"


def may_tag(request: HttpRequest) -> bool:
    """Whether the user may add and remove tag assignments (Operators and Admins)."""
    return request.user.has_perms(["tags.add_entitytag", "tags.delete_entitytag"])


class TagListFilter(admin.SimpleListFilter):
    """Entities carrying one tag: `pk IN (entity ids of that tag and entity type)`."""

    title = "tag"
    parameter_name = "tag"

    def __init__(self, request: HttpRequest, params: Any, model: Any, model_admin: Any) -> None:
        self.entity_type = model_admin.tag_entity_type
        super().__init__(request, params, model, model_admin)

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(pk), name) for pk, name in Tag.objects.order_by("name").values_list("pk", "name")]

    def has_output(self) -> bool:
        # Django drops a filter without choices and would then ignore ?tag= (listing everything).
        return True

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if not self.value():
            return queryset
        try:
            tag_id = uuid.UUID(self.value())
        except ValueError:
            raise IncorrectLookupParameters(f"tag={self.value()!r} is not a tag id") from None
        tagged = EntityTag.objects.filter(tag_id=tag_id, entity_type=self.entity_type).values("entity_id")
        return queryset.filter(pk__in=tagged)


class TaggableAdminMixin:
    """Put first in the bases of an entity's ModelAdmin and set tag_entity_type (ck_entity_tags_type)."""

    tag_entity_type: str = ""

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # One array subquery per listed row for the tags column, instead of a query per row.
        names = (
            EntityTag.objects.filter(entity_type=self.tag_entity_type, entity_id=OuterRef("pk"), tag__is_deleted=False)
            .order_by("tag__name")
            .values("tag__name")
        )
        return super().get_queryset(request).annotate(tag_names=ArraySubquery(names))

    @admin.display(description="tags")
    def tags(self, obj: Any) -> str:
        names = getattr(obj, "tag_names", None)
        if names is None:
            names = EntityTag.objects.of_entity(self.tag_entity_type, obj.pk).order_by("tag__name")
            names = list(names.values_list("tag__name", flat=True))
        return ", ".join(names) or "-"

    def get_list_display(self, request: HttpRequest) -> Any:
        columns = list(super().get_list_display(request))
        if TAGS_FIELD not in columns:
            columns.insert(1, TAGS_FIELD)
        return columns

    def get_list_filter(self, request: HttpRequest) -> Any:
        return [*super().get_list_filter(request), TagListFilter]

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = [
            (title, {**options, "fields": [name for name in options["fields"] if name != TAGS_FIELD]})
            for title, options in super().get_fieldsets(request, obj)
        ]
        return [*fieldsets, ("Tags", {"fields": [TAGS_FIELD]})]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        # The model has no tags field: build the form without it, then declare it on a subclass.
        if "fields" not in kwargs:
            kwargs["fields"] = flatten_fieldsets(self.get_fieldsets(request, obj))
        if kwargs["fields"] is not None:
            kwargs["fields"] = [name for name in kwargs["fields"] if name != TAGS_FIELD]
        form_class = super().get_form(request, obj, change, **kwargs)
        current = []
        if obj is not None:
            current = list(EntityTag.objects.of_entity(self.tag_entity_type, obj.pk).values_list("tag_id", flat=True))
        field = forms.ModelMultipleChoiceField(
            queryset=Tag.objects.order_by("name"),
            required=False,
            initial=current,
            disabled=not may_tag(request),
            widget=UnfoldAdminSelect2MultipleWidget,
            help_text="Tags group and filter entities in every list (manage the tags themselves under Tags).",
        )
        return type(form_class.__name__, (form_class,), {TAGS_FIELD: field})

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        field = form.fields.get(TAGS_FIELD)
        if field is not None and not field.disabled:
            EntityTag.objects.set_tags(
                self.tag_entity_type, form.instance.pk, form.cleaned_data[TAGS_FIELD], by=request.user
            )
