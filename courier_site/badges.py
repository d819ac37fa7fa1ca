"""Coloured state badges for console lists: one tone per outcome, readable without the theme's CSS."""

from __future__ import annotations

from django.utils.html import format_html
from django.utils.safestring import SafeString

TONES = {
    "good": ("#14532d", "#dcfce7"),
    "bad": ("#7f1d1d", "#fee2e2"),
    "busy": ("#1e3a8a", "#dbeafe"),
    "wait": ("#713f12", "#fef9c3"),
    "idle": ("#374151", "#f3f4f6"),
}


def badge(text: str, tone: str, title: str = "") -> SafeString:
    colour, background = TONES.get(tone, TONES["idle"])
    return format_html(
        '<span class="courier-badge" title="{}" style="display:inline-block;padding:1px 8px;border-radius:9999px;'
        'font-size:12px;font-weight:600;white-space:nowrap;color:{};background:{}">{}</span>',
        title,
        colour,
        background,
        text,
    )
