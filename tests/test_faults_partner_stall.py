"""Partner servers that go silent, before the greeting or in the middle of a download: the step fails within its
timeout naming the host, and the worker is free again."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import redis
from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler

from tests.celery_support import CeleryCluster, LiveDatabase, wait_for
from tests.servers import FtpServer, SshServer, ftp_server, sftp_folder, ssh_server

pytestmark = pytest.mark.celery

MiB = 1024 * 1024
# A partner that stalls after this much of a download: well past the session set-up.
STALL_AFTER = MiB
PAYLOAD = 8 * MiB
# What an operator allows on top of a configured timeout: scheduling, the failure written.
SLACK_SECONDS = 5.0
# A step ignoring its stop request is abandoned this long after its timeout (jobs/engine/runner.py).
STOP_GRACE_SECONDS = 10.0


class SilentServer:
    """Accepts TCP connections and never sends a byte, like a partner whose daemon hangs after accept()."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.closed_by_client = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(client)
            threading.Thread(target=self._drain, args=(client,), daemon=True).start()

    def _drain(self, client: socket.socket) -> None:
        with suppress(OSError):
            while client.recv(65536):
                pass  # what the client says is read and ignored
            self.closed_by_client += 1

    def close(self) -> None:
        self.listener.close()
        for client in self.held:
            client.close()


class StallingProxy:
    """A TCP proxy that forwards everything, until `stall_after` bytes came from the server: then it stops
    passing the server's bytes on, without closing anything. It notes when the client closes its side."""

    def __init__(self, target_port: int, stall_after: int) -> None:
        self.target_port = target_port
        self.stall_after = stall_after
        self.stalled = threading.Event()
        self.closed_by_client = 0
        self.accepted = 0
        self.sockets: list[socket.socket] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.shutdown = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._client_to_server, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(upstream, client), daemon=True).start()

    def _client_to_server(self, client: socket.socket, upstream: socket.socket) -> None:
        with suppress(OSError):
            while data := client.recv(65536):
                upstream.sendall(data)
            self.closed_by_client += 1

    def _server_to_client(self, upstream: socket.socket, client: socket.socket) -> None:
        sent = 0
        with suppress(OSError):
            while sent < self.stall_after:
                data = upstream.recv(min(65536, self.stall_after - sent))
                if not data:
                    return
                client.sendall(data)
                sent += len(data)
            self.stalled.set()
            self.shutdown.wait()  # silent from here on, both connections left open

    def close(self) -> None:
        self.shutdown.set()
        self.listener.close()
        for end in self.sockets:
            end.close()


def stalling_data_handler(stall_after: int) -> type:
    """pyftpdlib data connections that stop sending after stall_after bytes and stay open, noting their close."""

    class StallingDTP(TLS_DTPHandler):
        closed = threading.Event()

        def use_sendfile(self) -> bool:
            return False  # every byte goes through initiate_send, where the stall happens

        def initiate_send(self) -> None:
            if self.tot_bytes_sent >= stall_after:
                # Stop asking the loop to write; keep reading, so the client's close is seen.
                self.modify_ioloop_events(self.ioloop.READ)
                return
            super().initiate_send()

        def close(self) -> None:
            type(self).closed.set()
            super().close()

    return StallingDTP


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    with ssh_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def cluster(
    live: LiveDatabase, django_db_blocker: Any, redis_url: str, tmp_path: Path, settings: Any
) -> Iterator[CeleryCluster]:
    redis.Redis.from_url(redis_url).flushdb()
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    live.execute("UPDATE system_settings SET value = '5' WHERE key = 'job.concurrency_limit'")
    group = CeleryCluster(live, redis_url, tmp_path / "data", tmp_path)
    with django_db_blocker.unblock():
        try:
            # One slot: the run after a stall shows the slot was given back.
            group.start_worker("w1", concurrency=1)
            yield group
        finally:
            group.stop_all()
            live.execute("UPDATE job_executions SET state = 'cancelled' WHERE state IN ('queued', 'running', 'paused')")
            live.execute("UPDATE process_heartbeats SET stopped_at = now() WHERE stopped_at IS NULL")


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def stalling_ftps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FtpServer, type]]:
    """An FTPS server whose downloads stall after STALL_AFTER bytes."""
    handler = stalling_data_handler(STALL_AFTER)
    # tests.servers builds its handler class on TLS_FTPHandler, which names the data handler.
    monkeypatch.setattr(TLS_FTPHandler, "dtp_handler", handler)
    with ftp_server(tmp_path / "ftps", tls="explicit") as server:
        (server.root / "outbox").mkdir()
        (server.root / "outbox" / "statement.bin").write_bytes(os.urandom(PAYLOAD))
        yield server, handler


