"""Segmented SFTP downloads: one large file read over several connections at once, each its own range.

One SSH connection carries its data through one encryption stream on the server and one
transport thread here; on a long-distance link its throughput is further bounded by the
requests in flight. Reading consecutive ranges of the file over N connections at once (like
lftp's `pget -n`) multiplies both. Each range is read in order by a PipelinedReader and
written at its place in the local file, so what a range wrote is always its own prefix.
When any range fails, the others stop and the local file is cut back to the longest prefix
every range before it completed: a retry resumes from there, as after a one-stream download.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable
from typing import Any

from connections.transfer.sftp_bulk import PipelinedReader

# Each segment is at least this large: below, the extra logins cost more than they bring.
SEGMENT_MIN_BYTES = 64 * 1024 * 1024
# How often the calling thread reports progress (and notices a cancel) while the segments run.
PROGRESS_SECONDS = 0.2


class _Stopped(Exception):
    """A segment told to stop because another failed or the transfer was cancelled."""


def segment_count(wanted: int, remaining: int, local_file: Any) -> int:
    """How many segments a download of `remaining` bytes into local_file gets: 1 when the file cannot be
    written by position (a stream, a digest, a file opened for appending) or the download is small."""
    if wanted <= 1 or remaining < 2 * SEGMENT_MIN_BYTES:
        return 1
    try:
        descriptor = local_file.fileno()
        if not local_file.seekable() or fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_APPEND:
            return 1
    except (AttributeError, OSError, ValueError):
        return 1
    return max(1, min(wanted, remaining // SEGMENT_MIN_BYTES))


def split(offset: int, end: int, count: int) -> list[tuple[int, int]]:
    """count consecutive ranges covering offset..end, the last one taking the remainder."""
    length = (end - offset) // count
    starts = [offset + index * length for index in range(count)]
    return [(start, starts[index + 1] if index + 1 < count else end) for index, start in enumerate(starts)]


class SegmentedDownload:
    """Reads remote bytes offset..end over the given sessions (one range each) into a local file.

    `open_range(session, remote)` returns (channel, handle, close) for the remote file on that session;
    `reader_options` are the PipelinedReader's request_size and depth; `drop(session)` closes a
    session's SFTP channel, which wakes a reader waiting on it. on_chunk is called from the
    calling thread only (it may use the database, or raise to cancel).
    """

    def __init__(
        self,
        remote: str,
        local_file: Any,
        sessions: list[Any],
        *,
        open_range: Callable[[Any, str], tuple[Any, bytes, Callable[[], None]]],
        drop: Callable[[Any], None],
        reader_options: dict[str, int],
    ) -> None:
        self.remote = remote
        self.local_file = local_file
        self.sessions = sessions
        self.open_range = open_range
        self.drop = drop
        self.reader_options = reader_options
        self.stopping = threading.Event()
        self.finished = threading.Event()  # set as each segment ends, to wake the calling thread
        self.errors: list[BaseException] = []

    def run(self, offset: int, end: int, on_chunk: Callable[[int], None]) -> int:
        self.local_file.flush()
        descriptor = self.local_file.fileno()
        ranges = split(offset, end, len(self.sessions))
        written = [0] * len(ranges)
        threads = [
            threading.Thread(
                target=self._segment,
                args=(index, session, start, stop, descriptor, written),
                name=f"courier-sftp-segment-{index}",
                daemon=True,
            )
            for index, (session, (start, stop)) in enumerate(zip(self.sessions, ranges, strict=True))
        ]
        for thread in threads:
            thread.start()
        reported = 0
        try:
            while any(thread.is_alive() for thread in threads):
                self.finished.wait(PROGRESS_SECONDS)
                self.finished.clear()
                if self.errors:
                    break
                done = sum(written)
                if done > reported:
                    on_chunk(done - reported)
                    reported = done
        except BaseException as error:
            self.errors.append(error)
        if self.errors:
            self._stop(threads)
            os.ftruncate(descriptor, _prefix(ranges, written))
            self.local_file.seek(0, os.SEEK_END)
            raise next((error for error in self.errors if not isinstance(error, _Stopped)), self.errors[0])
        if sum(written) > reported:
            on_chunk(sum(written) - reported)
        self.local_file.seek(0, os.SEEK_END)
        return sum(written)

    def _segment(self, index: int, session: Any, start: int, stop: int, descriptor: int, written: list[int]) -> None:
        position = start

        def write(piece: Any) -> None:
            nonlocal position
            view = memoryview(piece)
            while len(view):
                count = os.pwrite(descriptor, view, position)
                position += count
                written[index] += count
                view = view[count:]

        def check(count: int) -> None:
            if self.stopping.is_set():
                raise _Stopped()

        try:
            channel, handle, close = self.open_range(session, self.remote)
            reader = PipelinedReader(channel, handle, self.remote, **self.reader_options)
            try:
                reader.read(start, stop, write, check)
            except BaseException:
                self.drop(session)  # the channel still owes replies
                raise
            close()
            if position < stop:  # the file ended early: what the next range read is not contiguous
                raise OSError(f"{self.remote} ended at byte {position}, before its size when the download began")
        except BaseException as error:
            self.errors.append(error)
            self.stopping.set()
        finally:
            self.finished.set()

    def _stop(self, threads: list[threading.Thread]) -> None:
        """Stop every segment: the flag ends a reader at its next reply, closing its channel ends a wait."""
        self.stopping.set()
        for session in self.sessions:
            with contextlib.suppress(Exception):
                self.drop(session)
        for thread in threads:
            thread.join()


def _prefix(ranges: list[tuple[int, int]], written: list[int]) -> int:
    """End of the longest prefix of the download that every range up to it wrote."""
    end = ranges[0][0]
    for (start, stop), count in zip(ranges, written, strict=True):
        end = start + count
        if end < stop:
            break
    return end
