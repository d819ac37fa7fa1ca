"""Form fields for step configuration values that are not plain strings, typed as an operator writes them.

A path key that takes one path or several (`string_or_list`) is a box with one path or glob per
line: `out/*.csv` is the string, two lines are a list of two, and a `context:` reference is kept as
written. Numbers, lists and objects are JSON, and a `context:` reference needs no quotes either; an
`any` value that is not JSON is the text itself. JSON as before (`"out/*.csv"`, `["a", "b"]`) still
means what it says, so nothing stored or scripted changes meaning.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

CONTEXT_PREFIX = "context:"
EXAMPLES = {"integer": "3", "number": "2.5", "list": '["a", "b"]', "object": '{"key": "value"}'}


class TypedText(str):
    """Text as the operator typed it, shown back unchanged when the form is redrawn with an error."""


class ConfigValueField(forms.CharField):
    """One configuration key of a non-string kind (see the module docstring)."""

    def __init__(self, kind: str, **kwargs: Any) -> None:
        self.kind = kind
        if kind == "string_or_list":
            kwargs.setdefault("widget", forms.Textarea(attrs={"rows": 2, "wrap": "off"}))
        kwargs.setdefault("strip", False)
        super().__init__(**kwargs)

    def bound_data(self, data: Any, initial: Any) -> Any:
        return TypedText(data) if isinstance(data, str) else data

    def prepare_value(self, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, TypedText):
            return str(value)
        if self.kind == "string_or_list":
            lines = _as_lines(value)
            return lines if lines is not None else json.dumps(value, ensure_ascii=False)
        if isinstance(value, str) and (value.startswith(CONTEXT_PREFIX) or self.kind == "any"):
            # Shown bare unless the bare text would read back as another JSON value.
            return value if _as_json(value) is _NOT_JSON else json.dumps(value, ensure_ascii=False)
        return json.dumps(value, ensure_ascii=False)

    def to_python(self, value: Any) -> Any:
        text = super().to_python(value).strip()
        if not text:
            return None
        if self.kind == "string_or_list":
            return self._string_or_list(text)
        parsed = _as_json(text)
        if parsed is not _NOT_JSON:
            return parsed
        if self.kind == "any" or text.startswith(CONTEXT_PREFIX):
            return text
        example = EXAMPLES.get(self.kind, "null")
        raise ValidationError(
            f"[E2002] '{_excerpt(text)}' is not {self.kind} JSON (e.g. {example}) or a context: reference",
            code="invalid",
        )

    def _string_or_list(self, text: str) -> Any:
        if text.startswith(("[", '"')):
            parsed = _as_json(text)
            if isinstance(parsed, str) or (isinstance(parsed, list) and all(isinstance(item, str) for item in parsed)):
                return parsed
            raise ValidationError(
                f"[E2002] '{_excerpt(text)}' starts like JSON but is not a JSON string or list of strings; "
                "write one path per line, or valid JSON",
                code="invalid",
            )
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[0] if len(lines) == 1 else lines


_NOT_JSON = object()


def _as_lines(value: Any) -> str | None:
    """value as one path per line, or None when the lines would not read back as the same paths."""
    # A list of one would read back as a plain string: shown as JSON, it saves back unchanged.
    if isinstance(value, list) and len(value) < 2:
        return None
    items = value if isinstance(value, list) else [value]
    plain = all(isinstance(item, str) and item and item == item.strip() and "\n" not in item for item in items)
    if not plain or items[0].startswith(("[", '"')):
        return None
    return "\n".join(items)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")  # NaN and Infinity: Python reads them, jsonb does not


def _as_json(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError:
        return _NOT_JSON


def _excerpt(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
