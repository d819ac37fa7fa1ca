"""Fast SFTP bulk data: many requests in flight, replies parsed straight off the channel, lean channel buffers.

paramiko's own transfer path (SFTPFile.prefetch, read and write) spends most of its time on
Python bookkeeping rather than on the data: a helper thread that polls for free request slots,
a dictionary of replies, bytes joined and re-sliced at every layer. Here one loop keeps a fixed
number of READ (or WRITE) requests outstanding and parses the replies from the channel itself.
A download parses the replies as views over the packets the channel received and hands their
data, in file order, to a writer thread: the partial file of an interrupted download is always
a prefix of the remote file, which is what resuming relies on. An upload reads the local file
straight into the request it sends.
"""

from __future__ import annotations

import collections
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from paramiko.buffered_pipe import BufferedPipe, PipeTimeout
from paramiko.sftp import (
    CMD_DATA,
    CMD_READ,
    CMD_STATUS,
    CMD_WRITE,
    SFTP_EOF,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_PERMISSION_DENIED,
)

from connections.transfer.base import CHUNK, WriterThread

# Request ids of the bulk reader: far above the ones SFTPClient counts up from 1, so a reply
# can never be taken for the other's.
FIRST_REQUEST_ID = 0x4000_0000
# What one recv from the channel asks for: several replies' worth, parsed in one go.
RECV_SIZE = 1024 * 1024
# SSH_FXP_DATA and SSH_FXP_STATUS replies: uint32 length, byte type, uint32 request id.
_REPLY_HEAD = struct.Struct(">IBI")
_UINT32 = struct.Struct(">I")


class ChunkPipe(BufferedPipe):
    """A channel's receive buffer that keeps the packets it is fed as they are.

    paramiko's BufferedPipe copies every packet into an array and slices it out again; this
    one appends the bytes object to a deque. A read returns at most the rest of the oldest
    packet, which is that very bytes object when the packet was not split before: a bulk
    reader gets the data without a copy, other readers loop for more as with any socket.
    """

    def __init__(self) -> None:
        super().__init__()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._head = 0  # bytes of the oldest chunk already read
        self._size = 0

    def feed(self, data: bytes) -> None:
        with self._lock:
            if self._event is not None:
                self._event.set()
            self._chunks.append(bytes(data))
            self._size += len(data)
            self._cv.notify_all()

    def read_ready(self) -> bool:
        with self._lock:
            return self._size > 0

    def __len__(self) -> int:
        with self._lock:
            return self._size

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        with self._lock:
            if self._size == 0:
                if self._closed:
                    return b""
                if timeout == 0.0:
                    raise PipeTimeout()
                deadline = None if timeout is None else time.monotonic() + timeout
                while self._size == 0 and not self._closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise PipeTimeout()
                    self._cv.wait(left)
                if self._size == 0:
                    return b""
            return self._take(min(nbytes, len(self._chunks[0]) - self._head))

    def wait_for(self, nbytes: int, timeout: float | None) -> None:
        """Wait until nbytes are buffered or the channel closed: a reader that needs a whole reply wakes
        once for it rather than once per packet. TimeoutError after `timeout` seconds without new data."""
        with self._lock:
            while self._size < nbytes and not self._closed:
                size = self._size
                if not self._cv.wait(timeout) and self._size == size:
                    raise TimeoutError()

    def _take(self, nbytes: int) -> bytes:
        parts, taken = [], 0
        while self._chunks and taken < nbytes:
            chunk, head = self._chunks[0], self._head
            available = len(chunk) - head
            if available <= nbytes - taken:
                parts.append(chunk if head == 0 else chunk[head:])
                self._chunks.popleft()
                self._head = 0
                taken += available
            else:
                cut = head + nbytes - taken
                parts.append(chunk[head:cut])
                self._head = cut
                taken = nbytes
        self._size -= taken
        if self._size == 0 and self._event is not None and not self._closed:
            self._event.clear()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def empty(self) -> bytes:
        with self._lock:
            return self._take(self._size) if self._size else b""


class Received:
    """Channel data not yet parsed, as views over the bytes objects it came in: taking is not copying."""

    def __init__(self) -> None:
        self._views: collections.deque[memoryview] = collections.deque()
        self.size = 0

    def add(self, data: bytes) -> None:
        self._views.append(memoryview(data))
        self.size += len(data)

    def head(self) -> tuple[int, int, int]:
        """Length, type and request id of the reply at the front; at least 9 bytes must be in."""
        first = self._views[0]
        if len(first) >= _REPLY_HEAD.size:
            return _REPLY_HEAD.unpack_from(first)
        return _REPLY_HEAD.unpack_from(self.peek(_REPLY_HEAD.size))

    def peek(self, count: int) -> bytes:
        parts, left = [], count
        for view in self._views:
            parts.append(view[:left])
            left -= len(parts[-1])
            if not left:
                break
        return b"".join(parts)

    def take(self, count: int) -> list[memoryview]:
        """The next count bytes (at most what is in) as views, in order."""
        views, left = self._views, min(count, self.size)
        self.size -= left
        taken = []
        while left:
            view = views[0]
            if len(view) <= left:
                taken.append(views.popleft())
                left -= len(view)
            else:
                taken.append(view[:left])
                views[0] = view[left:]
                left = 0
        return taken

    def take_bytes(self, count: int) -> bytes:
        return b"".join(self.take(count))


