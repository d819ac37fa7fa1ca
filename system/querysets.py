"""Writers of system settings and sign-in throttle counters, each change audited."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.db import models, transaction
from django.db.models import Q

from audit.models import AuditLogEntry
from audit.querysets import actor_name
from system import registry

if TYPE_CHECKING:
    from system.models import LoginThrottle, SystemSetting


class SystemSettingQuerySet(models.QuerySet):
    def put(self, key: str, raw_value: str, *, by: Any) -> SystemSetting:
        """Validate raw_value for key [E1006/E1007], store its normal form and audit old and new value.

        Saving the value a setting already has changes nothing and writes no audit record.
        """
        spec = registry.spec_for(key)
        value = spec.normalize(raw_value)
        with transaction.atomic(using=self.db):
            setting = self.select_for_update().filter(key=key).first()
            old_value = setting.value if setting is not None else None
            if setting is not None and old_value == value:
                return setting
            if setting is None:
                setting = self.create(key=key, value=value, description=spec.help, updated_by=actor_name(by))
            else:
                setting.value = value
                setting.updated_by = actor_name(by)
                # updated_at is set by the tr_system_settings_updated_at trigger.
                setting.save(update_fields=["value", "updated_by"])
            if spec.secret:
                details: dict[str, Any] = {"key": key, "value_changed": True}
            else:
                details = {"key": key, "old_value": old_value, "new_value": value}
            AuditLogEntry.objects.record(
                entity_type="system_setting",
                entity_id=key,
                operation="created" if old_value is None else "changed",
                performed_by=by,
                details=details,
            )
        return setting


def _user_entity_id(username: str) -> Any:
    """The user's id when the name belongs to a user (so the audit follows the user), else the name.

    Counters ignore letter case, so 'Alice' finds the user alice when no user 'Alice' exists.
    """
    users = get_user_model()._default_manager
    field = get_user_model().USERNAME_FIELD
    for lookup in (field, f"{field}__iexact"):
        user_id = users.filter(**{lookup: username}).order_by("pk").values_list("pk", flat=True).first()
        if user_id is not None:
            return user_id
    return f"username:{username.lower()}"


class LoginThrottleQuerySet(models.QuerySet):
    """Failed sign-ins counted per username and per client address, shared by every web host."""

    def _matching(self, username: str, address: str | None) -> LoginThrottleQuerySet:
        match = Q(scope="username", identifier=username.lower())
        if address:
            match |= Q(scope="address", identifier=address)
        return self.filter(match)

    def locked_until(self, username: str, address: str | None, *, now: datetime) -> datetime | None:
        """When the lock on this username or address ends, or None when neither is locked."""
        # Served by ix_login_throttles_identity: at most two rows, on every sign-in POST.
        ends = self._matching(username, address).filter(locked_until__gt=now).values_list("locked_until", flat=True)
        return max(ends, default=None)

    def record_failure(
        self,
        username: str,
        address: str | None,
        *,
        now: datetime,
        max_failures: int,
        lockout: timedelta,
    ) -> list[LoginThrottle]:
        """Count one failed sign-in for the username and the address; lock each that reached max_failures.

        Failures are counted in a window of `lockout` from the first one; a new window starts when
        it has passed or when a lock ended. Audits the failure and every new lock (never the
        password), and returns the counters that were locked by this failure.
        """
        identities = [("username", username.lower())]
        if address:
            identities.append(("address", address))
        newly_locked = []
        with transaction.atomic(using=self.db):
            # Creates missing counters without racing another host (ON CONFLICT DO NOTHING); the row
            # locks then serialise concurrent failures. Rows are always locked username first, then
            # address, so two sign-ins cannot deadlock.
            self.bulk_create(
                [
                    self.model(
                        scope=scope, identifier=identifier, failure_count=0, window_started_at=now, last_failure_at=now
                    )
                    for scope, identifier in identities
                ],
                ignore_conflicts=True,
            )
            counters = []
            for scope, identifier in identities:
                counter = self.select_for_update().get(scope=scope, identifier=identifier)
                lock_ended = counter.locked_until is not None and counter.locked_until <= now
                if counter.window_started_at <= now - lockout or lock_ended:
                    counter.failure_count, counter.window_started_at, counter.locked_until = 0, now, None
                counter.failure_count += 1
                counter.last_failure_at = now
                if counter.failure_count >= max_failures and counter.locked_until is None:
                    counter.locked_until = now + lockout
                    newly_locked.append(counter)
                counter.save()
                counters.append(counter)
            entity_id = _user_entity_id(username)
            AuditLogEntry.objects.record(
                entity_type="user",
                entity_id=entity_id,
                operation="login_failed",
                performed_by="anonymous",
                details={
                    "username": username,
                    "address": address,
                    "failures": {counter.scope: counter.failure_count for counter in counters},
                },
            )
            for counter in newly_locked:
                AuditLogEntry.objects.record(
                    entity_type="user",
                    entity_id=entity_id if counter.scope == "username" else f"address:{counter.identifier}",
                    operation="login_locked",
                    performed_by="system",
                    details={
                        "scope": counter.scope,
                        "username": username,
                        "address": address,
                        "failures": counter.failure_count,
                        "locked_until": counter.locked_until,
                    },
                )
            self.prune(now=now, window=lockout)
        return newly_locked

    def record_refusal(self, username: str, address: str | None, *, locked_until: datetime) -> None:
        """Audit a sign-in refused unchecked because its username or address is locked."""
        AuditLogEntry.objects.record(
            entity_type="user",
            entity_id=_user_entity_id(username),
            operation="login_refused",
            performed_by="anonymous",
            details={"username": username, "address": address, "reason": "locked", "locked_until": locked_until},
        )

    def reset(self, username: str, address: str | None) -> int:
        """Forget the failures of a username and address after a successful sign-in."""
        deleted, _ = self._matching(username, address).delete()
        return deleted

    def unlock(self, name_or_address: str, *, by: Any) -> list[str]:
        """Lift the lock and failures of a username or an address before the lock ends; audited."""
        with transaction.atomic(using=self.db):
            matching = self.filter(
                Q(scope="username", identifier=name_or_address.lower()) | Q(scope="address", identifier=name_or_address)
            )
            scopes = sorted(matching.values_list("scope", flat=True))
            if scopes:
                matching.delete()
                AuditLogEntry.objects.record(
                    entity_type="user",
                    entity_id=_user_entity_id(name_or_address)
                    if scopes == ["username"]
                    else f"address:{name_or_address}",
                    operation="login_unlocked",
                    performed_by=by,
                    details={"unlocked": name_or_address, "scopes": scopes},
                )
        return scopes

    def prune(self, *, now: datetime, window: timedelta) -> int:
        """Drop counters whose window passed and that lock nothing (served by ix_login_throttles_last_failure)."""
        deleted, _ = (
            self.filter(last_failure_at__lt=now - window)
            .filter(Q(locked_until__isnull=True) | Q(locked_until__lte=now))
            .delete()
        )
        return deleted
