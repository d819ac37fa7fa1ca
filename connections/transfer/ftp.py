"""FTP and FTPS sessions over ftplib: passive/active, explicit and implicit TLS, certificate policies."""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from connections.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    ConnectionPolicyRefused,
    HostKeyRejected,
    HostUnreachable,
    RemoteFileError,
)
from connections.policy import refuse_insecure_trust_in_production
from connections.transfer.base import CHUNK, RemoteFile, SessionInfo, SetupDeadline, WriteBehind, join

IMPLICIT_TLS_PORT = 990
# Seconds the server gets to answer QUIT: saying goodbye to a silent server must not hold up a worker.
QUIT_TIMEOUT_SECONDS = 5
_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_FIPS_CIPHERS = "ECDHE+AESGCM:ECDHE+AES:DHE+AESGCM:DHE+AES:!aNULL:!MD5:!DSS:!CHACHA20"


class _ReusingFtpTls(ftplib.FTP_TLS):
    """FTPS whose data connections resume the control connection's TLS session (vsftpd requires it)."""

    implicit = False

    def connect(self, host: str = "", port: int = 0, timeout: float = -999, source_address: Any = None) -> str:
        if not self.implicit:
            return super().connect(host, port, timeout, source_address)
        # Implicit TLS: the socket speaks TLS from its first byte.
        self.host, self.port = host, port
        if timeout != -999:
            self.timeout = timeout
        raw = socket.create_connection((host, port), self.timeout)
        self.sock = raw  # connected: what fails from here on is the server's doing, not the network's
        self.sock = self.context.wrap_socket(raw, server_hostname=host)
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
        return conn, size


def _interrupt(sock: socket.socket | None) -> None:
    """Wake a thread blocked on sock, from another thread: shutdown, unlike close, reaches a blocked recv."""
    if sock is not None:
        with contextlib.suppress(OSError):
            # The plain socket's shutdown: SSLSocket's own would drop its TLS state under the
            # reading thread's feet.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _fill(sock: socket.socket, view: memoryview) -> int:
    """Receive into view until it is full or the sender ends the data connection; the bytes received."""
    filled, size = 0, len(view)
    while filled < size:
        count = sock.recv_into(view[filled:])
        if not count:
            break
        filled += count
    return filled


def tls_context(connection: Any, fips: bool) -> ssl.SSLContext:
    """TLS settings of a connection: floor version, certificate policy, FIPS cipher suites."""
    policy = connection.tls_cert_policy
    context = ssl.create_default_context()
    context.minimum_version = _TLS_VERSIONS.get(connection.tls_version_floor or "1.2", ssl.TLSVersion.TLSv1_2)
    if fips and not connection.fips_override:
        context.minimum_version = max(context.minimum_version, ssl.TLSVersion.TLSv1_2)
        context.set_ciphers(_FIPS_CIPHERS)
    if policy in ("pinned_thumbprint", "insecure"):
        # The pinned thumbprint is checked right after the handshake, in place of the CA chain.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def certificate_details(sock: ssl.SSLSocket) -> dict[str, Any]:
    binary = sock.getpeercert(binary_form=True) or b""
    details: dict[str, Any] = {
        "thumbprint_sha256": hashlib.sha256(binary).hexdigest(),
        "tls_version": sock.version(),
        "cipher": (sock.cipher() or ("",))[0],
    }
    try:
        certificate = x509.load_der_x509_certificate(binary)
        details.update(
            {
                "subject": certificate.subject.rfc4514_string(),
                "issuer": certificate.issuer.rfc4514_string(),
                "not_after": certificate.not_valid_after_utc.isoformat(),
            }
        )
    except ValueError:  # details are informative; the thumbprint is what is checked
        details["subject"] = "unreadable certificate"
    return details


