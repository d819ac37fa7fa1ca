"""SFTP download over a high-latency link (50 ms each way) against OpenSSH sftp through the same link.

The link is a TCP proxy on loopback, in a process of its own, that holds every block it
reads for 50 ms before passing it on, in both directions: a 100 ms round trip with no
bandwidth limit of its own, so what a client gets is what it keeps in flight. Both sides
are timed from the TCP connect to the end of the file, log-in included (each pays the same
handshake round trips). Target: Courier at least 0.8x OpenSSH's sftp on 256 MiB
(COURIER_BENCH_LATENCY_MIB; 64 with --quick), in one stream and in segments over several
connections (COURIER_BENCH_TRANSFER_SEGMENTS, default 3), each logging in through the link.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.bench_transfers import (
    DOWNLOAD_TARGET,
    Timing,
    courier_session,
    measure,
    openssh_sftp,
    segments,
    sftp_connection_fields,
    sftp_source,
)
from bench.support import Figure, Report, scratch_database

ONE_WAY_DELAY_SECONDS = 0.05
_BLOCK = 256 * 1024


class _DelayedDirection:
    """Copies source to target, each block leaving `delay` seconds after it arrived, in order."""

    def __init__(self, source: socket.socket, target: socket.socket, delay: float) -> None:
        self.source, self.target, self.delay = source, target, delay
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.ready = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.source.recv(_BLOCK)
            except OSError:
                data = b""
            with self.ready:
                self.queue.append((time.monotonic() + self.delay, data))
                self.ready.notify()
            if not data:
                return

    def _write(self) -> None:
        while True:
            with self.ready:
                while not self.queue:
                    self.ready.wait()
                due, data = self.queue.popleft()
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            try:
                if not data:
                    self.target.shutdown(socket.SHUT_WR)
                    return
                self.target.sendall(data)
            except OSError:
                return


def serve_delayed_link(target_port: int, delay: float, announce: Any) -> None:
    """Accept on a free loopback port (sent through announce) and relay every connection to target_port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    announce.send(listener.getsockname()[1])
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", target_port))
        for end in (client, upstream):
            end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _DelayedDirection(client, upstream, delay)
        _DelayedDirection(upstream, client, delay)


class DelayedLink:
    """The proxy process; `port` is where clients connect instead of target_port."""

    def __init__(self, target_port: int, delay: float = ONE_WAY_DELAY_SECONDS) -> None:
        context = multiprocessing.get_context("spawn")
        receiving, sending = context.Pipe(duplex=False)
        self.process = context.Process(target=serve_delayed_link, args=(target_port, delay, sending), daemon=True)
        self.process.start()
        if not receiving.poll(30):
            self.close()
            raise RuntimeError("the delaying proxy did not start")
        self.port: int = receiving.recv()

    def close(self) -> None:
        self.process.terminate()
        self.process.join(10)


def round_trip_seconds(port: int) -> float:
    """One request and its answer through the link: the SSH greeting the server sends on connect."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as probe:
        probe.recv(256)
    return time.perf_counter() - started


def _courier_download(fields: dict[str, Any], password: str, local: Path) -> None:
    session = courier_session(fields, password)
    try:
        with local.open("wb") as target:
            session.download("bench-latency.bin", target, 0, lambda count: None)
    finally:
        session.close()


def run(*, quick: bool = False) -> Report:
    from tests.servers import SFTP_PASSWORD, ssh_server

    size = int(os.environ.get("COURIER_BENCH_LATENCY_MIB") or (64 if quick else 256)) * 1024 * 1024
    delay_ms = ONE_WAY_DELAY_SECONDS * 1000
    report = Report(f"SFTP download of {size // 1024 // 1024} MiB through a link adding {delay_ms:g} ms each way")
    work = Path(tempfile.mkdtemp(prefix="courier-bench-latency-"))
    openssh, courier, segmented = Timing(), Timing(), Timing()
    count = segments(size)
    try:
        with scratch_database(), ssh_server(work / "sshd") as server:
            sftp_source(server, "bench-latency.bin", size)
            link = DelayedLink(server.port)
            try:
                report.notes.append(f"connect to greeting through the link: {round_trip_seconds(link.port):.3f} s")
                get = f"get bench-latency.bin {work / 'openssh.bin'}\n"
                measure(openssh, lambda: openssh_sftp(server, link.port, get), children=True)
                fields = sftp_connection_fields(link.port)
                measure(courier, lambda: _courier_download(fields, SFTP_PASSWORD, work / "courier.bin"), children=False)
                if (work / "courier.bin").stat().st_size != size:
                    raise RuntimeError("Courier's download through the link did not move the whole file")
                if count > 1:
                    fields = {**fields, "transfer_segments": count}
                    measure(
                        segmented,
                        lambda: _courier_download(fields, SFTP_PASSWORD, work / "courier.bin"),
                        children=False,
                        fresh=work / "courier.bin",
                    )
            finally:
                link.close()
            if (work / "courier.bin").stat().st_size != size:
                raise RuntimeError("Courier's download through the link did not move the whole file")
            (server.home / "bench-latency.bin").unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    measured = [("SFTP download", courier)] + ([(f"SFTP download in {count} segments", segmented)] if count > 1 else [])
    for label, timing in measured:
        report.figures.append(
            Figure(
                f"{label}, 100 ms round trip",
                size / timing.seconds / 1024 / 1024,
                "MiB/s",
                "OpenSSH sftp get through the same link",
                size / openssh.seconds / 1024 / 1024,
                target_ratio=DOWNLOAD_TARGET,
            )
        )
    if count == 1:
        report.notes.append("the file is under two segments' worth: no segmented download measured")
    in_segments = f", in {count} segments {segmented.seconds:.1f} (all logins)" if count > 1 else ""
    report.notes.append(
        f"seconds, log-in included: Courier {courier.seconds:.1f}{in_segments}, OpenSSH sftp {openssh.seconds:.1f}"
    )
    return report
