"""Execution context: `context:` references, built-in keys and date templating in step configuration."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from jobs.errors import ContextReferenceError, MissingContextValue

PREFIX = "context:"
_TOKEN = re.compile(r"\.?([^.\[\]]+)|\[(-?\d+)\]")
_TEMPLATE = re.compile(r"\{(date(?::([^}]*))?|execution_id)\}")


def _split_path(expression: str) -> list[str | int]:
    parts: list[str | int] = []
    position = 0
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if not match:
            raise ContextReferenceError(f"malformed context reference '{PREFIX}{expression}'")
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        position = match.end()
    return parts


def lookup(values: dict[str, Any], expression: str) -> Any:
    """Value of `expression` (without the prefix) in values.

    Keys themselves contain dots ("2.copied_files", "loop.current_item"), so the longest
    key that prefixes the expression wins; what remains is a path of `.prop` and `[index]`
    steps into the structured value.
    """
    candidates = sorted(
        (key for key in values if expression == key or expression.startswith((key + ".", key + "["))), key=len
    )
    if not candidates:
        raise MissingContextValue(f"context reference '{PREFIX}{expression}' names no key in the execution context")
    key = candidates[-1]
    value = values[key]
    rest = expression[len(key) :]
    for part in _split_path(rest) if rest else []:
        try:
            value = value[part] if not isinstance(value, dict) or isinstance(part, str) else value[str(part)]
        except (KeyError, IndexError, TypeError):
            raise MissingContextValue(
                f"context reference '{PREFIX}{expression}': '{key}' has no element {part!r}"
            ) from None
    return value


def render_template(text: str, *, now: datetime, execution_id: str) -> str:
    """Expand {date:%Y%m%d} (strftime format; bare {date} is %Y-%m-%d) and {execution_id}."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) == "execution_id":
            return execution_id
        return now.strftime(match.group(2) or "%Y-%m-%d")

    return _TEMPLATE.sub(replace, text)


def resolve(value: Any, values: dict[str, Any], *, now: datetime, execution_id: str) -> Any:
    """Configuration with every `context:` reference replaced (also inside lists and objects)."""
    if isinstance(value, str):
        if value.startswith(PREFIX):
            return lookup(values, value[len(PREFIX) :])
        return render_template(value, now=now, execution_id=execution_id)
    if isinstance(value, list):
        return [resolve(item, values, now=now, execution_id=execution_id) for item in value]
    if isinstance(value, dict):
        return {key: resolve(item, values, now=now, execution_id=execution_id) for key, item in value.items()}
    return value


def references(value: Any) -> list[str]:
    """The `context:` references a configuration value holds (for definition checks)."""
    if isinstance(value, str):
        return [value[len(PREFIX) :]] if value.startswith(PREFIX) else []
    if isinstance(value, list):
        return [ref for item in value for ref in references(item)]
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in references(item)]
    return []
