"""Bulk transfer paths: the SFTP reader (replies out of order or short, a shrunken file, a refused read, a cancel),
its channel buffer and write-ahead thread, and the FTPS download's write-behind."""

from __future__ import annotations

import errno
import io
import os
import struct
import uuid
from pathlib import Path

import pytest
from paramiko.buffered_pipe import PipeTimeout

from audit.models import AuditLogEntry
from connections.transfer.base import CHUNK, WriteBehind
from connections.transfer.sessions import open_session
from connections.transfer.sftp import REQUESTS_IN_FLIGHT, SFTP_WINDOW
from connections.transfer.sftp_bulk import RECV_SIZE, ChunkPipe, Received, WriteAhead
from jobs.errors import Cancelled
from jobs.steps.base import CancelToken
from tests.servers import sftp_connection, sftp_folder, ssh_server
from tests.sftp_partner import Quirks, SftpPartner, partner_connection

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    with ssh_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def partner_session(files: dict[str, bytes], quirks: Quirks):
    partner = SftpPartner(files, quirks)
    return partner, open_session(partner_connection(partner))


def fetch(session, name: str, offset: int = 0) -> tuple[bytes, list[int], int]:
    sink, reported = io.BytesIO(), []
    received = session.download(name, sink, offset, reported.append)
    return sink.getvalue(), reported, received


def test_replies_that_come_back_in_reverse_order_are_written_in_file_order() -> None:
    payload = os.urandom(3 * CHUNK + 12_345)
    quirks = Quirks(reverse_batches=7)
    partner, session = partner_session({"statement.bin": payload}, quirks)
    try:
        data, reported, received = fetch(session, "statement.bin")
    finally:
        session.close()
        partner.close()
    assert data == payload
    assert received == len(payload)
    assert reported == [CHUNK, CHUNK, CHUNK, 12_345]  # progress (and the cancel check) once per chunk
    offsets = [offset for offset, _ in quirks.reads]
    assert offsets[:7] == sorted(offsets[:7])  # asked in order: the server alone reversed them


def test_a_short_reply_is_asked_again_for_the_rest_and_a_resume_starts_at_its_offset() -> None:
    payload = os.urandom(200_000)
    quirks = Quirks(most_per_read=10_000)
    partner, session = partner_session({"statement.bin": payload}, quirks)
    try:
        data, reported, received = fetch(session, "statement.bin", offset=5_000)
    finally:
        session.close()
        partner.close()
    assert data == payload[5_000:]
    assert received == sum(reported) == len(payload) - 5_000
    assert quirks.reads[0][0] == 5_000
    assert (15_000, quirks.reads[0][1] - 10_000) in quirks.reads  # the rest of the first request


def test_a_file_that_shrank_since_its_size_was_read_ends_at_the_servers_eof() -> None:
    payload = os.urandom(300_000)
    quirks = Quirks(claimed_extra=64 * CHUNK)
    partner, session = partner_session({"statement.bin": payload}, quirks)
    try:
        data, reported, received = fetch(session, "statement.bin")
    finally:
        session.close()
        partner.close()
    assert data == payload
    assert received == sum(reported) == len(payload)
    # The reads already in flight when EOF came back, not the 64 MiB the size promised.
    past_the_end = [offset for offset, _ in quirks.reads if offset >= len(payload)]
    assert 0 < len(past_the_end) <= REQUESTS_IN_FLIGHT


def test_a_refused_read_fails_with_the_servers_reason_and_the_session_keeps_working() -> None:
    payload = os.urandom(2 * CHUNK)
    partner, session = partner_session(
        {"statement.bin": payload, "small.bin": b"still served"}, Quirks(refuse_from=CHUNK + 65_536)
    )
    try:
        transport = session.transport
        sink = io.BytesIO()
        with pytest.raises(PermissionError, match="read refused by policy"):
            session.download("statement.bin", sink, 0, lambda count: None)
        assert payload.startswith(sink.getvalue()) and len(sink.getvalue()) >= CHUNK  # a prefix, kept for a resume
        data, _, _ = fetch(session, "small.bin")  # a fresh channel: no reply of the failed read is taken for its own
        assert session.transport is transport
    finally:
        session.close()
        partner.close()
    assert data == b"still served"


