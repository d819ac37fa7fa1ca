"""The remote session interface shared by SFTP, FTP and FTPS."""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

# Transfers move data in chunks of this size, checking for cancel between them.
CHUNK = 1024 * 1024
TEMP_SUFFIX = ".courier-tmp"


@dataclass(frozen=True)
class RemoteFile:
    name: str
    path: str
    size: int
    modified: datetime | None
    is_dir: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "size": self.size,
            "modified": self.modified.isoformat() if self.modified else None,
        }


@dataclass
class SessionInfo:
    """What "test connection" reports."""

    latency_ms: float = 0.0
    banner: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class RemoteSession(Protocol):
    info: SessionInfo

    def listdir(self, path: str) -> list[RemoteFile]: ...

    def stat(self, path: str) -> RemoteFile | None: ...

    def download(self, remote: str, local_file: Any, offset: int, on_chunk: Callable[[int], None]) -> int: ...

    def upload(self, local_file: Any, remote: str, on_chunk: Callable[[int], None]) -> int: ...

    def rename(self, source: str, target: str) -> None: ...

    def delete(self, path: str) -> None: ...

    def mkdir(self, path: str) -> None: ...

    def rmdir(self, path: str) -> None: ...

    def close(self) -> None: ...


def matches(name: str, pattern: str | None) -> bool:
    return not pattern or any(fnmatch.fnmatchcase(name, part.strip()) for part in pattern.split(",") if part.strip())


def join(directory: str, name: str) -> str:
    return posixpath.join(directory or ".", name)
