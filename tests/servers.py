"""Real partner servers for transfer tests: OpenSSH sshd on a high port and pyftpdlib with TLS."""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.child_processes import tied_to_test_run

SFTP_USER = "courier-sftp-test"
SFTP_PASSWORD = "sftp-Test-Password-42"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


# The test account's home: outside pytest's private (0700) temporary folders, so that the
# unprivileged account can reach it, and shared by every sshd a test starts.
SFTP_HOME = Path("/var/tmp/courier-sftp-test-home")


def ensure_sftp_user() -> Path:
    """A local account for sshd's password and key login (tests run as root, as CI does)."""
    try:
        pwd.getpwnam(SFTP_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--no-create-home", "--home-dir", str(SFTP_HOME), "--shell", "/bin/sh", SFTP_USER], check=True
        )
    if pwd.getpwnam(SFTP_USER).pw_dir != str(SFTP_HOME):
        subprocess.run(["usermod", "--home", str(SFTP_HOME), SFTP_USER], check=True)
    subprocess.run(["chpasswd"], input=f"{SFTP_USER}:{SFTP_PASSWORD}", text=True, check=True)
    return SFTP_HOME


@dataclass
class SshServer:
    port: int
    home: Path
    host_key: Path
    process: subprocess.Popen
    client_key_path: Path

    @property
    def client_private_key(self) -> str:
        return self.client_key_path.read_text()


def _keygen(path: Path, key_type: str = "ed25519") -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-f", str(path)], check=True)


@contextmanager
def ssh_server(
    root: Path, host_key_type: str = "ecdsa", host_key: Path | None = None, authentication_methods: str = "any"
) -> Iterator[SshServer]:
    """sshd on a free port, with its own host key, password and public key login for SFTP_USER."""
    root.mkdir(parents=True, exist_ok=True)
    home = ensure_sftp_user()
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    if host_key is None:
        host_key = root / f"host_{host_key_type}"
        if not host_key.exists():
            _keygen(host_key, host_key_type)
    client_key = home.parent / "courier-sftp-test-client_ed25519"
    if not client_key.exists():
        _keygen(client_key)
    shutil.copy(f"{client_key}.pub", home / ".ssh" / "authorized_keys")
    account = pwd.getpwnam(SFTP_USER)
    for path in (home, home / ".ssh", home / ".ssh" / "authorized_keys"):
        os.chown(path, account.pw_uid, account.pw_gid)
    os.chmod(home, 0o755)
    os.chmod(home / ".ssh", 0o700)
    os.chmod(home / ".ssh" / "authorized_keys", 0o600)
    Path("/run/sshd").mkdir(exist_ok=True)
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {root / 'sshd.pid'}\n"
        f"PasswordAuthentication yes\nPubkeyAuthentication yes\nKbdInteractiveAuthentication no\n"
        f"UsePAM yes\nAllowUsers {SFTP_USER}\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
        f"AuthenticationMethods {authentication_methods}\n"
    )
    process = subprocess.Popen(
        tied_to_test_run(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)]),
        stdout=subprocess.DEVNULL,
        stderr=(root / "sshd.log").open("w"),
    )
    try:
        wait_port(port)
        yield SshServer(port, home, host_key, process, client_key)
    finally:
        process.terminate()
        process.wait(10)


def sftp_folder(server: SshServer, name: str, files: dict[str, bytes] | None = None) -> Path:
    """A folder in the SFTP account's home, with files, owned by the account (tests run as root)."""
    account = pwd.getpwnam(SFTP_USER)
    folder = server.home / name
    folder.mkdir(parents=True)
    os.chown(folder, account.pw_uid, account.pw_gid)
    for file_name, content in (files or {}).items():
        (folder / file_name).write_bytes(content)
        os.chown(folder / file_name, account.pw_uid, account.pw_gid)
    return folder


def sftp_connection(server: SshServer, password: str = SFTP_PASSWORD, **overrides: Any) -> Any:
    """A saved connection row that logs in to server as SFTP_USER with a password."""
    from connections.models import Connection

    fields = {
        "name": f"partner-{uuid.uuid4().hex[:6]}",
        "protocol": "sftp",
        "host": "127.0.0.1",
        "port": server.port,
        "auth_method": "password",
        "username": SFTP_USER,
        **overrides,
    }
    connection = Connection(**fields)
    connection.set_password(password)
    connection.save()
    return connection


@dataclass
class FtpTransfer:
    command: str
    path: str
    completed: bool
    bytes: int


@dataclass
class FtpServer:
    port: int
    root: Path
    user: str
    password: str
    certificate_der: bytes
    # What clients really sent and received, as the server saw it (commands with PASS masked).
    commands: list[str] = field(default_factory=list)
    transfers: list[FtpTransfer] = field(default_factory=list)


