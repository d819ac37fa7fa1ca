"""System settings (product-wide switches and limits edited by Admins) and sign-in throttle counters."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models.functions import Now

from system import registry
from system.querysets import LoginThrottleQuerySet, SystemSettingQuerySet


class SystemSetting(models.Model):
    key = models.TextField(primary_key=True, help_text="Setting name, e.g. job.concurrency_limit.")
    value = models.TextField(help_text="Current value.")
    description = models.TextField(null=True, blank=True)
    updated_at = models.DateTimeField(db_default=Now())
    updated_by = models.TextField(help_text="Who changed it last.")

    objects = SystemSettingQuerySet.as_manager()

    class Meta:
        managed = False
        db_table = "system_settings"
        ordering = ("key",)

    def __str__(self) -> str:
        return f"{self.key} = {self.shown_value}"

    @property
    def spec(self) -> registry.SettingSpec | None:
        """What Courier knows about this key (type, range, help), or None for a key it does not know."""
        return registry.SETTINGS.get(self.key)

    @property
    def shown_value(self) -> str:
        spec = self.spec
        return "(secret)" if spec is not None and spec.secret else self.value


class LoginThrottle(models.Model):
    """Failed sign-ins of one username or from one client address, and the lock they caused."""

    class Scope(models.TextChoices):
        USERNAME = "username"
        ADDRESS = "address"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    scope = models.TextField(choices=Scope.choices)
    identifier = models.TextField(help_text="The username (lower-cased) or the client address.")
    failure_count = models.IntegerField(default=0, help_text="Failed sign-ins in the current window.")
    window_started_at = models.DateTimeField(help_text="First failure of the current window.")
    last_failure_at = models.DateTimeField()
    locked_until = models.DateTimeField(null=True, blank=True, help_text="Sign-in refused until then.")

    objects = LoginThrottleQuerySet.as_manager()

    class Meta:
        managed = False
        db_table = "login_throttles"

    def __str__(self) -> str:
        return f"{self.scope} {self.identifier}: {self.failure_count} failure(s)"
