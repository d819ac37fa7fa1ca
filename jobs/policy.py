"""Failure policy of a job: what happens when a step fails (SPEC 4.2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from jobs.errors import InvalidFailurePolicy

POLICY_TYPES = ("stop", "retry_step", "retry_job", "skip_and_continue")


@dataclass(frozen=True)
class FailurePolicy:
    type: str = "stop"
    max_retries: int = 3
    backoff_base_seconds: float = 1
    backoff_max_seconds: float = 60

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> FailurePolicy:
        """Parse the jobs.failure_policy JSON; bad values raise InvalidFailurePolicy [E2004]."""
        data = dict(data or {})
        unknown = set(data) - {"type", "max_retries", "backoff_base_seconds", "backoff_max_seconds"}
        if unknown:
            raise InvalidFailurePolicy(f"failure policy has unknown key(s): {', '.join(sorted(unknown))}")
        policy_type = data.get("type", "stop")
        if policy_type not in POLICY_TYPES:
            raise InvalidFailurePolicy(
                f"failure policy type must be one of {', '.join(POLICY_TYPES)}, not {policy_type!r}"
            )
        values: dict[str, Any] = {"type": policy_type}
        for key, low, high in (
            ("max_retries", 0, 10),
            ("backoff_base_seconds", 0, 3600),
            ("backoff_max_seconds", 0, 86400),
        ):
            if key not in data:
                continue
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise InvalidFailurePolicy(f"failure policy {key} must be a number from {low} to {high}, not {value!r}")
            values[key] = int(value) if key == "max_retries" else value
        policy = cls(**values)
        if policy.backoff_max_seconds < policy.backoff_base_seconds:
            raise InvalidFailurePolicy("failure policy backoff_max_seconds must not be below backoff_base_seconds")
        return policy

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def backoff(self, attempt: int) -> float:
        """Delay before retry number attempt+1: min(base * 2^attempt, max)."""
        return min(self.backoff_base_seconds * (2**attempt), self.backoff_max_seconds)