class _Recording:
    """pyftpdlib handler mix-in noting every command and finished data transfer in `server_record`."""

    server_record: FtpServer

    def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
        self.server_record.commands.append("PASS ******" if cmd == "PASS" else line)
        super().pre_process_command(line, cmd, arg)

    def log_transfer(self, cmd: str, filename: str, receive: bool, completed: bool, elapsed: float, bytes: int) -> None:
        self.server_record.transfers.append(FtpTransfer(cmd, filename, completed, bytes))
        super().log_transfer(cmd, filename, receive, completed, elapsed, bytes)


def self_signed_certificate(folder: Path) -> tuple[Path, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "courier-test-ftps")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = folder / "ftps.pem"
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + certificate.public_bytes(serialization.Encoding.PEM)
    )
    return pem, certificate.public_bytes(serialization.Encoding.DER)


@contextmanager
def ftp_server(
    root: Path, tls: str | None = None, max_tls: str | None = None, tls13_suites: str | None = None
) -> Iterator[FtpServer]:
    """pyftpdlib on a free port: plain FTP, explicit TLS ("explicit") or implicit TLS ("implicit");
    tls13_suites narrows the TLS 1.3 cipher suites the server accepts (OpenSSL names, colon-separated)."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
    from pyftpdlib.ioloop import IOLoop
    from pyftpdlib.servers import ThreadedFTPServer

    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    authorizer = DummyAuthorizer()
    authorizer.add_user("partner", "ftp-Test-Password-7", str(files), perm="elradfmwMT")
    certificate_der = b""
    if tls:
        pem, certificate_der = self_signed_certificate(root)

        class Handler(_Recording, TLS_FTPHandler):
            pass

        Handler.certfile = str(pem)
        if max_tls == "1.2":
            from OpenSSL import SSL

            Handler.ssl_options = TLS_FTPHandler.ssl_options | SSL.OP_NO_TLSv1_3
        if tls13_suites:
            from OpenSSL import SSL

            context = SSL.Context(SSL.TLS_SERVER_METHOD)
            context.use_certificate_chain_file(str(pem))
            context.use_privatekey_file(str(pem))
            context.set_tls13_ciphersuites(tls13_suites.encode())
            Handler.ssl_context = context
        Handler.tls_control_required = True
        Handler.tls_data_required = True
        if tls == "implicit":
            # pyftpdlib has no implicit mode: start the TLS handshake before the banner.
            class Handler(Handler):
                def handle(self) -> None:
                    self.secure_connection(self.ssl_context)  # the banner follows the handshake

                def handle_ssl_established(self) -> None:
                    super().handle()
    else:

        class Handler(_Recording, FTPHandler):
            pass

    port = free_port()
    record = FtpServer(port, files, "partner", "ftp-Test-Password-7", certificate_der)
    Handler.authorizer = authorizer
    Handler.passive_ports = range(60000, 60200)
    Handler.server_record = record

    class IsolatedServer(ThreadedFTPServer):
        # pyftpdlib keeps the IOLoop and the stop flag of its threaded server class-wide: closing
        # the server of one test would stop a module-wide server the next test still uses.
        def __init__(self, address: tuple[str, int], handler: type) -> None:
            self._exit = threading.Event()
            self._lock = threading.Lock()
            super().__init__(address, handler, ioloop=IOLoop())

    server = IsolatedServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.2}, daemon=True)
    thread.start()
    try:
        wait_port(port)
        yield record
    finally:
        server.close_all()


class DroppingProxy:
    """A TCP proxy that cuts its first connection after `drop_after` bytes from the server, like a
    partner firewall resetting a long transfer; later connections pass untouched. With drop_after
    None it cuts nothing and only counts the connections clients open."""

    def __init__(self, target_port: int, drop_after: int | None) -> None:
        self.target_port = target_port
        self.drop_after = drop_after
        self.connections = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            limit = self.drop_after if self.connections == 1 else None
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, limit), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
                sent += len(data)
                if limit is not None:
                    if sent >= limit:
                        break
                    time.sleep(0.002)  # a slow link: the client reads along before the cut
        except OSError:
            pass
        finally:
            for end in (source, target):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def serve_ftp_in_subprocess(root: Path, tls: str | None) -> tuple[subprocess.Popen, FtpServer]:
    """pyftpdlib in a process of its own (benchmarks: the server must not share the client's GIL)."""
    import json
    import sys

    info_path = root / "server.json"
    code = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from tests.servers import ftp_server\n"
        f"with ftp_server(Path({str(root)!r}), tls={tls!r}) as server:\n"
        f"    Path({str(info_path)!r}).write_text(json.dumps({{'port': server.port, 'root': str(server.root),"
        " 'user': server.user, 'password': server.password, 'der': server.certificate_der.hex()}))\n"
        "    while True: time.sleep(1)\n"
    )
    root.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        tied_to_test_run([sys.executable, "-c", code]),
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not info_path.exists():
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise AssertionError("the FTP server process did not start")
        time.sleep(0.05)
    info = json.loads(info_path.read_text())
    return process, FtpServer(
        info["port"], Path(info["root"]), info["user"], info["password"], bytes.fromhex(info["der"])
    )