class FtpSession:
    """One logged-in FTP/FTPS session; reconnects itself when the control connection drops."""

    def __init__(self, connection: Any, *, password: str | None, fips: bool) -> None:
        self.connection = connection
        self.password = password
        self.fips = fips
        self.ftp: ftplib.FTP | None = None
        self.transfer: socket.socket | None = None  # the data connection of the running transfer
        self.info = SessionInfo()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.connect()

    def connect(self) -> None:
        connection = self.connection
        started = time.monotonic()
        secure = connection.protocol == "ftps"
        if secure and connection.tls_cert_policy == "insecure":
            # Refused before any byte goes out: nothing checks who answers.
            refuse_insecure_trust_in_production(connection, "TLS certificate policy insecure")
        if secure:
            client = _ReusingFtpTls(
                context=tls_context(connection, self.fips), timeout=connection.operation_timeout_sec
            )
            client.implicit = connection.port == IMPLICIT_TLS_PORT
        else:
            client = ftplib.FTP(timeout=connection.operation_timeout_sec)
        # connect_timeout_seconds bounds the whole set-up, greeting, TLS and login included;
        # afterwards the server gets operation_timeout_seconds for every answer.
        deadline = SetupDeadline(connection.connect_timeout_sec, lambda: _interrupt(client.sock))
        try:
            banner = client.connect(connection.host, connection.port, timeout=connection.connect_timeout_sec)
        except ssl.SSLError as error:
            deadline.cancel()
            client.close()
            raise ConnectionFailed(f"TLS handshake with {connection.host}:{connection.port} failed: {error}") from None
        except (TimeoutError, ConnectionRefusedError, socket.gaierror, OSError, EOFError) as error:
            deadline.cancel()
            connected = client.sock is not None
            client.close()
            if connected:  # the server took the connection, then did not greet
                raise self._stalled("the greeting") from None
            raise HostUnreachable(
                f"cannot reach {connection.host}:{connection.port} ({type(error).__name__}); "
                "check host, port and firewall"
            ) from None
        details: dict[str, Any] = {}
        try:
            if secure:
                if not client.implicit:
                    client.auth()
                details = certificate_details(client.sock)
                self._check_certificate(details)
                self._check_fips_cipher(details)
            client.login(connection.username, self.password or "")
            if secure:
                client.prot_p()
            client.set_pasv(connection.passive_mode)
        except ftplib.error_perm as error:
            client.close()
            if str(error).startswith("530"):
                raise AuthenticationFailed(
                    f"{connection.host} refused the login of user '{connection.username}' ({error})"
                ) from None
            raise ConnectionFailed(f"{connection.host} refused: {error}") from None
        except ssl.SSLError as error:
            client.close()
            raise ConnectionFailed(f"TLS with {connection.host}:{connection.port} failed: {error}") from None
        except (HostKeyRejected, ConnectionPolicyRefused):
            client.close()
            raise
        except (OSError, EOFError) as error:  # timeouts, or closed by the deadline
            client.close()
            if deadline.expired or isinstance(error, TimeoutError):
                raise self._stalled("TLS and login") from None
            raise ConnectionFailed(f"{connection.host}:{connection.port} closed the connection ({error})") from None
        finally:
            deadline.cancel()
        if deadline.expired:  # it struck just as the set-up ended
            client.close()
            raise self._stalled("TLS and login")
        client.sock.settimeout(connection.operation_timeout_sec)
        self.ftp = client
        self.info = SessionInfo(
            latency_ms=round((time.monotonic() - started) * 1000, 1), banner=banner, details=details
        )

    def _stalled(self, phase: str) -> ConnectionFailed:
        connection = self.connection
        return ConnectionFailed(
            f"{connection.host}:{connection.port} did not complete {phase} within {connection.connect_timeout_sec} s "
            "(connect timeout): the server accepted the connection but stopped answering"
        )

    def _check_fips_cipher(self, details: dict[str, Any]) -> None:
        """FIPS mode: the suite negotiated must be an AES one. TLS 1.2 offers no other (tls_context), but
        TLS 1.3 suites cannot be narrowed from Python, so a server preferring ChaCha20 is refused here."""
        connection = self.connection
        if self.fips and not connection.fips_override and "AES" not in details.get("cipher", ""):
            raise ConnectionPolicyRefused(
                f"{connection.host}:{connection.port} negotiated TLS cipher suite {details.get('cipher')!r}, "
                "not allowed in FIPS mode (AES suites only): ask the partner to offer AES-GCM, or set "
                "fips_override on the connection (Admin only)"
            )

    def _check_certificate(self, details: dict[str, Any]) -> None:
        connection = self.connection
        if connection.tls_cert_policy == "pinned_thumbprint":
            pinned = (connection.tls_pinned_thumbprint or "").replace(":", "").lower()
            if details["thumbprint_sha256"] != pinned:
                raise HostKeyRejected(
                    f"certificate of {connection.host}:{connection.port} does not match the pinned thumbprint: "
                    f"server {details['thumbprint_sha256']}, pinned {pinned or 'none'}"
                )
        if connection.tls_cert_policy == "insecure":
            self.events.append(
                ("insecure_tls_used", {"host": connection.host, "thumbprint": details["thumbprint_sha256"]})
            )

    def reconnect(self) -> None:
        self.close()
        self.connect()
        self.events.append(("reconnected", {"host": self.connection.host}))

    def close(self) -> None:
        # A step thread left blocked on a silent data connection (its execution gave up on it)
        # wakes up and ends instead of waiting out the operation timeout.
        _interrupt(self.transfer)
        client, self.ftp = self.ftp, None  # that woken thread may abandon the session meanwhile
        if client is not None:
            try:
                if client.sock is not None:  # a silent server must not hold up the goodbye
                    client.sock.settimeout(min(QUIT_TIMEOUT_SECONDS, self.connection.operation_timeout_sec))
                client.quit()
            except (ftplib.Error, OSError, EOFError):  # a dead control connection cannot say goodbye
                with contextlib.suppress(OSError):
                    client.close()

    def _client(self) -> ftplib.FTP:
        if self.ftp is None:
            self.reconnect()
        try:
            self.ftp.voidcmd("NOOP")
        except (ftplib.Error, OSError, EOFError):
            self.reconnect()
        return self.ftp

    def listdir(self, path: str) -> list[RemoteFile]:
        client = self._client()
        found = []
        try:
            for name, facts in client.mlsd(path or ".", facts=["type", "size", "modify"]):
                if facts.get("type") in ("cdir", "pdir"):
                    continue
                modified = None
                if facts.get("modify"):
                    modified = datetime.strptime(facts["modify"][:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
                found.append(
                    RemoteFile(
                        name, join(path, name), int(facts.get("size") or 0), modified, facts.get("type") == "dir"
                    )
                )
        except ftplib.error_perm as error:
            raise RemoteFileError(f"cannot list {path}: {error}") from None
        return found

    def stat(self, path: str) -> RemoteFile | None:
        client = self._client()
        try:
            size = client.size(path)
        except ftplib.error_perm:
            return None
        modified = None
        try:
            stamp = client.voidcmd(f"MDTM {path}").split()[-1]
            modified = datetime.strptime(stamp[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        except (ftplib.Error, ValueError):
            pass
        return RemoteFile(path.rsplit("/", 1)[-1], path, size or 0, modified)

    def download(self, remote: str, local_file: Any, offset: int, on_chunk: Callable[[int], None]) -> int:
        client = self._client()
        client.voidcmd("TYPE I")
        received = 0
        # Blocks filled in place by recv_into (a TLS record, up to 16 KiB, at a time) and written
        # as memoryviews by a writer thread while the next one arrives: no bytes object made,
        # copied or freed per block, and the disk write off the receiving path.
        with (
            self._aborting_on_error(),
            self._transfer(client, f"RETR {remote}", offset) as data,
            WriteBehind(local_file.write) as writer,
        ):
            while True:
                block = writer.free()
                filled = _fill(data, block)
                if filled:
                    writer.submit(block, filled)
                    received += filled
                    on_chunk(filled)
                if filled < CHUNK:
                    break
            if isinstance(data, ssl.SSLSocket):
                data.unwrap()
        client.voidresp()
        return received

    def upload(self, local_file: Any, remote: str, on_chunk: Callable[[int], None]) -> int:
        client = self._client()
        client.voidcmd("TYPE I")
        sent = 0
        block = bytearray(CHUNK)
        view = memoryview(block)
        with self._aborting_on_error(), self._transfer(client, f"STOR {remote}") as data:
            while True:
                count = local_file.readinto(view)
                if not count:
                    break
                data.sendall(view[:count])
                sent += count
                on_chunk(count)
            if isinstance(data, ssl.SSLSocket):
                data.unwrap()
        client.voidresp()
        return sent

    @contextlib.contextmanager
    def _transfer(self, client: ftplib.FTP, command: str, offset: int = 0) -> Iterator[socket.socket]:
        """The data connection of one transfer: the operation timeout applies, and close() can interrupt it."""
        data = client.transfercmd(command, rest=offset or None)
        data.settimeout(self.connection.operation_timeout_sec)
        self.transfer = data
        try:
            with data:
                yield data
        finally:
            self.transfer = None

    @contextlib.contextmanager
    def _aborting_on_error(self) -> Iterator[None]:
        """A transfer left midway (full local disk, cancel, timeout) drops the control connection.

        The server still owes the reply to the aborted RETR/STOR; read as the answer to the
        next command it would put the session out of step. The next use connects afresh.
        """
        try:
            yield
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """Close the sockets without a goodbye: nothing more is expected from this connection."""
        client, self.ftp = self.ftp, None
        if client is not None:
            with contextlib.suppress(OSError):
                client.close()

    def rename(self, source: str, target: str) -> None:
        client = self._client()
        try:
            client.rename(source, target)
        except ftplib.error_perm:  # servers that refuse to rename over an existing file
            with contextlib.suppress(ftplib.error_perm):
                client.delete(target)
            client.rename(source, target)

    def delete(self, path: str) -> None:
        try:
            self._client().delete(path)
        except ftplib.error_perm as error:
            raise RemoteFileError(f"cannot delete {path}: {error}") from None

    def mkdir(self, path: str) -> None:
        client = self._client()
        built = ""
        for part in [p for p in path.split("/") if p]:
            built = f"{built}/{part}" if built or path.startswith("/") else part
            try:
                client.mkd(built)
            except ftplib.error_perm as error:
                if not str(error).startswith("550"):
                    raise RemoteFileError(f"cannot create {built}: {error}") from None

    def rmdir(self, path: str) -> None:
        try:
            self._client().rmd(path)
        except ftplib.error_perm as error:
            raise RemoteFileError(f"cannot remove directory {path}: {error}") from None
