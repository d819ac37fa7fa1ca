"""Path safety for steps: every path a step touches must stay inside the allowed base directories."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from jobs.errors import PathNotAllowed


def _is_within(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def resolve_path(raw: str | os.PathLike[str], work_dir: Path, allowed_roots: tuple[Path, ...]) -> Path:
    """Absolute, symlink-resolved form of raw, refused [E2040] when it escapes the allowed roots.

    Relative paths are taken relative to the execution's work directory. `..` segments
    and symlinks are resolved first, so neither can be used to step outside.
    """
    text = os.fspath(raw)
    if "\x00" in text:
        raise PathNotAllowed(f"path {text!r} contains a NUL byte")
    candidate = Path(text)
    if not candidate.is_absolute():
        candidate = work_dir / candidate
    resolved = Path(os.path.realpath(candidate))
    roots = tuple(Path(os.path.realpath(root)) for root in (work_dir, *allowed_roots))
    if not _is_within(resolved, roots):
        raise PathNotAllowed(
            f"path {text!r} resolves to {resolved}, outside the allowed directories "
            f"({', '.join(str(root) for root in roots)})"
        )
    return resolved


def has_glob(text: str) -> bool:
    return glob.has_magic(text)


def expand(raw: str, work_dir: Path, allowed_roots: tuple[Path, ...]) -> list[Path]:
    """Files matching raw (a path or a glob), each checked with resolve_path; sorted by name."""
    if not has_glob(raw):
        return [resolve_path(raw, work_dir, allowed_roots)]
    pattern = raw if os.path.isabs(raw) else str(work_dir / raw)
    matches = sorted(glob.glob(pattern))
    return [resolve_path(match, work_dir, allowed_roots) for match in matches if os.path.isfile(match)]
