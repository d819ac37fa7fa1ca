"""SFTP sessions over paramiko: host key policy, password/key auth, algorithm limits, pipelined transfers."""

from __future__ import annotations

import contextlib
import io
import socket
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import paramiko

from connections import hostkeys
from connections.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    ConnectionPolicyRefused,
    HostKeyRejected,
    HostUnreachable,
    RemoteFileError,
)
from connections.transfer.base import RemoteFile, SessionInfo, SetupDeadline, join
from connections.transfer.sftp_bulk import BufferedSocket, ChunkPipe, PipelinedReader, PipelinedWriter
from connections.transfer.sftp_segments import SegmentedDownload, segment_count
from courier_site.memory import release_freed_memory

# FIPS 140 approved choices (SPEC 5); a connection's fips_override lifts them.
FIPS_ALGORITHMS = {
    "kex": (
        "ecdh-sha2-nistp256",
        "ecdh-sha2-nistp384",
        "diffie-hellman-group14-sha256",
        "diffie-hellman-group16-sha512",
    ),
    "ciphers": ("aes128-ctr", "aes192-ctr", "aes256-ctr", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com"),
    "macs": ("hmac-sha2-256", "hmac-sha2-512", "hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com"),
    "host_key_types": (
        "rsa-sha2-256",
        "rsa-sha2-512",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
    ),
}
_OPTION_NAMES = {"kex": "kex", "ciphers": "ciphers", "macs": "digests", "host_key_types": "key_types"}
# paramiko asks for 32 KiB per SFTP request. OpenSSH's sftp-server takes messages of up to
# 256 KiB, and larger requests cut the Python work per byte (bench/bench_transfers.py: a
# 248 KiB write costs a sixth less CPU per GiB than a 64 KiB one, with a quarter of the
# acknowledgements). Other servers keep the conservative size: some refuse larger writes.
OPENSSH_WRITE_SIZE = 248 * 1024
OPENSSH_READ_SIZE = 128 * 1024
DEFAULT_REQUEST_SIZE = 32 * 1024
# Bytes of read requests in flight during a download. 32 MiB rides out the stalls of a
# busy machine that 8 or 16 MiB did not (bench/bench_transfers.py: a 1 GiB download in
# about 1.9 s instead of 3), and fills a link with 100 ms round trips at 320 MiB/s; memory
# stays bounded whatever the file size. Never more than REQUESTS_IN_FLIGHT requests: with
# 32 KiB requests to other servers that is 8 MiB, as some servers limit what they queue.
READ_AHEAD_BYTES = 32 * 1024 * 1024
REQUESTS_IN_FLIGHT = 256
# The segments of one segmented download share the same read-ahead, so memory stays
# bounded however many are set (several connections fill a link with fewer bytes each).
SEGMENTED_READ_AHEAD_BYTES = READ_AHEAD_BYTES
# Downloads at least this large give the heap they freed back (courier_site/memory.py).
RELEASE_AFTER_BYTES = 64 * 1024 * 1024
# The SFTP channel's receive window and largest packet. The window bounds what the server
# may send unasked-for-by-reading, so it must exceed the read-ahead (paramiko's 2 MiB would
# stall it); OpenSSH sends packets up to the size offered when it has the data at hand.
SFTP_WINDOW = 2 * READ_AHEAD_BYTES
SFTP_MAX_PACKET = 256 * 1024
# Unanswered writes of an upload. OpenSSH's server window (2 MiB) holds back the rest anyway;
# this many keep it full while their acknowledgements travel.
WRITES_IN_FLIGHT = 32


def load_private_key(text: str, passphrase: str | None = None) -> paramiko.PKey:
    """A paramiko key from OpenSSH or PEM text, whatever its type."""
    last: Exception | None = None
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(io.StringIO(text), password=passphrase)
        except paramiko.PasswordRequiredException:
            raise AuthenticationFailed("the SSH key needs a passphrase") from None
        except (paramiko.SSHException, ValueError) as error:
            last = error
    raise AuthenticationFailed(f"the SSH key could not be read ({type(last).__name__})")


def restrict_algorithms(transport: paramiko.Transport, wanted: dict[str, list[str]] | None, fips: bool) -> None:
    """Limit kex, ciphers, MACs and host key types to the connection's list (and FIPS when enforced)."""
    options = transport.get_security_options()
    for key, attribute in _OPTION_NAMES.items():
        available = list(getattr(options, attribute))
        allowed = [name for name in available if not wanted or not wanted.get(key) or name in wanted[key]]
        if fips:
            allowed = [name for name in allowed if name in FIPS_ALGORITHMS[key]]
        if key == "ciphers" and not (wanted and wanted.get("ciphers")):
            # AES-GCM needs no separate MAC pass: about a third faster in paramiko than AES-CTR.
            allowed.sort(key=lambda name: 0 if name.endswith("-gcm@openssh.com") else 1)
        if not allowed:
            raise ConnectionFailed(
                f"no {key} algorithm left after the connection's restrictions{' and FIPS mode' if fips else ''}"
            )
        setattr(options, attribute, tuple(allowed))


class _Transport(paramiko.Transport):
    """A paramiko transport that remembers the key exchange it agreed on, for Test connection.

    paramiko drops its key-exchange engine once the new keys are in use and keeps no name of it.
    """

    agreed_kex = ""

    def _parse_kex_init(self, m: paramiko.Message) -> None:
        super()._parse_kex_init(m)
        self.agreed_kex = getattr(self.kex_engine, "name", "") or self.agreed_kex


class SftpSession:
    """One authenticated SFTP session; reconnects itself (same host key) when the transport drops."""

    def __init__(
        self,
        connection: Any,
        *,
        password: str | None,
        private_key: str | None,
        fips: bool,
        trusted_fingerprint: str | None = None,
    ) -> None:
        self.connection = connection
        self.password = password
        self.private_key = private_key
        self.fips = fips and not connection.fips_override
        self.transport: paramiko.Transport | None = None
        self.sftp: paramiko.SFTPClient | None = None
        self.info = SessionInfo()
        # Set for the extra connections of a segmented download: the server must offer the key
        # this session accepted (checked without the database, which their thread may not have).
        self.trusted_fingerprint = trusted_fingerprint
        self.events: list[tuple[str, dict[str, Any]]] = []  # audited later by the caller's thread
        self.segment_sessions: list[SftpSession] = []  # opened by the first segmented download, kept
        self.segment_logins_refused = False
        self.connect()

    # ------------------------------------------------------------------ connection
    def connect(self) -> None:
        connection = self.connection
        started = time.monotonic()
        try:
            sock = socket.create_connection((connection.host, connection.port), timeout=connection.connect_timeout_sec)
        except (TimeoutError, ConnectionRefusedError, socket.gaierror, OSError) as error:
            raise HostUnreachable(
                f"cannot reach {connection.host}:{connection.port} "
                f"({type(error).__name__}: {error.strerror or error}); "
                "check host, port and firewall"
            ) from None
        transport = _Transport(BufferedSocket(sock))
        # connect_timeout_seconds bounds the whole set-up, from the TCP connect to the SFTP
        # subsystem. Some of paramiko's waits have no limit (the subsystem request) or one of
        # their own: those stay above it, and at the deadline the transport is closed, which
        # wakes whatever it waits on.
        for limit in ("banner_timeout", "handshake_timeout", "auth_timeout", "channel_timeout"):
            setattr(transport, limit, connection.connect_timeout_sec + 5)
        deadline = SetupDeadline(connection.connect_timeout_sec - (time.monotonic() - started), transport.close)
        try:
            restrict_algorithms(transport, connection.ssh_algorithms, self.fips)
            transport.start_client()
            key = transport.get_remote_server_key()
            offered = hostkeys.fingerprint(key.asbytes())
            if self.trusted_fingerprint is None:
                hostkeys.verify(connection, key.get_name(), offered)  # raises HostKeyRejected
                self.trusted_fingerprint = offered
            elif offered != self.trusted_fingerprint:  # a reconnect must meet the same server
                raise HostKeyRejected(f"host key changed during the session: offered {offered}")
            self._authenticate(transport)
            transport.set_keepalive(connection.keepalive_interval_sec)
            sftp = self._open_sftp(transport)
        except Exception as error:
            transport.close()
            raise self._setup_error(error, deadline) from None
        finally:
            deadline.cancel()
        if deadline.expired:  # it struck just as the set-up ended, and closed the transport
            transport.close()
            raise self._setup_error(TimeoutError(), deadline)
        self.transport, self.sftp = transport, sftp
        options = transport.get_security_options()
        self.info = SessionInfo(
            latency_ms=round((time.monotonic() - started) * 1000, 1),
            banner=transport.remote_version,
            details={
                "host_key_fingerprint": offered,
                "host_key_type": key.get_name(),
                "cipher": getattr(transport, "remote_cipher", ""),
                "mac": getattr(transport, "remote_mac", ""),
                "kex": transport.agreed_kex,
                "kex_offered": list(options.kex),
            },
        )

    def _open_sftp(self, transport: paramiko.Transport) -> paramiko.SFTPClient:
        sftp = paramiko.SFTPClient.from_transport(transport, window_size=SFTP_WINDOW, max_packet_size=SFTP_MAX_PACKET)
        channel = sftp.get_channel()
        channel.settimeout(self.connection.operation_timeout_sec)
        # The server speaks only when asked, and it was not asked since the version exchange:
        # the old buffer is empty, but whatever it might hold moves over.
        pipe, channel.in_buffer = channel.in_buffer, ChunkPipe()
        leftover = pipe.empty()
        if leftover:
            channel.in_buffer.feed(leftover)
        return sftp

    def _setup_error(self, error: Exception, deadline: SetupDeadline) -> Exception:
        """What a failed set-up reports; past the deadline, a timeout whatever the interrupted wait made of it."""
        connection = self.connection
        where = f"{connection.host}:{connection.port}"
        if deadline.expired:  # even "authentication failed": paramiko's reading of a closed transport
            return ConnectionFailed(
                f"{where} did not complete the SSH session set-up within {connection.connect_timeout_sec} s "
                "(connect timeout): the server accepted the connection but stopped answering"
            )
        if isinstance(error, (HostKeyRejected, AuthenticationFailed, ConnectionFailed, ConnectionPolicyRefused)):
            return error
        if isinstance(error, paramiko.SSHException):
            return ConnectionFailed(f"SSH session with {where} failed: {error}")
        if isinstance(error, (EOFError, OSError)):
            return ConnectionFailed(f"{where} closed the connection ({error})")
        return error

    def _authenticate(self, transport: paramiko.Transport) -> None:
        connection, username = self.connection, self.connection.username
        method = connection.auth_method
        try:
            if method in ("ssh_key", "password_and_ssh_key"):
                if not self.private_key:
                    raise AuthenticationFailed("the connection has no usable SSH key")
                remaining = transport.auth_publickey(username, load_private_key(self.private_key))
                if method == "password_and_ssh_key" and remaining:
                    transport.auth_password(username, self.password or "")
            else:
                transport.auth_password(username, self.password or "")
        except paramiko.AuthenticationException:
            raise AuthenticationFailed(
                f"{connection.host} refused {method.replace('_', ' ')} authentication for user '{username}'"
            ) from None
        if not transport.is_authenticated():
            raise AuthenticationFailed(f"{connection.host} wants more authentication for user '{username}'")

    def reconnect(self) -> None:
        self.close()
        self.connect()
        self.events.append(("reconnected", {"host": self.connection.host}))

    def close(self) -> None:
        for helper in self.segment_sessions:
            helper.close()
        self.segment_sessions.clear()
        for closable in (self.sftp, self.transport):
            if closable is not None:
                with contextlib.suppress(Exception):  # closing a dead session must not hide the real error
                    closable.close()
        self.sftp = self.transport = None

    @property
    def alive(self) -> bool:
        return self.transport is not None and self.transport.is_active()

    # ------------------------------------------------------------------ file operations
    def _client(self) -> paramiko.SFTPClient:
        if not self.alive:
            self.reconnect()
        elif self.sftp is None:  # a transfer left its channel midway: a fresh one on the same connection
            self.sftp = self._open_sftp(self.transport)
        return self.sftp

    def _drop_channel(self) -> None:
        """Close the SFTP channel of a transfer that stopped midway: replies it still owes would
        otherwise be read as the answers to the session's next requests."""
        sftp, self.sftp = self.sftp, None
        if sftp is not None:
            with contextlib.suppress(Exception):
                sftp.close()

    def listdir(self, path: str) -> list[RemoteFile]:
        try:
            entries = self._client().listdir_attr(path or ".")
        except OSError as error:
            raise RemoteFileError(f"cannot list {path}: {error}") from None
        return [
            RemoteFile(
                entry.filename,
                join(path, entry.filename),
                entry.st_size or 0,
                datetime.fromtimestamp(entry.st_mtime, UTC) if entry.st_mtime else None,
                stat.S_ISDIR(entry.st_mode or 0),
            )
            for entry in entries
        ]

    def stat(self, path: str) -> RemoteFile | None:
        try:
            entry = self._client().stat(path)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise RemoteFileError(f"cannot stat {path}: {error}") from None
        return RemoteFile(
            path.rsplit("/", 1)[-1],
            path,
            entry.st_size or 0,
            datetime.fromtimestamp(entry.st_mtime, UTC) if entry.st_mtime else None,
            stat.S_ISDIR(entry.st_mode or 0),
        )

    def download(self, remote: str, local_file: Any, offset: int, on_chunk: Callable[[int], None]) -> int:
        moved = 0

        def counting(count: int) -> None:
            nonlocal moved
            moved += count
            on_chunk(count)

        try:
            return self._download(remote, local_file, offset, counting)
        finally:
            if moved >= RELEASE_AFTER_BYTES:  # the heap the packets went through goes back to the OS
                release_freed_memory()

    def _download(self, remote: str, local_file: Any, offset: int, on_chunk: Callable[[int], None]) -> int:
        client = self._client()
        handle = client.open(remote, "rb")
        try:
            size = handle.stat().st_size or 0
            segments = segment_count(self.connection.transfer_segments, size - offset, local_file)
            if segments > 1:
                handle.close()
                return self._download_segmented(remote, local_file, offset, size, segments, on_chunk)
            reader = PipelinedReader(client.get_channel(), handle.handle, remote, **self._reader_options())
            received = reader.read(offset, size, local_file.write, on_chunk)
        except BaseException:
            # Cancelled, local disk full, a dropped link: the channel still owes replies, so it
            # goes; closing it closes the remote file too, and the handle's own CLOSE fails quietly.
            self._drop_channel()
            with contextlib.suppress(Exception):
                handle.close()
            raise
        handle.close()
        return received

    def _reader_options(self, segments: int = 1) -> dict[str, int]:
        request_size = OPENSSH_READ_SIZE if self._openssh else DEFAULT_REQUEST_SIZE
        read_ahead = min(READ_AHEAD_BYTES, SEGMENTED_READ_AHEAD_BYTES // segments)
        return {"request_size": request_size, "depth": max(1, min(REQUESTS_IN_FLIGHT, read_ahead // request_size))}

    def _download_segmented(
        self, remote: str, local_file: Any, offset: int, size: int, segments: int, on_chunk: Callable[[int], None]
    ) -> int:
        sessions = self._segment_sessions(segments)
        download = SegmentedDownload(
            remote,
            local_file,
            sessions,
            open_range=_open_range,
            drop=SftpSession._drop_channel,
            reader_options=self._reader_options(len(sessions)),
        )
        try:
            return download.run(offset, size, on_chunk)
        finally:
            for helper in sessions[1:]:  # reconnects of the extra connections are this session's to audit
                self.events.extend(helper.events)
                helper.events.clear()

    def _segment_sessions(self, count: int) -> list[SftpSession]:
        """This session and up to count - 1 more connections to the same server, opened once and kept.

        They log in at the same time (on a long-distance link each login is several round trips).
        A partner that refuses a login (a limit on sessions per user) leaves the downloads of this
        session with the connections it did accept: the refusal is audited once, the transfer goes on.
        """
        wanted = count - 1 - len(self.segment_sessions)
        if wanted <= 0 or self.segment_logins_refused:
            return [self, *self.segment_sessions[: count - 1]]
        with ThreadPoolExecutor(wanted, thread_name_prefix="courier-sftp-login") as logins:
            attempts = [logins.submit(self._open_segment_session) for _ in range(wanted)]
        refusals = [attempt.exception() for attempt in attempts if attempt.exception() is not None]
        self.segment_sessions += [attempt.result() for attempt in attempts if attempt.exception() is None]
        if refusals:
            self.segment_logins_refused = True
            self.events.append(
                (
                    "segment_connection_refused",
                    {
                        "host": self.connection.host,
                        "segments_wanted": count,
                        "segments_open": len(self.segment_sessions) + 1,
                        "error": str(refusals[0]),
                    },
                )
            )
        return [self, *self.segment_sessions[: count - 1]]

    def _open_segment_session(self) -> SftpSession:
        return SftpSession(
            self.connection,
            password=self.password,
            private_key=self.private_key,
            fips=self.fips,
            trusted_fingerprint=self.trusted_fingerprint,
        )

    def upload(self, local_file: Any, remote: str, on_chunk: Callable[[int], None]) -> int:
        client = self._client()
        handle = client.open(remote, "wb")
        try:
            request_size = OPENSSH_WRITE_SIZE if self._openssh else DEFAULT_REQUEST_SIZE
            writer = PipelinedWriter(
                client.get_channel(), handle.handle, remote, request_size=request_size, depth=WRITES_IN_FLIGHT
            )
            sent = writer.write(local_file.readinto, on_chunk)
        except BaseException:
            self._drop_channel()  # unanswered writes: see download
            with contextlib.suppress(Exception):
                handle.close()
            raise
        handle.close()
        return sent

    @property
    def _openssh(self) -> bool:
        return "OpenSSH" in (self.info.banner or "")

    def rename(self, source: str, target: str) -> None:
        client = self._client()
        try:
            client.posix_rename(source, target)  # atomic replace on OpenSSH servers
        except OSError:  # servers without posix-rename: remove the old file, then rename
            with contextlib.suppress(FileNotFoundError):
                client.remove(target)
            client.rename(source, target)

    def delete(self, path: str) -> None:
        try:
            self._client().remove(path)
        except FileNotFoundError:
            raise RemoteFileError(f"no remote file {path}") from None

    def mkdir(self, path: str) -> None:
        client = self._client()
        built = ""
        for part in [p for p in path.split("/") if p]:
            built = f"{built}/{part}" if built or path.startswith("/") else part
            try:
                client.stat(built)
            except FileNotFoundError:
                client.mkdir(built)

    def rmdir(self, path: str) -> None:
        try:
            self._client().rmdir(path)
        except OSError as error:
            raise RemoteFileError(f"cannot remove directory {path}: {error}") from None


def _open_range(session: SftpSession, remote: str) -> tuple[Any, bytes, Callable[[], None]]:
    """The channel and an open handle of remote on a segment's session, and how to close the handle."""
    client = session._client()
    handle = client.open(remote, "rb")
    return client.get_channel(), handle.handle, handle.close
