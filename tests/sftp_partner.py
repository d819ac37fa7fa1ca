"""An SSH server (paramiko) with a small SFTP service that answers reads the way some partners do (bulk reader tests).

OpenSSH's sftp-server answers every READ in full and in order, so it never exercises the
reader's other paths. This one serves files from a dict and can be told to answer reads in
reverse order in batches, to send at most part of what was asked, to report a file larger
than its content (the file shrank), to refuse reads past some offset with a status error, or to
refuse logins past a number (a limit on sessions per user), or to answer slowly.
It runs on a free loopback port, with password login and an ECDSA host key (allowed in FIPS mode).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import paramiko

from connections.models import Connection

PARTNER_USER = "partner"
PARTNER_PASSWORD = "partner-Test-Password-9"

_INIT, _VERSION, _OPEN, _CLOSE, _READ, _FSTAT = 1, 2, 3, 4, 5, 8
_STATUS, _HANDLE, _DATA, _ATTRS = 101, 102, 103, 105
_OK, _EOF, _NO_SUCH_FILE, _PERMISSION_DENIED = 0, 1, 2, 3


@dataclass
class Quirks:
    reverse_batches: int = 1  # answer READs in reverse order, this many at a time
    most_per_read: int | None = None  # send at most this many bytes per READ
    claimed_extra: int = 0  # FSTAT reports the file this much larger than it is
    refuse_from: int | None = None  # READs at or past this offset get "permission denied"
    read_delay: float = 0.0  # seconds each READ waits before its answer: a slow partner
    most_logins: int | None = None  # logins after this many are refused, as by a per-user session limit
    reads: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) of every READ seen


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _Service(paramiko.SubsystemHandler):
    """One client's SFTP session, version 3, just what a download needs."""

    def start_subsystem(self, name: str, transport: paramiko.Transport, channel: paramiko.Channel) -> None:
        partner: SftpPartner = self.get_server().partner
        self.files, self.quirks = partner.files, partner.quirks
        self.channel, self.handles, self.held = channel, {}, []
        channel.settimeout(0.05)
        pending = b""
        while True:
            try:
                data = channel.recv(65536)
            except TimeoutError:
                self._flush()
                continue
            if not data:
                return
            pending += data
            while len(pending) >= 4 and len(pending) >= 4 + struct.unpack_from(">I", pending)[0]:
                length = struct.unpack_from(">I", pending)[0]
                self._answer(pending[4 : 4 + length])
                pending = pending[4 + length :]

    def _send(self, kind: int, request_id: int, body: bytes) -> None:
        payload = struct.pack(">BI", kind, request_id) + body
        self.channel.sendall(struct.pack(">I", len(payload)) + payload)

    @staticmethod
    def _status(code: int, message: str) -> bytes:
        return struct.pack(">I", code) + _string(message.encode()) + _string(b"")

    def _flush(self) -> None:
        for kind, request_id, body in reversed(self.held):
            self._send(kind, request_id, body)
        self.held = []

    def _answer(self, packet: bytes) -> None:
        kind = packet[0]
        if kind == _INIT:
            self.channel.sendall(struct.pack(">IBI", 5, _VERSION, 3))
            return
        request_id = struct.unpack_from(">I", packet, 1)[0]
        if kind != _READ:
            self._flush()
        if kind == _OPEN:
            name_length = struct.unpack_from(">I", packet, 5)[0]
            name = packet[9 : 9 + name_length].decode()
            if name not in self.files:
                self._send(_STATUS, request_id, self._status(_NO_SUCH_FILE, "no such file"))
                return
            handle = f"h{len(self.handles)}".encode()
            self.handles[handle] = name
            self._send(_HANDLE, request_id, _string(handle))
        elif kind in (_FSTAT, _CLOSE):
            handle_length = struct.unpack_from(">I", packet, 5)[0]
            name = self.handles[packet[9 : 9 + handle_length]]
            if kind == _CLOSE:
                self._send(_STATUS, request_id, self._status(_OK, "closed"))
            else:
                size = len(self.files[name]) + self.quirks.claimed_extra
                self._send(_ATTRS, request_id, struct.pack(">IQ", 1, size))
        elif kind == _READ:
            handle_length = struct.unpack_from(">I", packet, 5)[0]
            name = self.handles[packet[9 : 9 + handle_length]]
            offset, length = struct.unpack_from(">QI", packet, 9 + handle_length)
            self.quirks.reads.append((offset, length))
            self.held.append(self._read(request_id, self.files[name], offset, length))
            if len(self.held) >= self.quirks.reverse_batches:
                self._flush()
        else:
            self._send(_STATUS, request_id, self._status(8, "unsupported"))

    def _read(self, request_id: int, content: bytes, offset: int, length: int) -> tuple[int, int, bytes]:
        quirks = self.quirks
        time.sleep(quirks.read_delay)
        if quirks.refuse_from is not None and offset >= quirks.refuse_from:
            return _STATUS, request_id, self._status(_PERMISSION_DENIED, "read refused by policy")
        if offset >= len(content):
            return _STATUS, request_id, self._status(_EOF, "end of file")
        if quirks.most_per_read is not None:
            length = min(length, quirks.most_per_read)
        return _DATA, request_id, _string(content[offset : offset + length])


class _Login(paramiko.ServerInterface):
    def __init__(self, partner: SftpPartner) -> None:
        self.partner = partner

    def get_allowed_auths(self, username: str) -> str:
        return "password"

    def check_auth_password(self, username: str, password: str) -> int:
        partner = self.partner
        if username != PARTNER_USER or password != PARTNER_PASSWORD:
            return paramiko.AUTH_FAILED
        with partner.lock:
            if partner.quirks.most_logins is not None and partner.logins >= partner.quirks.most_logins:
                return paramiko.AUTH_FAILED
            partner.logins += 1
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


class SftpPartner:
    """The server; `files` maps a remote name to its content, `quirks` says how reads are answered."""

    def __init__(self, files: dict[str, bytes], quirks: Quirks | None = None) -> None:
        self.files = files
        self.quirks = quirks or Quirks()
        self.host_key = paramiko.ECDSAKey.generate()
        self.transports: list[paramiko.Transport] = []
        self.logins = 0
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(client)
            transport.add_server_key(self.host_key)
            transport.set_subsystem_handler("sftp", _Service)
            self.transports.append(transport)
            transport.start_server(server=_Login(self))

    def close(self) -> None:
        self.listener.close()
        for transport in self.transports:
            with suppress(Exception):
                transport.close()


def partner_connection(partner: SftpPartner, **fields: Any) -> Connection:
    """A saved connection row that logs in to partner with its password."""
    connection = Connection(
        name=f"quirky-{uuid.uuid4().hex[:6]}",
        protocol="sftp",
        host="127.0.0.1",
        port=partner.port,
        auth_method="password",
        username=PARTNER_USER,
        **fields,
    )
    connection.set_password(PARTNER_PASSWORD)
    connection.save()
    return connection
