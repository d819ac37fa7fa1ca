"""The remote session interface shared by SFTP, FTP and FTPS."""

from __future__ import annotations

import fnmatch
import posixpath
import queue
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


class WriterThread:
    """Writes what a transfer received to the local file in a thread of its own, in the order queued.

    The disk write (the copy into the page cache, block allocation) releases the GIL, so it
    runs while the next data arrives instead of holding it up. A write that fails (a full
    disk) is kept in `error` for the receiving thread to raise; leaving the block, normally
    or not, waits for what was queued: nothing lands after the caller closes the file, and
    the file holds a prefix of what was received. Subclasses say what an item is (`_write_item`)
    and what to do once it is written or skipped (`_done`).
    """

    def __init__(self, write: Callable[[Any], Any], depth: int = 0, name: str = "courier-write") -> None:
        self._write = write
        self._queue: queue.Queue[Any] = queue.Queue(depth)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        self._queue.put(None)
        self._thread.join()
        if kind is None and self.error is not None:
            raise self.error

    def _write_item(self, item: Any) -> None:
        self._write(item)

    def _done(self, item: Any) -> None:
        """Called for every item, written or skipped after an earlier failure."""

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is None:
                try:
                    self._write_item(item)
                except BaseException as error:  # handed to the receiving thread, which raises it
                    self.error = error
            self._done(item)


class WriteBehind(WriterThread):
    """FTPS downloads: `blocks` preallocated buffers go round between receiving and writing.

    Receiving (TLS decryption) and writing both release the GIL, so on two cores they overlap
    instead of taking turns. `free()` hands out a block to fill (and raises a failed write),
    `submit()` queues its filled part for writing.
    """

    def __init__(self, write: Callable[[Any], Any], size: int = CHUNK, blocks: int = 3) -> None:
        super().__init__(write, name="courier-write-behind")
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        for _ in range(blocks):
            self._free.put(memoryview(bytearray(size)))

    def free(self) -> memoryview:
        block = self._free.get()
        if self.error is not None:
            raise self.error
        return block

    def submit(self, block: memoryview, count: int) -> None:
        self._queue.put((block, block[:count]))

    def _write_item(self, item: tuple[memoryview, memoryview]) -> None:
        self._write(item[1])

    def _done(self, item: tuple[memoryview, memoryview]) -> None:
        block, filled = item
        filled.release()
        self._free.put(block)
