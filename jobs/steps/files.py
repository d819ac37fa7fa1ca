"""Local file steps: copy, move, rename and delete, confined to the allowed directories [E2040]."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from jobs.diskfull import reporting_disk_full
from jobs.errors import StepFailed
from jobs.paths import expand, has_glob, resolve_path
from jobs.steps.base import CancelToken, ConfigField, StepContext, StepResult, StepType, as_list, iter_chunks, register

CHUNK = 1024 * 1024
TEMP_SUFFIX = ".courier-tmp"


def temp_prefix(name: str, execution_id: str) -> str:
    """Start of the hidden name a copy is written under: the target's name (cut short) and the execution's id,
    so that a retry finds and removes its own leftovers and never another run's copy in progress."""
    return f".{name[:100]}.{execution_id}."


def select_sources(raw: Any, context: StepContext) -> list[Path]:
    """Files named by a path, glob or list of them; a name or pattern matching nothing fails the step."""
    found: list[Path] = []
    for item in as_list(raw):
        if not isinstance(item, str) or not item:
            raise StepFailed(f"source path {item!r} is not a file name or pattern")
        matches = expand(item, context.work_dir, context.allowed_roots)
        if not matches or (not has_glob(item) and not matches[0].is_file()):
            raise StepFailed(f"no file matches source '{item}'")
        found.extend(match for match in matches if match not in found)
    return found


