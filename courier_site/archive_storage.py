"""Where exported partitions are kept: a small storage interface and its local-directory implementation."""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from django.conf import settings

from courier_site.errors import CourierError

READ_CHUNK = 1024 * 1024


class ArchiveStorageError(CourierError):
    """The archive storage refused a key or could not be reached."""

    code = "E1023"


class ArchiveStorage(ABC):
    """Write-once object storage for partition archives, addressed by slash-separated keys.

    An implementation must make a written object appear only once its stream closed
    without error: a failed or interrupted write leaves nothing under the key.
    """

    @abstractmethod
    def write_stream(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A binary stream whose content becomes the object `key` when the block exits cleanly."""

    @abstractmethod
    def read_stream(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A binary stream reading the object `key`."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object under key; a missing object is not an error."""

    @abstractmethod
    def location(self, key: str) -> str:
        """Where an operator finds the object (a path or URL), for reports and audit records."""

    def sha256(self, key: str) -> tuple[str, int]:
        """SHA-256 hex digest and size in bytes of the stored object, read back in chunks."""
        digest = hashlib.sha256()
        size = 0
        with self.read_stream(key) as stream:
            while chunk := stream.read(READ_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return digest.hexdigest(), size

    def verify(self, key: str, sha256: str) -> bool:
        """Whether the stored object's SHA-256 matches the one recorded when it was written."""
        return self.exists(key) and self.sha256(key)[0] == sha256


def _safe_parts(key: str) -> tuple[str, ...]:
    """Key segments, refusing anything that could leave the storage root."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or any(part in {"", ".", ".."} for part in key.split("/")):
        raise ArchiveStorageError(f"archive key {key!r} is not a plain relative path")
    return path.parts


class LocalDirectoryStorage(ArchiveStorage):
    """Archives as files under one directory (COURIER_ARCHIVE_DIR); a mounted volume or NFS share works too."""

    # Archives hold audit history and execution details: readable by the service account
    # and its group (backup agents), nobody else.
    DIRECTORY_MODE = 0o750
    FILE_MODE = 0o640

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root.joinpath(*_safe_parts(key))

    @contextmanager
    def write_stream(self, key: str) -> Iterator[BinaryIO]:
        target = self.path(key)
        target.parent.mkdir(mode=self.DIRECTORY_MODE, parents=True, exist_ok=True)
        # Written beside the target and renamed at the end: a reader (or a backup) never
        # sees half an archive under the final name, and a crash leaves only a .partial file.
        partial = target.with_name(f"{target.name}.partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self.FILE_MODE)
        try:
            with os.fdopen(descriptor, "wb") as stream:
                yield stream
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        self._sync_directory(target.parent)

    @contextmanager
    def read_stream(self, key: str) -> Iterator[BinaryIO]:
        with self.path(key).open("rb") as stream:
            yield stream

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def location(self, key: str) -> str:
        return str(self.path(key))

    @staticmethod
    def _sync_directory(directory: Path) -> None:
        # The rename is durable only once the directory entry is on disk; the partition
        # is dropped right after, so the archive must survive a power cut from here on.
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def default_storage() -> ArchiveStorage:
    """The storage configured for this installation: the COURIER_ARCHIVE_DIR directory."""
    return LocalDirectoryStorage(settings.COURIER_ARCHIVE_DIR)
