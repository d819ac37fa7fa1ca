"""Key store errors with their codes."""

from __future__ import annotations

from courier_site.errors import CourierError


class CorruptKey(CourierError):
    code = "E4000"


class WrongPassphrase(CourierError):
    code = "E4001"


class DuplicateKey(CourierError):
    code = "E4002"


class KeyNotUsable(CourierError):
    """The key's state (retired, revoked, deleted) does not allow this use."""

    code = "E4003"