@pytest.fixture
def sftp_outbox(sshd: SshServer) -> Iterator[Path]:
    folder = sftp_folder(sshd, f"outbox-{uuid.uuid4().hex[:6]}", {"statement.bin": os.urandom(PAYLOAD)})
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def partner(protocol: str, port: int, *, connect: int, operation: int, ftps: FtpServer | None = None) -> Any:
    """A connection to 127.0.0.1:port with the given connect and operation timeouts and no reconnects."""
    from connections.models import Connection
    from tests.servers import SFTP_PASSWORD, SFTP_USER

    connection = Connection(
        name=f"partner-{uuid.uuid4().hex[:6]}",
        protocol=protocol,
        host="127.0.0.1",
        port=port,
        auth_method="password",
        username=ftps.user if ftps else SFTP_USER,
        connect_timeout_sec=connect,
        operation_timeout_sec=operation,
        transport_retries=0,  # one try: the bound below is one timeout, not one per reconnect
    )
    if protocol == "ftps":
        connection.tls_cert_policy = "pinned_thumbprint"
        connection.tls_pinned_thumbprint = hashlib.sha256(ftps.certificate_der if ftps else b"").hexdigest()
    connection.set_password(ftps.password if ftps else SFTP_PASSWORD)
    connection.save()
    return connection


def run(live: LiveDatabase, steps: list[tuple[str, dict[str, Any]]], step_timeout: int = 60) -> dict[str, Any]:
    """Queue a job of steps and wait until it ended; its execution and its step row (duration included)."""
    from jobs.engine import control
    from tests.engine_support import make_job

    execution = control.enqueue(make_job(steps, timeout=step_timeout), triggered_by="manual:tester")
    wait_for(
        lambda: (
            live.scalar("SELECT state FROM job_executions WHERE id = %s", (execution.pk,))
            in ("completed", "failed", "cancelled")
        ),
        step_timeout + STOP_GRACE_SECONDS + 60,
        f"execution {execution.pk} to end",
    )
    return live.scalar(
        "SELECT json_build_object('id', e.id, 'state', e.state, 'error', e.error_message, 'worker', e.worker_name, "
        "'step_state', s.state, 'step_error', s.error_message, 'seconds', s.duration_ms / 1000.0) "
        "FROM job_executions e JOIN step_executions s ON s.job_execution_id = e.id WHERE e.id = %s",
        (execution.pk,),
    )


def assert_worker_free(live: LiveDatabase, failed: dict[str, Any]) -> None:
    """The one slot of the worker that gave up on the partner runs the next job at once."""
    started = time.monotonic()
    after = run(live, [("test.write", {"name": "after.txt", "text": "free again"})])
    assert after["state"] == "completed", after
    assert after["worker"] == failed["worker"]
    assert time.monotonic() - started < 10


def assert_failed_in_time(outcome: dict[str, Any], code: str, timeout: float, *phrases: str) -> None:
    assert outcome["state"] == "failed", outcome
    assert outcome["step_state"] == "failed", outcome
    assert outcome["step_error"].startswith(f"[{code}]") or f"] [{code}]" in outcome["step_error"], outcome
    for phrase in phrases:
        assert phrase in outcome["step_error"], (phrase, outcome["step_error"])
    assert outcome["step_error"] in outcome["error"]
    # Not before the limit (it was honoured, not some other failure), and not long after it.
    assert timeout * 0.9 <= outcome["seconds"] <= timeout + SLACK_SECONDS, outcome


