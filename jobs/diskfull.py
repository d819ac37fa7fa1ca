"""A full local disk as a step failure: [E2050] naming the file being written and the space left."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from jobs.errors import StepFailed

# Out of blocks, or over the account's quota: either way nothing more can be written there.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFull(StepFailed):
    """The local disk filled up while a step wrote a file; the partial file was removed.

    A StepFailed, not an OSError: transfer steps must not reconnect to the partner over it.
    """


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS


def human_size(count: int) -> str:
    """1536 -> "1.5 KiB": the unit an operator reads at a glance."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def free_bytes(path: Path) -> int | None:
    """Free space for unprivileged writers on the file system holding path (its nearest existing parent)."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def disk_full(path: Path, needed: int | None = None) -> DiskFull:
    """The error to raise; measure after removing the partial output, so the free space is what is really left."""
    free = free_bytes(Path(path).parent)
    facts = [f"{human_size(free)} free" if free is not None else "free space unknown"]
    if needed:
        facts.append(f"{human_size(needed)} needed")
    return DiskFull(f"no space left on device writing {path} ({', '.join(facts)})")


@contextlib.contextmanager
def reporting_disk_full(path: Path, *, remove: Iterable[Path] = (), needed: int | None = None) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT raised inside the block into DiskFull, after deleting the partial files in remove."""
    try:
        yield
    except OSError as error:
        if not is_disk_full(error):
            raise
        for leftover in remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        raise disk_full(path, needed) from error
