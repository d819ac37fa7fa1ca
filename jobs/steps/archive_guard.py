"""Extraction guard: every archive is hostile. Entry names, links and sizes are checked while streaming."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from jobs.errors import HostileArchive
from jobs.steps.base import CancelToken

# Limits from SPEC 4.3; module constants so that tests can lower them.
MAX_TOTAL_BYTES = 20 * 1024**3
MAX_ENTRY_BYTES = 10 * 1024**3
MAX_ENTRIES = 10_000
MAX_RATIO = 200
# Ratios are only judged once this much has been written: small, very regular files
# (a few KB of zeros) compress beyond 200:1 without being bombs.
RATIO_FLOOR_BYTES = 1024 * 1024
CHUNK = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_member_path(root: Path, name: str) -> Path:
    """Where entry `name` may be written under root; refuses absolute names, `..` and escapes [E7004]."""
    normalized = name.replace("\\", "/")
    if not normalized or normalized.startswith("/") or _DRIVE.match(normalized) or "\x00" in normalized:
        raise HostileArchive(f"archive entry {name!r} has an absolute or invalid name")
    parts = PurePosixPath(normalized).parts
    if ".." in parts:
        raise HostileArchive(f"archive entry {name!r} climbs out of the output directory with '..'")
    target = (root / Path(*[part for part in parts if part not in ("", ".")])).resolve()
    if target != root and root not in target.parents:
        raise HostileArchive(f"archive entry {name!r} resolves outside the output directory")
    return target


class ExtractionBudget:
    """Counts entries and bytes actually written and aborts when a limit is passed."""

    def __init__(self, archive_bytes: int, cancel: CancelToken) -> None:
        self.archive_bytes = max(archive_bytes, 1)
        self.cancel = cancel
        self.entries = 0
        self.total = 0

    def next_entry(self, name: str) -> None:
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise HostileArchive(f"archive holds more than {MAX_ENTRIES} entries (stopped at {name!r})")

    def written(self, name: str, entry_total: int, entry_compressed: int | None, count: int) -> None:
        self.total += count
        if entry_total > MAX_ENTRY_BYTES:
            raise HostileArchive(f"entry {name!r} is larger than the {MAX_ENTRY_BYTES} bytes allowed per entry")
        if self.total > MAX_TOTAL_BYTES:
            raise HostileArchive(f"archive expands to more than the {MAX_TOTAL_BYTES} bytes allowed in total")
        if entry_compressed and entry_total > RATIO_FLOOR_BYTES and entry_total / max(entry_compressed, 1) > MAX_RATIO:
            raise HostileArchive(f"entry {name!r} expands more than {MAX_RATIO}:1 (compression bomb)")
        if self.total > RATIO_FLOOR_BYTES and self.total / self.archive_bytes > MAX_RATIO:
            raise HostileArchive(f"archive expands more than {MAX_RATIO}:1 overall (compression bomb)")
        self.cancel.check()


def stream_entry(source: BinaryIO, target: Path, name: str, compressed: int | None, budget: ExtractionBudget) -> int:
    """Copy one entry to target in chunks, enforcing the budget as bytes arrive."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with target.open("xb") as output:
        while True:
            chunk = source.read(CHUNK)
            if not chunk:
                break
            written += len(chunk)
            budget.written(name, written, compressed, len(chunk))
            output.write(chunk)
    return written


def sweep(root: Path) -> None:
    """After extraction: nothing may be a link, and nothing may sit outside root."""
    for folder, directories, files in os.walk(root):
        for name in [*directories, *files]:
            path = Path(folder) / name
            if path.is_symlink():
                raise HostileArchive(f"extraction produced a link: {path.relative_to(root)}")
            resolved = path.resolve()
            if root not in resolved.parents:
                raise HostileArchive(f"extraction produced a path outside the output directory: {path}")
