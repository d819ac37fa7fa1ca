"""App configuration for tags."""

from __future__ import annotations

from django.apps import AppConfig


class TagsConfig(AppConfig):
    name = "tags"
    default_auto_field = "django.db.models.BigAutoField"