class WriteAhead(WriterThread):
    """SFTP downloads: the data of each reply, as views over the packets it came in, written in order.

    At most `depth` replies wait, so a slow disk holds back the reader (and the requests it
    sends) rather than memory growing; a failed write is raised by the next `put()` or at the end.
    """

    def __init__(self, write: Callable[[Any], Any], depth: int = 16) -> None:
        super().__init__(write, depth, name="courier-sftp-write")

    def put(self, pieces: list[memoryview]) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put(pieces)

    def _write_item(self, pieces: list[memoryview]) -> None:
        for piece in pieces:
            self._write(piece)


class BufferedSocket:
    """The TCP socket under a paramiko Transport, read in large blocks.

    paramiko reads each SSH packet with at least two recv calls (the first cipher block, then
    the rest), often more; here one recv_into fills a buffer those calls are served from.
    Everything else (send, settimeout, close) goes to the socket itself.
    """

    def __init__(self, sock: socket.socket, size: int = 256 * 1024) -> None:
        self._sock = sock
        self._buffer = bytearray(size)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0

    def recv(self, nbytes: int) -> bytes:
        if self._start == self._end:
            self._start, self._end = 0, self._sock.recv_into(self._buffer)
            if not self._end:
                return b""
        taken = min(nbytes, self._end - self._start)
        data = bytes(self._view[self._start : self._start + taken])
        self._start += taken
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _status_error(code: int, message: str, remote: str) -> OSError:
    if code == SFTP_NO_SUCH_FILE:
        return FileNotFoundError(f"{remote}: {message}")
    if code == SFTP_PERMISSION_DENIED:
        return PermissionError(f"{remote}: {message}")
    return OSError(f"{remote}: {message} (SFTP status {code})")


def _next_request_id(request_id: int) -> int:
    return (request_id + 1) & 0xFFFF_FFFF or FIRST_REQUEST_ID


def _status_message(buffer: Any, body: int) -> str:
    """The text of an SSH_FXP_STATUS whose code starts at body."""
    length = _UINT32.unpack_from(buffer, body + 4)[0]
    return bytes(buffer[body + 8 : body + 8 + length]).decode("utf-8", "replace")


class PipelinedReader:
    """Reads one open remote file from `offset` to `end` with up to `depth` requests in flight.

    Replies normally come back in request order (OpenSSH's sftp-server answers one at a time);
    one that arrives early is held until the bytes before it are written. A short reply asks
    again for the rest. A STATUS EOF ends the file there (it shrank since it was listed).
    """

    def __init__(self, channel: Any, handle: bytes, remote: str, *, request_size: int, depth: int) -> None:
        self.channel = channel
        self.remote = remote
        self.request_size = request_size
        self.depth = depth
        # uint32 length, byte CMD_READ, uint32 id, string handle, uint64 offset, uint32 length
        self._request = struct.Struct(f">IBII{len(handle)}sQI")
        self._request_length = self._request.size - 4
        self._handle = handle
        self._next_id = FIRST_REQUEST_ID
        self.outstanding: dict[int, tuple[int, int]] = {}

    def read(self, offset: int, end: int, write: Callable[[Any], Any], on_chunk: Callable[[int], None]) -> int:
        """Write bytes offset..end of the remote file through write; on_chunk(CHUNK) after every CHUNK written."""
        with WriteAhead(write) as writer:
            cursor = self._read(offset, end, writer, on_chunk)
        return cursor - offset

    def _read(self, offset: int, end: int, writer: WriteAhead, on_chunk: Callable[[int], None]) -> int:
        channel, outstanding = self.channel, self.outstanding
        retry: collections.deque[tuple[int, int]] = collections.deque()  # rests of short replies
        early: dict[int, bytes] = {}  # replies that came before the bytes ahead of them
        next_offset, limit, cursor, reported = offset, end, offset, offset
        received = Received()
        needed = _REPLY_HEAD.size  # bytes the channel must hold to complete the reply at the front
        wait_for = getattr(channel.in_buffer, "wait_for", None)
        while True:
            requests = []
            while len(outstanding) < self.depth:
                if retry:
                    at, length = retry.popleft()
                elif next_offset < limit:
                    at, length = next_offset, min(self.request_size, limit - next_offset)
                    next_offset += length
                else:
                    break
                request_id = self._next_id
                self._next_id = _next_request_id(request_id)
                outstanding[request_id] = (at, length)
                requests.append(
                    self._request.pack(
                        self._request_length, CMD_READ, request_id, len(self._handle), self._handle, at, length
                    )
                )
            if requests:
                channel.sendall(b"".join(requests))
            if not outstanding:
                break
            if wait_for is not None and needed > 0:
                wait_for(needed, channel.gettimeout())
            data = channel.recv(RECV_SIZE)
            if not data:
                raise EOFError(f"the server closed the SFTP channel while sending {self.remote}")
            received.add(data)
            while received.size >= _REPLY_HEAD.size:
                length, kind, request_id = received.head()
                if received.size < 4 + length:
                    break
                at, asked = outstanding.pop(request_id, (None, 0))
                if at is None:  # not one of ours: an answer the channel owed someone before
                    received.take(4 + length)
                    continue
                if kind == CMD_STATUS:
                    reply = received.take_bytes(4 + length)
                    code = _UINT32.unpack_from(reply, _REPLY_HEAD.size)[0]
                    if code != SFTP_EOF:
                        raise _status_error(code, _status_message(reply, _REPLY_HEAD.size), self.remote)
                    limit = min(limit, at)
                    continue
                if kind != CMD_DATA:
                    raise OSError(f"reading {self.remote}: unexpected SFTP reply type {kind}")
                size = _UINT32.unpack_from(received.take_bytes(_REPLY_HEAD.size + 4), _REPLY_HEAD.size)[0]
                if size == 0 or size > asked or size != length - _REPLY_HEAD.size:
                    raise OSError(f"reading {self.remote}: the server sent {size} bytes for {asked} asked")
                if size < asked:
                    retry.append((at + size, asked - size))
                pieces = received.take(size)
                if at == cursor:
                    writer.put(pieces)
                    cursor += size
                    while cursor in early:
                        held = early.pop(cursor)
                        writer.put([memoryview(held)])
                        cursor += len(held)
                else:
                    early[at] = b"".join(pieces)
                while cursor - reported >= CHUNK:
                    reported += CHUNK
                    on_chunk(CHUNK)
            if received.size < _REPLY_HEAD.size:
                needed = _REPLY_HEAD.size - received.size
            else:  # the next reply's header is in: the rest of it
                needed = 4 + received.head()[0] - received.size
            if limit < next_offset:  # EOF came early: the requests past it are answered but unneeded
                next_offset = limit
                retry = collections.deque((at, length) for at, length in retry if at < limit)
        if cursor > reported:
            on_chunk(cursor - reported)
        return cursor


