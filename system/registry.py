"""The system settings Courier knows: each key's type, allowed values, default and help for operators."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from courier_site.errors import CourierError

# Spellings accepted for booleans; stored as 'true' / 'false'. system.values.setting_bool
# reads the same words, so a value typed into psql means the same as one saved here.
TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})


class SettingValueInvalid(CourierError):
    code = "E1006"


class UnknownSetting(CourierError):
    code = "E1007"


@dataclass(frozen=True, kw_only=True)
class SettingSpec(ABC):
    """One known key. Subclasses parse and describe their type."""

    key: str
    help: str
    default: Any
    # Secret values are never shown in lists nor written to the audit log.
    secret: bool = False

    @abstractmethod
    def parse(self, raw: str) -> Any:
        """The typed value of raw, or SettingValueInvalid [E1006]."""

    def format(self, value: Any) -> str:
        return str(value)

    def normalize(self, raw: str) -> str:
        """The stored form of raw, or SettingValueInvalid [E1006] naming the key and what is allowed."""
        return self.format(self.parse(raw))

    @abstractmethod
    def describe(self) -> str:
        """What values are allowed, for the operator."""

    def options(self) -> list[str] | None:
        """Fixed values the console offers in a drop-down, or None for free input."""
        return None

    def refuse(self, raw: str) -> SettingValueInvalid:
        return SettingValueInvalid(f"{self.key} must be {self.describe()}, not {raw!r}")


@dataclass(frozen=True, kw_only=True)
class IntegerSetting(SettingSpec):
    minimum: int
    maximum: int
    unit: str = ""

    def parse(self, raw: str) -> int:
        text = str(raw).strip()
        try:
            value = int(text)
        except ValueError:
            raise self.refuse(raw) from None
        if not self.minimum <= value <= self.maximum:
            raise self.refuse(raw)
        return value

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"a whole number from {self.minimum} to {self.maximum}{unit}"


@dataclass(frozen=True, kw_only=True)
class BooleanSetting(SettingSpec):
    def parse(self, raw: str) -> bool:
        word = str(raw).strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise self.refuse(raw)

    def format(self, value: Any) -> str:
        return "true" if value else "false"

    def describe(self) -> str:
        return "true or false"

    def options(self) -> list[str]:
        return ["true", "false"]


@dataclass(frozen=True, kw_only=True)
class ChoiceSetting(SettingSpec):
    choices: tuple[str, ...]

    def parse(self, raw: str) -> str:
        word = str(raw).strip().lower()
        for choice in self.choices:
            if choice.lower() == word:
                return choice
        raise self.refuse(raw)

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)

    def options(self) -> list[str]:
        return list(self.choices)


def _retention(key: str, table: str, default: int) -> IntegerSetting:
    return IntegerSetting(
        key=key,
        help=f"Months of {table} kept in the database. Older monthly partitions are exported "
        "to the archive, verified, then dropped.",
        default=default,
        minimum=1,
        maximum=120,
        unit="months",
    )


# Every key seeded by sql/ (0004, 0006) and read by the code. A new key gets its entry here
# in the same change as the SQL script that seeds it (tests check that none is missing).
SETTINGS: dict[str, SettingSpec] = {
    spec.key: spec
    for spec in (
        IntegerSetting(
            key="job.concurrency_limit",
            help="Most job executions running at once across all workers; further runs wait in the queue. "
            "Give the workers together at least this many Celery processes.",
            default=5,
            minimum=1,
            maximum=1000,
            unit="executions",
        ),
        IntegerSetting(
            key="job.temp_cleanup_days",
            help="Days after which the work directory of an execution that can no longer be resumed is removed.",
            default=7,
            minimum=1,
            maximum=365,
            unit="days",
        ),
        IntegerSetting(
            key="monitor.file_log_retention_days",
            help="Days a file monitor's log of triggered files is kept before the daily prune deletes it.",
            default=30,
            minimum=1,
            maximum=3650,
            unit="days",
        ),
        IntegerSetting(
            key="key.expiration_warning_days",
            help="PGP keys expiring within this many days are marked Expiring and shown on the dashboard.",
            default=30,
            minimum=1,
            maximum=365,
            unit="days",
        ),
        _retention("audit.partition_retention_months", "audit log", 12),
        _retention("job.execution_partition_retention_months", "job executions", 12),
        _retention("job.step_execution_partition_retention_months", "step executions", 12),
        _retention("monitor.file_log_partition_retention_months", "monitor file log", 6),
        _retention("events.partition_retention_months", "domain events", 12),
        IntegerSetting(
            key="events.relay_max_attempts",
            help="Tries of a domain event's handling (notification rules) before the relay gives up on it "
            "and marks it failed, with its error, in the domain events list.",
            default=5,
            minimum=1,
            maximum=100,
            unit="tries",
        ),
        IntegerSetting(
            key="notifications.max_attempts",
            help="Tries of a notification (mail or webhook) before its delivery is marked failed.",
            default=5,
            minimum=1,
            maximum=50,
            unit="tries",
        ),
        IntegerSetting(
            key="notifications.retry_base_seconds",
            help="Wait before the first retry of a notification a receiver did not take; it doubles with each try.",
            default=30,
            minimum=0,
            maximum=3600,
            unit="seconds",
        ),
        IntegerSetting(
            key="partition.archive_overdue_warning_months",
            help="Months past retention after which a partition not yet archived turns /health/partitions to warning.",
            default=2,
            minimum=1,
            maximum=24,
            unit="months",
        ),
        IntegerSetting(
            key="partition.months_ahead",
            help="Monthly partitions kept ready beyond the current month, so inserts never miss one.",
            default=2,
            minimum=2,
            maximum=24,
            unit="months",
        ),
        BooleanSetting(
            key="security.fips_mode_enabled",
            help="Use only FIPS 140-2 approved algorithms for Courier's own cryptography and transfers; "
            "a connection may opt out with fips_override.",
            default=True,
        ),
        BooleanSetting(
            key="security.fips_override_require_admin",
            help="Only Admins may set fips_override on a connection.",
            default=True,
        ),
        BooleanSetting(
            key="security.public_key_share_links_enabled",
            help="Admins may create unauthenticated download links for public keys.",
            default=False,
        ),
        IntegerSetting(
            key="security.max_share_link_days",
            help="Longest lifetime of a public key share link.",
            default=30,
            minimum=1,
            maximum=365,
            unit="days",
        ),
        BooleanSetting(
            key="security.insecure_trust_require_admin",
            help="Only Admins may set AlwaysTrust (SSH host keys) or Insecure (TLS certificates) on a connection.",
            default=True,
        ),
        BooleanSetting(
            key="security.insecure_trust_allow_production",
            help="Allow AlwaysTrust / Insecure trust policies when COURIER_ENV is production.",
            default=False,
        ),
    )
}


def spec_for(key: str) -> SettingSpec:
    """The registered spec of key, or UnknownSetting [E1007]."""
    try:
        return SETTINGS[key]
    except KeyError:
        raise UnknownSetting(f"{key!r} is not a setting Courier knows") from None
