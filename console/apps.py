"""App configuration for the console's own pages."""

from __future__ import annotations

from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "console"
    verbose_name = "Console"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Django's app loading: unfold's template tags import the admin, ready only now.
        from console import list_headers

        list_headers.install()
