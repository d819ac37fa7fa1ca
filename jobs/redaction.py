"""Hide secret values (passwords, passphrases, tokens) before anything is shown or exported."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "••• redacted"
_SECRET_KEY = re.compile(r"(password|passphrase|secret|token|private_key|api_key|credential)", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def redact(value: Any) -> Any:
    """A copy of value with every secret-named key's value replaced, at any depth."""
    if isinstance(value, dict):
        return {
            key: (REDACTED if is_secret_key(str(key)) and item not in (None, "") else redact(item))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value
