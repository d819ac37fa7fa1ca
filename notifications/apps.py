"""App configuration for notifications: subscribes to the event relay."""

from __future__ import annotations

from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Django's app loading: models (and the modules using them) import only once apps are ready.
        from audit.relay import register_subscriber
        from jobs.portability import register_section
        from notifications import portability, tasks  # noqa: F401 (tasks registers the sender's wake-up)
        from notifications.subscriber import handle_events

        register_subscriber("notifications", handle_events)
        register_section(
            portability.SECTION, portability.export_section, portability.import_section, portability.REPORT_KEYS
        )
