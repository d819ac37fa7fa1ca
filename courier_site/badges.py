"""Coloured state badges shared by every console list and page (executions, chains, monitors, keys)."""

from __future__ import annotations

import functools

from django.template.loader import render_to_string
from django.utils.html import format_html
from django.utils.safestring import SafeString

# unfold's label colours: success green, danger red, warning orange, info blue, primary the
# theme colour; anything else is drawn grey. A state reads the same colour on every page.
STATE_VARIANTS = {
    "completed": "success",
    "active": "success",
    "failed": "danger",
    "error": "danger",
    "revoked": "danger",
    "running": "info",
    "queued": "primary",
    "pending": "primary",
    "created": "primary",
    "paused": "warning",
    "degraded": "warning",
    "expiring": "warning",
}


def state_variant(state: str | None) -> str:
    return STATE_VARIANTS.get(state or "", "default")


def state_badge(state: str | None, label: str | None = None) -> SafeString:
    """The state as a coloured label; data-state lets scripts and tests read it."""
    if not state:
        return format_html("{}", "-")
    return _state_label(state, label or state)


@functools.lru_cache(maxsize=256)
def _state_label(state: str, text: str) -> SafeString:
    # States and their labels are a small fixed set: a list of 50 rows renders the template a few times.
    badge = render_to_string("unfold/helpers/label.html", {"text": text, "type": state_variant(state)})
    return format_html('<span class="courier-state" data-state="{}">{}</span>', state, SafeString(badge.strip()))


# Tones of badges that show something other than an execution state (relay, delivery, enabled).
TONE_VARIANTS = {"good": "success", "bad": "danger", "busy": "info", "wait": "warning", "idle": "default"}


def badge(text: str, tone: str, title: str = "") -> SafeString:
    """A coloured label in one of the tones; title (e.g. the last error) shows on hover."""
    label = render_to_string("unfold/helpers/label.html", {"text": text, "type": TONE_VARIANTS.get(tone, "default")})
    return format_html('<span class="courier-badge" title="{}">{}</span>', title, SafeString(label.strip()))
