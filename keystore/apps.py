"""App configuration for keystore."""

from __future__ import annotations

from django.apps import AppConfig


class KeystoreConfig(AppConfig):
    name = "keystore"
    default_auto_field = "django.db.models.BigAutoField"
