"""App configuration for system: settings, and the sign-in throttle's signal receivers."""

from __future__ import annotations

from django.apps import AppConfig


class SystemConfig(AppConfig):
    name = "system"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        # signin imports the auth and system models, ready only once the app registry is.
        from system import signin

        user_login_failed.connect(signin.on_login_failed, dispatch_uid="courier-login-failed")
        user_logged_in.connect(signin.on_logged_in, dispatch_uid="courier-logged-in")
