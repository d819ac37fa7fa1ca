"""Template tags for console pages: {% state_badge state %}, {% bytes_size n %} and {% seconds n %}."""

from __future__ import annotations

from django import template
from django.utils.safestring import SafeString

from courier_site import badges
from courier_site.formatting import human_bytes, human_seconds

register = template.Library()


@register.simple_tag
def state_badge(state: str | None, label: str | None = None) -> SafeString:
    return badges.state_badge(state, label)


@register.filter
def bytes_size(value: int | None) -> str:
    return human_bytes(value)


@register.filter
def seconds(value: float | None) -> str:
    return human_seconds(value)
