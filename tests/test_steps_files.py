"""file.copy / file.move / file.rename / file.delete on real files, with path confinement [E2040]."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.errors import Cancelled, PathNotAllowed, StepFailed
from jobs.steps.base import CancelToken
from jobs.steps.files import CopyStep, DeleteStep, MoveStep, RenameStep
from tests.step_support import make_context


@pytest.fixture
def context(tmp_path: Path):
    ctx = make_context(tmp_path)
    (ctx.work_dir / "in").mkdir()
    for name, text in {"a.csv": "alpha", "b.csv": "bravo", "c.txt": "charlie"}.items():
        (ctx.work_dir / "in" / name).write_text(text)
    return ctx


def run(step, config, context):
    config = step.with_defaults(config)
    assert step.validate(config) == []
    return step.execute(config, context, context.cancel)


def test_copy_glob_into_a_directory_keeps_names(context) -> None:
    result = run(CopyStep(), {"source_path": "in/*.csv", "destination_path": "out/"}, context)

    assert sorted(Path(p).name for p in result.outputs["copied_files"]) == ["a.csv", "b.csv"]
    assert (context.work_dir / "out" / "a.csv").read_text() == "alpha"
    assert (context.work_dir / "in" / "a.csv").exists()
    assert result.bytes_processed == 10
    assert not list((context.work_dir / "out").glob("*.courier-tmp"))


def test_copy_to_a_file_name_needs_exactly_one_source(context) -> None:
    run(CopyStep(), {"source_path": "in/c.txt", "destination_path": "renamed.txt"}, context)
    assert (context.work_dir / "renamed.txt").read_text() == "charlie"
    with pytest.raises(StepFailed, match=r"\[E2050\].*2 files were selected"):
        run(CopyStep(), {"source_path": "in/*.csv", "destination_path": "one.csv"}, context)


def test_existing_target_is_kept_when_overwrite_is_false(context) -> None:
    (context.work_dir / "out").mkdir()
    (context.work_dir / "out" / "a.csv").write_text("older")
    with pytest.raises(StepFailed, match="exists and overwrite is false"):
        run(CopyStep(), {"source_path": "in/a.csv", "destination_path": "out/", "overwrite": False}, context)
    assert (context.work_dir / "out" / "a.csv").read_text() == "older"


def test_a_pattern_matching_nothing_fails_with_the_pattern(context) -> None:
    with pytest.raises(StepFailed, match=r"no file matches source 'in/\*.xml'"):
        run(CopyStep(), {"source_path": "in/*.xml", "destination_path": "out/"}, context)


def test_move_removes_the_sources(context) -> None:
    result = run(MoveStep(), {"source_path": ["in/a.csv", "in/b.csv"], "destination_path": "archive/"}, context)
    assert len(result.outputs["moved_files"]) == 2
    assert not (context.work_dir / "in" / "a.csv").exists()
    assert (context.work_dir / "archive" / "b.csv").read_text() == "bravo"


def test_rename_takes_a_bare_name_only(context) -> None:
    result = run(RenameStep(), {"path": "in/c.txt", "new_name": "c-final.txt"}, context)
    assert Path(result.outputs["renamed_file"]).name == "c-final.txt"
    problems = RenameStep().validate({"path": "in/a.csv", "new_name": "../escape.csv"})
    assert any("bare file name" in problem for problem in problems)


def test_delete_with_and_without_matches(context) -> None:
    result = run(DeleteStep(), {"path": "in/*.csv"}, context)
    assert len(result.outputs["deleted_files"]) == 2
    assert run(DeleteStep(), {"path": "in/*.csv"}, context).outputs["deleted_files"] == []
    with pytest.raises(StepFailed, match="no file matches"):
        run(DeleteStep(), {"path": "in/*.csv", "fail_if_not_found": True}, context)


@pytest.mark.parametrize("destination", ["../../../escaped.txt", "/etc/courier-test.txt"])
def test_paths_outside_the_allowed_roots_are_refused(context, destination: str) -> None:
    with pytest.raises(PathNotAllowed, match=r"\[E2040\]"):
        run(CopyStep(), {"source_path": "in/a.csv", "destination_path": destination}, context)


def test_a_symlink_pointing_outside_is_refused(context, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    os.symlink(outside, context.work_dir / "in" / "link.csv")
    with pytest.raises(PathNotAllowed, match=r"\[E2040\]"):
        run(CopyStep(), {"source_path": "in/link.csv", "destination_path": "out/"}, context)


def test_copy_stops_between_chunks_when_cancelled(context) -> None:
    token = CancelToken()
    token.request("cancel")
    context.cancel = token
    with pytest.raises(Cancelled):
        CopyStep().execute(
            CopyStep().with_defaults({"source_path": "in/a.csv", "destination_path": "out/"}), context, token
        )
    assert not list((context.work_dir / "out").glob("*"))


@pytest.mark.parametrize("step", [CopyStep(), MoveStep()], ids=["copy", "move"])
@pytest.mark.parametrize("destination", ["out/", "out/a-copy.csv"])
def test_cleanup_before_retry_removes_this_executions_half_written_copies_only(context, step, destination) -> None:
    out = context.work_dir / "out"
    out.mkdir()
    ours = [out / ".a.csv.exec.k3j2h1.courier-tmp", out / ".a-copy.csv.exec.p0o9i8.courier-tmp"]
    theirs = out / ".a.csv.other-execution.q1w2e3.courier-tmp"
    for path in [*ours, theirs, out / "kept.csv"]:
        path.write_text("partial")

    step.cleanup_before_retry(step.with_defaults({"source_path": "in/a.csv", "destination_path": destination}), context)

    assert sorted(path.name for path in out.iterdir()) == [theirs.name, "kept.csv"]
    assert (context.work_dir / "in" / "a.csv").read_text() == "alpha"


def test_a_copy_in_progress_is_written_under_a_hidden_name_carrying_the_execution(context) -> None:
    seen: list[str] = []

    class Watching(CancelToken):
        def check(self) -> None:
            seen.extend(path.name for path in (context.work_dir / "out").iterdir())
            super().check()

    big = context.work_dir / "in" / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    (context.work_dir / "out").mkdir()
    config = CopyStep().with_defaults({"source_path": "in/big.bin", "destination_path": "out/"})
    CopyStep().execute(config, context, Watching())

    assert seen and all(name.startswith(".big.bin.exec.") and name.endswith(".courier-tmp") for name in seen)
    assert sorted(path.name for path in (context.work_dir / "out").iterdir()) == ["big.bin"]


@pytest.mark.parametrize("step", [CopyStep(), MoveStep()], ids=["copy", "move"])
def test_unset_overwrite_replaces_inside_the_work_dir_and_keeps_a_file_elsewhere(context, step, tmp_path) -> None:
    (context.work_dir / "out").mkdir()
    (context.work_dir / "out" / "a.csv").write_text("older")
    run(step, {"source_path": "in/a.csv", "destination_path": "out/"}, context)
    assert (context.work_dir / "out" / "a.csv").read_text() == "alpha"

    outbox = tmp_path / "data" / "outbox"
    outbox.mkdir()
    (outbox / "b.csv").write_text("not fetched by the partner yet")
    with pytest.raises(StepFailed, match=r"exists outside the work dir, where an unset overwrite keeps it"):
        run(step, {"source_path": "in/b.csv", "destination_path": f"{outbox}/"}, context)
    assert (outbox / "b.csv").read_text() == "not fetched by the partner yet"
    assert (context.work_dir / "in" / "b.csv").exists()

    run(step, {"source_path": "in/b.csv", "destination_path": f"{outbox}/", "overwrite": True}, context)
    assert (outbox / "b.csv").read_text() == "bravo"


def test_unset_overwrite_outside_the_work_dir_replaces_an_identical_file_from_an_earlier_attempt(
    context, tmp_path
) -> None:
    outbox = tmp_path / "data" / "outbox"
    outbox.mkdir()
    config = {"source_path": "in/a.csv", "destination_path": f"{outbox}/"}
    run(CopyStep(), config, context)  # the attempt whose worker died before its checkpoint
    (context.work_dir / "in" / "a.csv").write_text("alpha")  # a retried run fetched the same file anew

    result = run(CopyStep(), config, context)

    assert result.outputs["copied_files"] == [str(outbox / "a.csv")]
    assert (outbox / "a.csv").read_text() == "alpha"
    (context.work_dir / "in" / "a.csv").write_text("alphb")  # same size, other bytes: a different file
    with pytest.raises(StepFailed, match="unset overwrite keeps it"):
        run(CopyStep(), config, context)