def test_a_cancelled_download_leaves_the_connection_usable_for_the_next_transfer(sshd) -> None:
    payload = os.urandom(12 * CHUNK)
    folder = sftp_folder(sshd, f"bulk-{uuid.uuid4().hex[:6]}", {"archive.bin": payload})
    connection = sftp_connection(sshd)
    session = open_session(connection)
    token = CancelToken()

    def stop_after_two(count: int) -> None:
        token.check()
        if sink.tell() >= 2 * CHUNK:
            token.request("cancel")

    try:
        transport = session.transport
        assert session.sftp.get_channel().in_window_size == SFTP_WINDOW  # the window the read-ahead needs
        sink = io.BytesIO()
        with pytest.raises(Cancelled):
            session.download(f"{folder.name}/archive.bin", sink, 0, stop_after_two)
        partial = sink.getvalue()
        assert partial == payload[: len(partial)] and 2 * CHUNK <= len(partial) < len(payload)
        assert [entry.name for entry in session.listdir(folder.name)] == ["archive.bin"]
        rest, _, received = fetch(session, f"{folder.name}/archive.bin", offset=len(partial))
        assert session.transport is transport  # the same connection, on a new channel
    finally:
        session.close()
    assert partial + rest == payload and received == len(payload) - len(partial)
    assert not AuditLogEntry.objects.filter(entity_id=connection.pk, operation="reconnected").exists()


def test_a_packet_read_whole_is_the_very_object_fed_so_the_bulk_reader_copies_nothing() -> None:
    pipe, packet = ChunkPipe(), os.urandom(256 * 1024)
    pipe.feed(packet)
    assert pipe.read(RECV_SIZE) is packet


def test_received_data_is_taken_across_packet_boundaries_as_views_in_order() -> None:
    received = Received()
    head = struct.pack(">IBI", 9 + 4 + 6, 103, 7) + struct.pack(">I", 6)
    received.add(head[:5])  # a reply header split over packets
    received.add(head[5:] + b"abc")
    received.add(b"def" + b"next")
    assert received.size == 13 + 6 + 4
    assert received.head() == (19, 103, 7)
    assert received.take_bytes(13) == head
    pieces = received.take(6)
    assert all(isinstance(piece, memoryview) for piece in pieces) and b"".join(pieces) == b"abcdef"
    assert received.peek(100) == b"next" and received.size == 4
    assert b"".join(received.take(100)) == b"next" and received.size == 0


def test_write_ahead_writes_in_order_and_raises_a_failed_write_at_the_next_put_and_at_the_end() -> None:
    written: list[bytes] = []

    def write(piece) -> None:
        if len(written) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(bytes(piece))

    with pytest.raises(OSError, match="No space left") as raised, WriteAhead(write, depth=2) as writer:
        for number in range(50):
            writer.put([memoryview(b"%03d" % number), memoryview(b"|")])
    assert raised.value.errno == errno.ENOSPC
    assert written == [b"000", b"|", b"001"]  # a prefix: nothing after the failed write


def test_the_channel_buffer_hands_out_what_it_was_fed_in_order_and_in_pieces() -> None:
    pipe = ChunkPipe()
    pipe.feed(b"abc")
    pipe.feed(b"defgh")
    pipe.feed(b"ij")
    assert len(pipe) == 10 and pipe.read_ready()
    assert pipe.read(2) == b"ab"
    assert pipe.read(4) == b"c"  # never more than the rest of the oldest packet
    packet = pipe.read(100)
    assert packet == b"defgh"
    assert pipe.read(1) == b"i" and pipe.read(100) == b"j"
    assert not pipe.read_ready()
    with pytest.raises(PipeTimeout):
        pipe.read(10, timeout=0.05)
    pipe.feed(b"last")
    pipe.close()
    assert pipe.empty() == b"last"
    assert pipe.read(10) == b""  # closed and drained: the end of the stream


def test_write_behind_writes_every_block_in_order_while_three_buffers_go_round(tmp_path: Path) -> None:
    payload = os.urandom(40 * 1000 + 7)
    target = tmp_path / "received.bin"
    with target.open("wb") as local, WriteBehind(local.write, size=1000, blocks=3) as writer:
        for start in range(0, len(payload), 1000):
            piece = payload[start : start + 1000]
            block = writer.free()  # waits while all three are queued for writing
            block[: len(piece)] = piece
            writer.submit(block, len(piece))
    assert target.read_bytes() == payload
