"""Parse a job's flat step list into a tree of blocks (flow.foreach / flow.if / flow.else / flow.end)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.errors import ControlFlowError

OPENERS = {"flow.foreach", "flow.if"}


@dataclass
class Node:
    """A step, or a block opened by flow.foreach / flow.if with its body (and else branch)."""

    step: dict[str, Any]
    body: list[Node] = field(default_factory=list)
    else_body: list[Node] | None = None
    else_step: dict[str, Any] | None = None
    end_step: dict[str, Any] | None = None

    @property
    def type_key(self) -> str:
        return self.step["type_key"]

    @property
    def order(self) -> int:
        return self.step["step_order"]


def _label(step: dict[str, Any]) -> str:
    return f"step {step['step_order']} ({step.get('name') or step['type_key']})"


def parse(steps: list[dict[str, Any]]) -> list[Node]:
    """Build the block tree; unmatched or misplaced blocks raise ControlFlowError [E2025]."""
    root: list[Node] = []
    stack: list[tuple[Node, list[Node]]] = []  # open block and the body currently filled
    for step in sorted(steps, key=lambda item: item["step_order"]):
        kind = step["type_key"]
        current = stack[-1][1] if stack else root
        if kind in OPENERS:
            node = Node(step)
            current.append(node)
            stack.append((node, node.body))
        elif kind == "flow.else":
            if not stack or stack[-1][0].type_key != "flow.if":
                raise ControlFlowError(f"{_label(step)}: flow.else without an open flow.if")
            block = stack[-1][0]
            if block.else_body is not None:
                raise ControlFlowError(f"{_label(step)}: second flow.else for the flow.if at step {block.order}")
            block.else_body = []
            block.else_step = step
            stack[-1] = (block, block.else_body)
        elif kind == "flow.end":
            if not stack:
                raise ControlFlowError(f"{_label(step)}: flow.end without an open flow.foreach or flow.if")
            block, _ = stack.pop()
            block.end_step = step
        else:
            current.append(Node(step))
    if stack:
        block = stack[-1][0]
        raise ControlFlowError(f"{_label(block.step)}: {block.type_key} is never closed by flow.end")
    return root


def walk(nodes: list[Node]) -> list[Node]:
    """Every node in definition order, blocks before their bodies."""
    found: list[Node] = []
    for node in nodes:
        found.append(node)
        found.extend(walk(node.body))
        if node.else_body is not None:
            found.extend(walk(node.else_body))
    return found
