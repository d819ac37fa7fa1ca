"""Per-execution work directories under <COURIER_DATA_DIR>/work/ and the cleanup of orphans."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from django.conf import settings


def work_root() -> Path:
    return Path(settings.COURIER_DATA_DIR) / "work"


def work_dir(execution_id: Any) -> Path:
    return work_root() / str(execution_id)


def allowed_roots() -> tuple[Path, ...]:
    return tuple(Path(root) for root in settings.COURIER_ALLOWED_ROOTS)


def create(execution_id: Any) -> Path:
    path = work_dir(execution_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def for_snapshot(execution_id: Any, snapshot: dict[str, Any] | None) -> Path:
    """The work directory an execution uses: its own, or the one of the execution it resumes.

    A resumed execution (retry from the failed step, recovery after a lost worker) keeps
    the original directory so that file paths recorded in its context stay valid.
    """
    recorded = ((snapshot or {}).get("values") or {}).get("job.work_dir")
    if recorded:
        path = Path(recorded)
        root = work_root().resolve()
        if path.resolve().parent == root:
            return path
    return work_dir(execution_id)


def remove_path(path: Path) -> None:
    if path.resolve().parent == work_root().resolve():
        shutil.rmtree(path, ignore_errors=True)


def remove(execution_id: Any, snapshot: dict[str, Any] | None = None) -> None:
    remove_path(for_snapshot(execution_id, snapshot))


def orphans(keep_ids: set[str], older_than_days: int, now: float | None = None) -> list[Path]:
    """Work directories of no active or resumable execution, untouched for older_than_days."""
    root = work_root()
    if not root.is_dir():
        return []
    cutoff = (now or time.time()) - older_than_days * 86400
    found = []
    for entry in root.iterdir():
        if entry.name in keep_ids or not entry.is_dir():
            continue
        if entry.stat().st_mtime < cutoff:
            found.append(entry)
    return found
