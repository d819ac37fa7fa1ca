"""Step configuration values typed as an operator writes them: paths one per line, bare context: references,
JSON for numbers, lists and objects, and the same value shown back as it reads."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from jobs.config_fields import ConfigValueField


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("out/*.csv", "out/*.csv"),
        ("  out/report 2026.csv  ", "out/report 2026.csv"),
        ("in/a.csv\nin/b.csv\n\n", ["in/a.csv", "in/b.csv"]),
        ("in/a.csv\r\n  in/b.csv", ["in/a.csv", "in/b.csv"]),
        ("context:download.downloaded_files", "context:download.downloaded_files"),
        ('"out/*.csv"', "out/*.csv"),
        ('["in/a.csv", "in/b.csv"]', ["in/a.csv", "in/b.csv"]),
        ("", None),
    ],
)
def test_a_path_key_takes_one_path_per_line_or_json(typed: str, stored: object) -> None:
    assert ConfigValueField("string_or_list", required=False).clean(typed) == stored


@pytest.mark.parametrize("typed", ['["in/a.csv", 3]', "[in/a.csv", '"unclosed', "[1, 2]", "[]x"])
def test_a_path_key_that_starts_like_json_must_be_a_json_string_or_list(typed: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ConfigValueField("string_or_list").clean(typed)
    assert "[E2002]" in refused.value.messages[0] and "one path per line" in refused.value.messages[0]


@pytest.mark.parametrize(
    ("kind", "typed", "stored"),
    [
        ("integer", "3", 3),
        ("integer", "context:limits.parts", "context:limits.parts"),
        ("number", "2.5", 2.5),
        ("list", '["a", "b"]', ["a", "b"]),
        ("object", '{"region": "eu"}', {"region": "eu"}),
        ("any", "done", "done"),
        ("any", '"42"', "42"),
        ("any", "42", 42),
        ("any", "context:1.status", "context:1.status"),
    ],
)
def test_other_kinds_take_json_or_a_bare_context_reference(kind: str, typed: str, stored: object) -> None:
    assert ConfigValueField(kind).clean(typed) == stored


@pytest.mark.parametrize(("kind", "typed"), [("integer", "three"), ("number", "NaN"), ("number", "Infinity")])
def test_a_value_that_is_neither_json_nor_a_reference_is_refused_with_e2002(kind: str, typed: str) -> None:
    with pytest.raises(ValidationError) as refused:
        ConfigValueField(kind).clean(typed)
    message = refused.value.messages[0]
    assert message.startswith("[E2002]") and typed in message and kind in message


def test_a_nul_character_is_refused() -> None:
    with pytest.raises(ValidationError):
        ConfigValueField("string_or_list").clean("in/a\x00.csv")


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("string_or_list", "out/*.csv"),
        ("string_or_list", ["in/a.csv", "in/b.csv"]),
        ("string_or_list", ["in/only.csv"]),
        ("string_or_list", "context:1.downloaded_files"),
        ("string_or_list", "[2026] report.csv"),
        ("string_or_list", ["in/a.csv", " padded.csv"]),
        ("string_or_list", ["line\nbreak.csv"]),
        ("integer", 3),
        ("integer", "context:limits.parts"),
        ("any", "done"),
        ("any", "42"),
        ("any", "true"),
        ("any", {"a": [1, 2]}),
        ("object", {"region": "eu"}),
    ],
)
def test_a_stored_value_is_shown_so_that_saving_it_again_keeps_it(kind: str, value: object) -> None:
    field = ConfigValueField(kind)
    assert field.clean(field.prepare_value(value)) == value


def test_a_path_list_is_shown_one_per_line_and_typed_text_is_shown_back_as_typed() -> None:
    field = ConfigValueField("string_or_list")
    assert field.prepare_value(["in/a.csv", "in/b.csv"]) == "in/a.csv\nin/b.csv"
    assert field.prepare_value(field.bound_data('["broken', None)) == '["broken'
