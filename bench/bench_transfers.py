"""SFTP and FTPS transfer throughput against the OpenSSH sftp client and curl, same server and file (SPEC 9)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from bench.support import Figure, Report, scratch_database


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _rate(size: int, seconds: float) -> float:
    return size / seconds / 1024 / 1024


def _courier_session(connection_fields: dict, password: str):
    from connections.models import Connection
    from connections.transfer.sessions import open_session

    connection = Connection(name=f"bench-{uuid.uuid4().hex[:6]}", auth_method="password", **connection_fields)
    connection.set_password(password)
    connection.save()
    return open_session(connection, by="bench")


def _courier_round_trip(session, remote: str, local: Path, upload_name: str) -> tuple[float, float]:
    with local.open("wb") as target:
        download = _timed(lambda: session.download(remote, target, 0, lambda count: None))
    with local.open("rb") as source:
        upload = _timed(lambda: session.upload(source, upload_name, lambda count: None))
    return download, upload


def _sftp_bench(size: int, work: Path, report: Report) -> None:
    import pwd

    from tests.servers import SFTP_PASSWORD, SFTP_USER, ssh_server

    with ssh_server(work / "sshd") as server:
        account = pwd.getpwnam(SFTP_USER)
        source = server.home / "bench-source.bin"
        with source.open("wb") as handle:
            for _ in range(size // (1024 * 1024)):
                handle.write(os.urandom(1024 * 1024))
        os.chown(source, account.pw_uid, account.pw_gid)
        ssh = [
            "-i",
            str(server.client_key_path),
            "-P",
            str(server.port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            f"{SFTP_USER}@127.0.0.1",
        ]
        openssh_local = work / "openssh.bin"

        def openssh(batch: str) -> None:
            subprocess.run(
                ["sftp", "-q", "-b", "-", *ssh], input=batch, text=True, check=True, stdout=subprocess.DEVNULL
            )

        openssh_down = _timed(lambda: openssh(f"get bench-source.bin {openssh_local}\n"))
        openssh_up = _timed(lambda: openssh(f"put {openssh_local} bench-openssh-up.bin\n"))
        session = _courier_session(
            {
                "protocol": "sftp",
                "host": "127.0.0.1",
                "port": server.port,
                "username": SFTP_USER,
                "host_key_policy": "always_trust",
            },
            SFTP_PASSWORD,
        )
        try:
            courier_down, courier_up = _courier_round_trip(
                session, "bench-source.bin", work / "courier.bin", "bench-courier-up.bin"
            )
        finally:
            session.close()
        for leftover in ("bench-source.bin", "bench-openssh-up.bin", "bench-courier-up.bin"):
            (server.home / leftover).unlink(missing_ok=True)
    report.figures.append(
        Figure(
            "SFTP download",
            _rate(size, courier_down),
            "MiB/s",
            "OpenSSH sftp get",
            _rate(size, openssh_down),
            target_ratio=0.8,
        )
    )
    report.figures.append(
        Figure(
            "SFTP upload",
            _rate(size, courier_up),
            "MiB/s",
            "OpenSSH sftp put",
            _rate(size, openssh_up),
            target_ratio=0.8,
        )
    )


def _ftps_bench(size: int, work: Path, report: Report) -> None:
    from tests.servers import serve_ftp_in_subprocess

    process, server = serve_ftp_in_subprocess(work / "ftps", "explicit")
    try:
        source = server.root / "bench-source.bin"
        with source.open("wb") as handle:
            for _ in range(size // (1024 * 1024)):
                handle.write(os.urandom(1024 * 1024))
        curl_local = work / "curl.bin"
        base = f"ftp://127.0.0.1:{server.port}/"
        curl = ["curl", "-s", "--ssl-reqd", "-k", "--user", f"{server.user}:{server.password}"]
        curl_down = _timed(
            lambda: subprocess.run([*curl, "-o", str(curl_local), base + "bench-source.bin"], check=True)
        )
        curl_up = _timed(lambda: subprocess.run([*curl, "-T", str(curl_local), base + "bench-curl-up.bin"], check=True))
        session = _courier_session(
            {
                "protocol": "ftps",
                "host": "127.0.0.1",
                "port": server.port,
                "username": server.user,
                "tls_cert_policy": "insecure",
            },
            server.password,
        )
        try:
            courier_down, courier_up = _courier_round_trip(
                session, "bench-source.bin", work / "courier-ftps.bin", "bench-courier-up.bin"
            )
        finally:
            session.close()
    finally:
        process.kill()
        process.wait(10)
    report.figures.append(
        Figure("FTPS download", _rate(size, courier_down), "MiB/s", "curl", _rate(size, curl_down), target_ratio=0.8)
    )
    report.figures.append(
        Figure("FTPS upload", _rate(size, courier_up), "MiB/s", "curl", _rate(size, curl_up), target_ratio=0.8)
    )


def run(*, quick: bool = False) -> Report:
    size = (128 if quick else 1024) * 1024 * 1024
    report = Report(f"transfers of {size // 1024 // 1024} MiB over loopback")
    work = Path(tempfile.mkdtemp(prefix="courier-bench-transfer-"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        with scratch_database():
            _sftp_bench(size, work, report)
            if shutil.which("curl"):
                _ftps_bench(size, work, report)
            else:
                report.notes.append("curl not installed: FTPS comparison not run")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report.figures.append(
        Figure(
            "peak RSS of the transferring process",
            peak,
            "MB",
            "RSS before transfers",
            before / 1024,
            target_absolute=150,
            higher_is_better=False,
        )
    )
    report.notes.append("the FTPS server (pyftpdlib) runs in a process of its own, like sshd")
    return report
