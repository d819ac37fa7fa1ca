"""The remote session interface shared by SFTP, FTP and FTPS."""

from __future__ import annotations

import fnmatch
import posixpath
import threading
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


class SetupDeadline:
    """Bounds a session's set-up (greeting, handshake, login) by the connection's connect timeout.

    Some waits of the protocol libraries have no limit of their own: when the time is up,
    `interrupt` closes the connection, which wakes every one of them with an error, and
    `expired` tells the caller that this, not the server's answer, ended the set-up.
    """

    def __init__(self, seconds: float, interrupt: Callable[[], None]) -> None:
        self.seconds = max(seconds, 0.1)
        self.expired = False
        self._interrupt = interrupt
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        self._interrupt()

    def cancel(self) -> None:
        self._timer.cancel()