@pytest.mark.parametrize("protocol", ["sftp", "ftps"])
def test_a_server_that_accepts_and_never_greets_fails_with_e3000_within_the_connect_timeout(
    cluster: CeleryCluster, silent: SilentServer, protocol: str
) -> None:
    connection = partner(protocol, silent.port, connect=3, operation=60)

    outcome = run(cluster.database, [(f"{protocol}.list", {"connection_id": str(connection.pk), "remote_path": "."})])

    assert_failed_in_time(outcome, "E3000", 3, f"127.0.0.1:{silent.port}", "within 3 s (connect timeout)")
    wait_for(lambda: silent.closed_by_client == silent.accepted == 1, 5, "the worker to hang up on the partner")
    assert_worker_free(cluster.database, outcome)


def test_an_sftp_download_that_stalls_midway_fails_with_e3000_within_the_operation_timeout(
    cluster: CeleryCluster, sshd: SshServer, sftp_outbox: Path
) -> None:
    proxy = StallingProxy(sshd.port, STALL_AFTER)
    try:
        connection = partner("sftp", proxy.port, connect=10, operation=3)
        download = {"connection_id": str(connection.pk), "remote_path": sftp_outbox.name}

        outcome = run(cluster.database, [("sftp.download", download)])

        assert proxy.stalled.is_set()
        assert_failed_in_time(
            outcome, "E3000", 3, f"127.0.0.1:{proxy.port}", "sent nothing for 3 s (operation timeout)"
        )
        wait_for(lambda: proxy.closed_by_client == proxy.accepted == 1, 5, "the worker to hang up on the partner")
    finally:
        proxy.close()
    assert_worker_free(cluster.database, outcome)


def test_an_ftps_download_that_stalls_midway_fails_with_e3000_within_the_operation_timeout(
    cluster: CeleryCluster, stalling_ftps: tuple[FtpServer, type]
) -> None:
    server, data_handler = stalling_ftps
    connection = partner("ftps", server.port, connect=10, operation=3, ftps=server)

    outcome = run(cluster.database, [("ftps.download", {"connection_id": str(connection.pk), "remote_path": "outbox"})])

    assert_failed_in_time(outcome, "E3000", 3, f"127.0.0.1:{server.port}", "sent nothing for 3 s (operation timeout)")
    assert data_handler.closed.wait(5), "the worker left the stalled data connection open"
    assert_worker_free(cluster.database, outcome)


def test_a_stalled_sftp_download_past_the_step_timeout_fails_with_e2030_and_the_worker_hangs_up(
    cluster: CeleryCluster, sshd: SshServer, sftp_outbox: Path
) -> None:
    proxy = StallingProxy(sshd.port, STALL_AFTER)
    try:
        # The server would get two minutes per answer; the step has three seconds in all.
        connection = partner("sftp", proxy.port, connect=10, operation=120)
        download = {"connection_id": str(connection.pk), "remote_path": sftp_outbox.name}

        outcome = run(cluster.database, [("sftp.download", download)], step_timeout=3)

        assert_failed_in_time(outcome, "E2030", 3 + STOP_GRACE_SECONDS, "timed out after 3 s")
        # The step thread blocked on the silent server does not live on for the operation timeout.
        wait_for(lambda: proxy.closed_by_client == proxy.accepted == 1, 5, "the worker to hang up on the partner")
    finally:
        proxy.close()
    assert_worker_free(cluster.database, outcome)


def test_a_stalled_ftps_download_past_the_step_timeout_fails_with_e2030_and_the_worker_hangs_up(
    cluster: CeleryCluster, stalling_ftps: tuple[FtpServer, type]
) -> None:
    server, data_handler = stalling_ftps
    connection = partner("ftps", server.port, connect=10, operation=120, ftps=server)

    outcome = run(
        cluster.database,
        [("ftps.download", {"connection_id": str(connection.pk), "remote_path": "outbox"})],
        step_timeout=3,
    )

    assert_failed_in_time(outcome, "E2030", 3 + STOP_GRACE_SECONDS, "timed out after 3 s")
    assert data_handler.closed.wait(5), "the worker left the stalled data connection open"
    assert_worker_free(cluster.database, outcome)