def plan_targets(sources: list[Path], destination: str, context: StepContext) -> list[tuple[Path, Path]]:
    """(source, target) pairs: a destination ending in / or naming a directory receives files by name."""
    target = resolve_path(destination, context.work_dir, context.allowed_roots)
    if destination.endswith(("/", os.sep)) or target.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        pairs = [
            (source, resolve_path(target / source.name, context.work_dir, context.allowed_roots)) for source in sources
        ]
        names = [pair[1] for pair in pairs]
        if len(set(names)) != len(names):
            raise StepFailed(f"several sources share a file name; they would overwrite each other in {target}")
        return pairs
    if len(sources) != 1:
        raise StepFailed(
            f"destination '{destination}' is a file name but {len(sources)} files were selected; "
            "end it with / to copy them into a directory"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    return [(sources[0], target)]


def copy_file(source: Path, target: Path, context: StepContext, cancel: CancelToken) -> int:
    """Stream source to a temporary name beside target, then rename it into place atomically."""
    copied = 0
    with reporting_disk_full(target, needed=source.stat().st_size):
        descriptor, temporary = tempfile.mkstemp(
            prefix=temp_prefix(target.name, context.execution_id), suffix=TEMP_SUFFIX, dir=target.parent
        )
        try:
            with os.fdopen(descriptor, "wb") as output, source.open("rb") as data:
                for chunk in iter_chunks(data, cancel, CHUNK):
                    output.write(chunk)
                    copied += len(chunk)
                    context.progress.add(len(chunk))
            shutil.copystat(source, temporary)
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
    return copied


def overwrite_allowed(setting: bool | None, target: Path, context: StepContext) -> bool:
    """The step's overwrite setting; unset, a target inside the work dir may be replaced and one elsewhere not."""
    if setting is not None:
        return bool(setting)
    return target.resolve().is_relative_to(context.work_dir.resolve())


def same_content(source: Path, target: Path, cancel: CancelToken) -> bool:
    """Whether target holds exactly source's bytes: what an earlier attempt of the run delivered (a copy
    interrupted before its checkpoint, or a retried run fetching the same file again)."""
    try:
        if source.stat().st_size != target.stat().st_size:
            return False
        with source.open("rb") as ours, target.open("rb") as theirs:
            for chunk in iter_chunks(ours, cancel, CHUNK):
                if theirs.read(len(chunk)) != chunk:
                    return False
    except OSError:
        return False
    return True


def check_overwrite(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise StepFailed(f"target {target} exists and overwrite is false")


class _TransferStep(StepType):
    fields = (
        ConfigField(
            "source_path",
            "string_or_list",
            required=True,
            help="File, glob (*.csv) or list of them; relative paths are inside the execution's work dir.",
        ),
        ConfigField(
            "destination_path",
            "string",
            required=True,
            help="Target file, or a directory (ends with / or exists) that receives the files by name.",
        ),
        ConfigField(
            "overwrite",
            "boolean",
            help="Replace existing targets. Unset: yes inside the execution's work dir, no elsewhere (an outbox "
            "keeps a file a partner has not fetched yet).",
        ),
    )

    def _pairs(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> list[tuple[Path, Path]]:
        pairs = plan_targets(select_sources(config["source_path"], context), config["destination_path"], context)
        context.progress.bytes_total = sum(source.stat().st_size for source, _ in pairs)
        for source, target in pairs:
            if source == target:
                raise StepFailed(f"source and destination are the same file: {source}")
            setting = config.get("overwrite")
            if not target.exists() or overwrite_allowed(setting, target, context):
                continue
            check_overwrite(target, setting is None)  # overwrite set to no
            if not same_content(source, target, cancel):
                raise StepFailed(
                    f"target {target} exists outside the work dir, where an unset overwrite keeps it; "
                    "set overwrite to yes to replace it"
                )
        return pairs

    def cleanup_before_retry(self, config: dict[str, Any], context: StepContext) -> None:
        """Remove the half-written copies a killed or failed attempt of this execution left in the destination."""
        destination = config.get("destination_path")
        if not isinstance(destination, str) or not destination:
            return
        target = resolve_path(destination, context.work_dir, context.allowed_roots)
        folder = target if destination.endswith(("/", os.sep)) or target.is_dir() else target.parent
        if not folder.is_dir():
            return
        for leftover in folder.glob(f".*.{context.execution_id}.*{TEMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)


@register
class CopyStep(_TransferStep):
    type_key = "file.copy"
    label = "Copy files"
    description = "Copy one or more files."
    outputs = ("copied_files",)

    def execute(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> StepResult:
        copied, total = [], 0
        for source, target in self._pairs(config, context, cancel):
            total += copy_file(source, target, context, cancel)
            copied.append(str(target))
        return StepResult(outputs={"copied_files": copied}, bytes_processed=total, files=copied)


@register
class MoveStep(_TransferStep):
    type_key = "file.move"
    label = "Move files"
    description = "Move one or more files (a rename when on the same file system)."
    outputs = ("moved_files",)

    def execute(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> StepResult:
        moved, sources, total = [], [], 0
        for source, target in self._pairs(config, context, cancel):
            cancel.check()
            size = source.stat().st_size
            try:
                os.replace(source, target)
                context.progress.add(size)
            except OSError as error:
                if error.errno != errno.EXDEV:
                    raise StepFailed(f"cannot move {source} to {target}: {error.strerror}") from error
                copy_file(source, target, context, cancel)  # another file system: copy, then remove
                source.unlink()
            total += size
            moved.append(str(target))
            sources.append(str(source))
        return StepResult(outputs={"moved_files": moved}, bytes_processed=total, files=moved, removed=sources)


@register
class RenameStep(StepType):
    type_key = "file.rename"
    label = "Rename a file"
    description = "Give a file a new name in the same directory."
    fields = (
        ConfigField("path", "string", required=True, help="The file to rename."),
        ConfigField("new_name", "string", required=True, help="New file name only, without a directory."),
        ConfigField("overwrite", "boolean", default=False, help="Replace a file that already has the new name."),
    )
    outputs = ("renamed_file",)

    def validate(self, config: dict[str, Any], step_label: str = "step") -> list[str]:
        problems = super().validate(config, step_label)
        name = config.get("new_name")
        if (
            isinstance(name, str)
            and not name.startswith("context:")
            and ("/" in name or "\\" in name or name in (".", ".."))
        ):
            problems.append(f"{step_label}: key 'new_name' must be a bare file name, not a path")
        return problems

    def execute(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> StepResult:
        source = resolve_path(config["path"], context.work_dir, context.allowed_roots)
        name = config["new_name"]
        if "/" in name or "\\" in name or name in (".", ".."):
            raise StepFailed(f"new_name {name!r} must be a bare file name, not a path")
        if not source.is_file():
            raise StepFailed(f"no file at {source}")
        target = resolve_path(source.parent / name, context.work_dir, context.allowed_roots)
        check_overwrite(target, config.get("overwrite", False))
        os.replace(source, target)
        return StepResult(outputs={"renamed_file": str(target)}, files=[str(target)], removed=[str(source)])


@register
class DeleteStep(StepType):
    type_key = "file.delete"
    label = "Delete files"
    description = "Delete files matching a path or glob."
    fields = (
        ConfigField("path", "string_or_list", required=True, help="File, glob or list of them."),
        ConfigField("fail_if_not_found", "boolean", default=False, help="Fail when nothing matches."),
    )
    outputs = ("deleted_files",)

    def execute(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> StepResult:
        deleted = []
        for item in as_list(config["path"]):
            matches = expand(item, context.work_dir, context.allowed_roots)
            existing = [match for match in matches if match.is_file()]
            if not existing and config.get("fail_if_not_found"):
                raise StepFailed(f"no file matches '{item}'")
            for match in existing:
                cancel.check()
                match.unlink()
                deleted.append(str(match))
        return StepResult(outputs={"deleted_files": deleted}, removed=deleted)
