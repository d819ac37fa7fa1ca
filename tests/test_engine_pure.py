"""Pure helpers of the job engine: context references, templating, block parsing, policies, states."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from jobs.engine import context
from jobs.engine.flow import parse, walk
from jobs.engine.states import check_job_transition, check_step_transition
from jobs.errors import ContextReferenceError, ControlFlowError, IllegalTransition, InvalidFailurePolicy
from jobs.policy import FailurePolicy
from jobs.steps.flow import evaluate

NOW = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
VALUES = {
    "0.file_list": [{"name": "a.csv", "size": 10}, {"name": "b.csv", "size": 2048}],
    "0.file_count": 2,
    "fetch.downloaded_files": ["/data/in/a.csv"],
    "loop.current_item": {"name": "a.csv", "tags": ["x", "y"]},
    "job.name": "invoices",
}


def resolve(value: object) -> object:
    return context.resolve(value, VALUES, now=NOW, execution_id="abc123")


def test_plain_reference_returns_the_value_itself_not_a_string() -> None:
    assert resolve("context:0.file_count") == 2
    assert resolve("context:0.file_list") == VALUES["0.file_list"]


def test_reference_paths_reach_into_lists_and_objects() -> None:
    assert resolve("context:0.file_list[1].name") == "b.csv"
    assert resolve("context:loop.current_item.name") == "a.csv"
    assert resolve("context:loop.current_item.tags[-1]") == "y"


def test_references_inside_lists_and_objects_are_resolved() -> None:
    assert resolve({"paths": ["context:fetch.downloaded_files", "static.txt"], "n": "context:0.file_count"}) == {
        "paths": [["/data/in/a.csv"], "static.txt"],
        "n": 2,
    }


def test_unknown_key_fails_with_its_name_and_code() -> None:
    with pytest.raises(ContextReferenceError, match=r"\[E2003\].*context:3.uploaded_files"):
        resolve("context:3.uploaded_files")


def test_missing_element_of_a_known_key_names_the_element() -> None:
    with pytest.raises(ContextReferenceError, match=r"'0.file_list' has no element 5"):
        resolve("context:0.file_list[5]")


def test_date_and_execution_templates_expand_in_plain_strings() -> None:
    assert resolve("out/{date:%Y%m%d}/{execution_id}.zip") == "out/20261124/abc123.zip"
    assert resolve("report-{date}.csv") == "report-2026-11-24.csv"


def test_references_are_listed_for_definition_checks() -> None:
    assert context.references({"a": ["context:x.y", 3], "b": "plain", "c": "context:z"}) == ["x.y", "z"]


def step(order: int, type_key: str) -> dict[str, object]:
    return {"step_order": order, "type_key": type_key, "name": f"s{order}", "configuration": {}}


def test_nested_blocks_parse_into_a_tree() -> None:
    tree = parse(
        [
            step(0, "sftp.list"),
            step(1, "flow.foreach"),
            step(2, "flow.if"),
            step(3, "file.copy"),
            step(4, "flow.else"),
            step(5, "file.delete"),
            step(6, "flow.end"),
            step(7, "flow.end"),
            step(8, "file.zip"),
        ]
    )
    assert [node.order for node in tree] == [0, 1, 8]
    loop = tree[1]
    assert [node.order for node in loop.body] == [2]
    branch = loop.body[0]
    assert [node.order for node in branch.body] == [3]
    assert [node.order for node in branch.else_body] == [5]
    assert [node.order for node in walk(tree)] == [0, 1, 2, 3, 5, 8]


@pytest.mark.parametrize(
    ("types", "message"),
    [
        (["flow.foreach", "file.copy"], "step 0 .* is never closed"),
        (["file.copy", "flow.end"], "step 1 .* flow.end without an open"),
        (["flow.foreach", "flow.else", "flow.end"], "flow.else without an open flow.if"),
        (["flow.if", "flow.else", "flow.else", "flow.end"], "second flow.else"),
        (["flow.else"], "flow.else without an open flow.if"),
    ],
)
def test_malformed_blocks_are_refused_with_e2025(types: list[str], message: str) -> None:
    with pytest.raises(ControlFlowError, match=r"\[E2025\] .*" + message):
        parse([step(order, type_key) for order, type_key in enumerate(types)])


@pytest.mark.parametrize(
    ("left", "operator", "right", "expected"),
    [
        ("Invoice.CSV", "contains", "invoice", True),
        (["a.csv", "B.csv"], "contains", "b.CSV", True),
        ("10", "greater_than", "9", True),  # numeric, not textual
        ("b", "greater_than", "a", True),
        (3, "less_than", 3.5, True),
        ("x", "equals", "x", True),
        (5, "equals", "5", True),
        ("x", "not_equals", "y", True),
        ("", "exists", None, False),
        ([1], "exists", None, True),
        ("inv_2026.csv", "regex", r"^inv_\d{4}\.csv$", True),
    ],
)
def test_if_operators(left: object, operator: str, right: object, expected: bool) -> None:
    assert evaluate(left, operator, right) is expected


def test_failure_policy_backoff_doubles_up_to_the_maximum() -> None:
    policy = FailurePolicy.from_json({"type": "retry_step", "backoff_base_seconds": 1, "backoff_max_seconds": 5})
    assert [policy.backoff(attempt) for attempt in range(5)] == [1, 2, 4, 5, 5]


@pytest.mark.parametrize(
    "data",
    [
        {"type": "retry_forever"},
        {"type": "stop", "max_retries": -1},
        {"type": "stop", "colour": "red"},
        {"type": "retry_step", "backoff_base_seconds": 10, "backoff_max_seconds": 1},
        {"max_retries": True},
    ],
)
def test_invalid_failure_policies_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(InvalidFailurePolicy, match=r"\[E2004\]"):
        FailurePolicy.from_json(data)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        ("queued", "running"),
        ("running", "paused"),
        ("paused", "queued"),
        ("running", "completed"),
        ("queued", "cancelled"),
        ("paused", "cancelled"),
    ],
)
def test_allowed_job_transitions(current: str, new: str) -> None:
    check_job_transition(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        ("completed", "running"),
        ("failed", "queued"),
        ("queued", "paused"),
        ("paused", "running"),
        ("created", "running"),
        ("cancelled", "queued"),
    ],
)
def test_other_job_transitions_are_refused_with_e2010(current: str, new: str) -> None:
    with pytest.raises(IllegalTransition, match=r"\[E2010\]"):
        check_job_transition(current, new)


def test_step_transitions_follow_the_step_state_machine() -> None:
    check_step_transition("pending", "running")
    check_step_transition("running", "skipped")
    with pytest.raises(IllegalTransition):
        check_step_transition("completed", "running")
