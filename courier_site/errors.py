"""Courier's error type with stable, searchable error codes."""

from __future__ import annotations


class CourierError(Exception):
    """An error an operator can act on; its message starts with the stable code, e.g. [E1002]."""

    code = "E1000"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        if code:
            self.code = code
        self.detail = message
        super().__init__(f"[{self.code}] {message}")


class MigrationScriptFailed(CourierError):
    code = "E1001"


class MigrationChecksumChanged(CourierError):
    code = "E1002"


class SchemaBehind(CourierError):
    code = "E1003"


class PartitionMissing(CourierError):
    code = "E1004"


class ConfigurationError(CourierError):
    code = "E1005"
