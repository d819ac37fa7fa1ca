"""App configuration for the platform plumbing of Courier."""

from __future__ import annotations

from django.apps import AppConfig


class CourierSiteConfig(AppConfig):
    name = "courier_site"
    verbose_name = "Platform"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        # roles reads the auth models, which exist only once the app registry is ready.
        from courier_site import roles

        post_migrate.connect(roles.sync_role_groups, dispatch_uid="courier-sync-role-groups")
