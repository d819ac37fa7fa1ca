"""Handing the heap memory a large transfer freed back to the operating system (glibc's malloc_trim)."""

from __future__ import annotations

import ctypes
import ctypes.util


def _load_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _load_trim()


def release_freed_memory() -> None:
    """Return free heap pages to the OS.

    A download's packets are freed as soon as they are written, but glibc keeps the freed
    space in the heap of the thread that allocated it (one per transport thread, one per
    segment), so a worker's resident size would stay at its largest transfer's high-water
    mark and grow with every new pattern of threads. Trimming after a large transfer brings
    it back to what is in use.
    """
    if _TRIM is not None:
        _TRIM(0)
