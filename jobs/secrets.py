"""Secret step settings (archive passwords …) are sealed with the master key inside the step configuration."""

from __future__ import annotations

import base64
from typing import Any

from courier_site.envelope import keyring
from courier_site.errors import CourierError
from jobs.steps.base import get_step_type

SEALED_KEY = "sealed"


def is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {SEALED_KEY} and isinstance(value[SEALED_KEY], str)


def _secret_names(type_key: str) -> set[str]:
    try:
        return {field.name for field in get_step_type(type_key).fields if field.secret}
    except CourierError:
        return set()


def seal_config(type_key: str, configuration: dict[str, Any]) -> dict[str, Any]:
    """The configuration with every plain secret value replaced by {"sealed": "<base64 envelope>"}."""

    names = _secret_names(type_key)
    sealed = dict(configuration)
    for name in names:
        value = sealed.get(name)
        if isinstance(value, str) and value and not value.startswith("context:"):
            sealed[name] = {SEALED_KEY: base64.b64encode(keyring().seal(value)).decode()}
    return sealed


def unseal_config(configuration: dict[str, Any]) -> dict[str, Any]:
    """The configuration with sealed values opened, for the step about to run (never stored)."""

    opened = dict(configuration)
    for name, value in configuration.items():
        if is_sealed(value):
            opened[name] = keyring().open_text(base64.b64decode(value[SEALED_KEY]))
    return opened
