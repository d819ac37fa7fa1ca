"""Control-flow step types; the engine interprets them, these classes declare and validate their keys."""

from __future__ import annotations

import re
from typing import Any

from jobs.steps.base import ConfigField, StepType, register

OPERATORS = ("equals", "not_equals", "contains", "greater_than", "less_than", "exists", "regex")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def evaluate(left: Any, operator: str, right: Any) -> bool:
    """The condition of flow.if; comparisons are numeric when both sides are numbers, else textual."""
    if operator == "exists":
        return left not in (None, "", [], {})
    if operator == "equals":
        return left == right or str(left) == str(right)
    if operator == "not_equals":
        return not (left == right or str(left) == str(right))
    if operator == "contains":
        if isinstance(left, (list, tuple)):
            return any(str(item).casefold() == str(right).casefold() for item in left)
        return str(right).casefold() in str(left).casefold()
    if operator in ("greater_than", "less_than"):
        a, b = _number(left), _number(right)
        pair = (a, b) if a is not None and b is not None else (str(left), str(right))
        return pair[0] > pair[1] if operator == "greater_than" else pair[0] < pair[1]
    if operator == "regex":
        return re.search(str(right), str(left)) is not None
    raise ValueError(f"unknown operator {operator!r}")


@register
class ForEachStep(StepType):
    type_key = "flow.foreach"
    label = "For each item"
    description = "Repeat the steps up to the matching flow.end once per item of a list."
    is_control_flow = True
    fields = (
        ConfigField(
            "source",
            "any",
            required=True,
            help="A JSON list, or a context reference to one (e.g. context:0.file_list).",
        ),
    )
    outputs = ("loop.current_item", "loop.index")


@register
class IfStep(StepType):
    type_key = "flow.if"
    label = "If"
    description = "Run the steps up to flow.else / flow.end only when the condition holds."
    is_control_flow = True
    fields = (
        ConfigField("left", "any", help="Left side: a value or a context reference."),
        ConfigField("operator", "string", required=True, choices=OPERATORS, help="How to compare the two sides."),
        ConfigField("right", "any", help="Right side: a value or a context reference (not used by exists)."),
    )

    def validate(self, config: dict[str, Any], step_label: str = "step") -> list[str]:
        problems = super().validate(config, step_label)
        right = config.get("right")
        if config.get("operator") == "regex" and isinstance(right, str) and not right.startswith("context:"):
            try:
                re.compile(right)
            except re.error as error:
                problems.append(f"{step_label}: key 'right' is not a valid regular expression ({error})")
        if "left" not in config:
            problems.append(f"{step_label}: required key 'left' is missing")
        return problems


@register
class ElseStep(StepType):
    type_key = "flow.else"
    label = "Else"
    description = "Steps up to flow.end run when the flow.if condition does not hold."
    is_control_flow = True


@register
class EndStep(StepType):
    type_key = "flow.end"
    label = "End block"
    description = "Closes the innermost flow.foreach or flow.if."
    is_control_flow = True
