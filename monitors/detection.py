"""What a directory listing means for a monitor: which files are ready and which events they fire.

Pure functions over plain data; the poll (monitors.services) supplies the listing, the
previous snapshot and the file log, and stores what comes back.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

FILE_CREATED = 1
FILE_MODIFIED = 2
FILE_EXISTS = 4
EVENT_NAMES = {FILE_CREATED: "FileCreated", FILE_MODIFIED: "FileModified", FILE_EXISTS: "FileExists"}


@dataclass(frozen=True)
class ListedFile:
    """One file of a directory listing (local or remote)."""

    path: str
    name: str
    size: int
    modified: float  # POSIX seconds

    def signature(self) -> list[float]:
        return signature(self.size, self.modified)


def signature(size: int, modified: float) -> list[float]:
    """What "unchanged" compares: size and mtime to the microsecond.

    The file log keeps mtimes as timestamptz (microseconds) while a local stat has
    nanoseconds; without the rounding a file logged before a restart would look modified.
    """
    return [size, round(modified, 6)]


@dataclass(frozen=True)
class TriggeredFile:
    file: ListedFile
    event: str

    def as_context(self) -> dict[str, Any]:
        return {
            "path": self.file.path,
            "name": self.file.name,
            "size": self.file.size,
            "modified": datetime.fromtimestamp(self.file.modified, tz=UTC).isoformat(),
            "event": self.event,
        }


def event_names(flags: int) -> list[str]:
    return [name for flag, name in EVENT_NAMES.items() if flags & flag]


def matches_patterns(name: str, patterns: Iterable[str]) -> bool:
    """Globs on the file name, OR-ed; no pattern means every file."""
    patterns = [pattern for pattern in patterns if pattern]
    return not patterns or any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


@dataclass(frozen=True)
class Rules:
    trigger_events: int
    patterns: tuple[str, ...]
    stability_seconds: float
    remote: bool


def detect(
    listing: Iterable[ListedFile],
    previous: dict[str, dict[str, Any]] | None,
    rules: Rules,
    now: float,
    history: Callable[[str], list[float] | None] = lambda path: None,
) -> tuple[dict[str, dict[str, Any]], list[TriggeredFile]]:
    """The new snapshot and the files that trigger now.

    A file is ready once it stopped changing: locally when its mtime is at least the
    stability window old, remotely when size and mtime are the same as at the previous
    poll. A ready file fires FileCreated once per appearance (a path that disappears and
    comes back fires again), FileModified when its size or mtime differ from what was last
    seen ready, and FileExists at every poll. One event per file and poll; Created wins
    over Modified over Exists.

    previous maps path -> {"sig": [size, mtime], "announced": bool, "ready_sig": [..] | None},
    or is None when there is no snapshot at all (first poll, or the snapshot was lost). Only
    then is history(path) asked for the signature last written to the file log, so a restart
    does not fire again; with a snapshot, a path it does not hold was absent at the last poll
    and is new (a file that disappeared and came back fires FileCreated again).
    """
    lost = previous is None
    previous = previous or {}
    snapshot: dict[str, dict[str, Any]] = {}
    triggered: list[TriggeredFile] = []
    for file in listing:
        if not matches_patterns(file.name, rules.patterns):
            continue
        before = previous.get(file.path)
        unchanged = before is not None and before.get("sig") == file.signature()
        entry = {
            "sig": file.signature(),
            "announced": bool(before and before.get("announced")),
            "ready_sig": before.get("ready_sig") if before else None,
        }
        if lost:
            logged = history(file.path)
            if logged is not None:
                entry["announced"] = True
                entry["ready_sig"] = logged
        snapshot[file.path] = entry
        ready = unchanged if rules.remote else now - file.modified >= rules.stability_seconds
        if not ready:
            continue
        event = None
        if not entry["announced"]:
            entry["announced"] = True
            if rules.trigger_events & FILE_CREATED:
                event = EVENT_NAMES[FILE_CREATED]
        elif (
            entry["ready_sig"] is not None
            and entry["ready_sig"] != file.signature()
            and rules.trigger_events & FILE_MODIFIED
        ):
            event = EVENT_NAMES[FILE_MODIFIED]
        if event is None and rules.trigger_events & FILE_EXISTS:
            event = EVENT_NAMES[FILE_EXISTS]
        entry["ready_sig"] = file.signature()
        if event is not None:
            triggered.append(TriggeredFile(file, event))
    triggered.sort(key=lambda item: item.file.path)
    return snapshot, triggered


def pending_until(listing: Iterable[ListedFile], rules: Rules, now: float) -> float | None:
    """For local monitors: when the earliest file that is not yet stable will be (POSIX seconds)."""
    if rules.remote:
        return None
    waits = [
        file.modified + rules.stability_seconds
        for file in listing
        if matches_patterns(file.name, rules.patterns) and now - file.modified < rules.stability_seconds
    ]
    return min(waits) if waits else None