class PipelinedWriter:
    """Writes a local file to one open remote file with up to `depth` WRITE requests unanswered.

    Each request is read from the local file into one reused buffer behind its header and sent
    from there: sendall returns once the channel has taken the bytes. Every reply is checked;
    the first refusal ends the upload with the server's reason.
    """

    def __init__(self, channel: Any, handle: bytes, remote: str, *, request_size: int, depth: int) -> None:
        self.channel = channel
        self.remote = remote
        self.depth = depth
        # uint32 length, byte CMD_WRITE, uint32 id, string handle, uint64 offset, uint32 data length
        self._head = struct.Struct(f">IBII{len(handle)}sQI")
        self._handle = handle
        self._buffer = bytearray(self._head.size + request_size)
        self._next_id = FIRST_REQUEST_ID
        self.outstanding: set[int] = set()
        self._replies = bytearray()

    def write(self, read_into: Callable[[Any], int], on_chunk: Callable[[int], None]) -> int:
        """Send what read_into(buffer) yields until it yields 0; on_chunk(CHUNK) after every CHUNK sent."""
        head, handle, channel = self._head, self._handle, self.channel
        view = memoryview(self._buffer)
        body = view[head.size :]
        offset = reported = 0
        while True:
            while len(self.outstanding) >= self.depth:
                self._collect()
            count = read_into(body)
            if not count:
                break
            request_id = self._next_id
            self._next_id = _next_request_id(request_id)
            head.pack_into(
                self._buffer, 0, head.size - 4 + count, CMD_WRITE, request_id, len(handle), handle, offset, count
            )
            channel.sendall(view[: head.size + count])
            self.outstanding.add(request_id)
            offset += count
            while offset - reported >= CHUNK:
                reported += CHUNK
                on_chunk(CHUNK)
        while self.outstanding:
            self._collect()
        if offset > reported:
            on_chunk(offset - reported)
        return offset

    def _collect(self) -> None:
        """Wait for replies and check them."""
        data = self.channel.recv(RECV_SIZE)
        if not data:
            raise EOFError(f"the server closed the SFTP channel while receiving {self.remote}")
        replies = self._replies
        replies += data
        position = 0
        while len(replies) - position >= _REPLY_HEAD.size:
            length, kind, request_id = _REPLY_HEAD.unpack_from(replies, position)
            if len(replies) - position < 4 + length:
                break
            body = position + _REPLY_HEAD.size
            position += 4 + length
            if request_id not in self.outstanding:
                continue
            self.outstanding.discard(request_id)
            if kind != CMD_STATUS:
                raise OSError(f"writing {self.remote}: unexpected SFTP reply type {kind}")
            code = _UINT32.unpack_from(replies, body)[0]
            if code != SFTP_OK:
                raise _status_error(code, _status_message(replies, body), self.remote)
        del replies[:position]
