"""Crafted hostile archives: zip-slip names, links, bombs and too many entries."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path


def zip_with_names(path: Path, names: list[str], content: bytes = b"x") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            info = zipfile.ZipInfo(name)  # ZipInfo keeps the name exactly as given
            archive.writestr(info, content)
    return path


def zip_with_symlink(path: Path, name: str, target: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, target)
    return path


def tar_with_link(path: Path, name: str, target: str, hard: bool = False) -> Path:
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo(name)
        info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
        info.linkname = target
        archive.addfile(info)
    return path


def tar_with_names(path: Path, names: list[str]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 1
            archive.addfile(info, io.BytesIO(b"x"))
    return path


def zip_bomb(path: Path, megabytes: int) -> Path:
    """One entry of zeros: deflate packs it about 1000:1."""
    block = b"\0" * (1024 * 1024)
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("zeros.bin", "w") as entry,
    ):
        for _ in range(megabytes):
            entry.write(block)
    return path


def zip_with_entries(path: Path, count: int) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(count):
            archive.writestr(f"file-{index}.txt", b"x")
    return path
