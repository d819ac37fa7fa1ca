"""Partner servers that stall, silent after accept or mid-download: the step fails in time, the worker goes on."""

from __future__ import annotations

import random
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import redis

from connections.models import Connection
from jobs.engine import control
from tests.celery_support import CeleryCluster, LiveDatabase, WorkerProcess, live_database, wait_for
from tests.engine_support import make_job
from tests.servers import FtpServer, SshServer, ftp_server, sftp_connection, sftp_folder, ssh_server

pytestmark = pytest.mark.celery

MB = 1024 * 1024
TIMEOUT = 3  # the connections' connect and operation timeouts in these tests
BOUND = TIMEOUT + 12  # what an operator may expect: the timeout, plus queueing and a worker's poll
STOP = {"type": "stop", "max_retries": 0, "backoff_base_seconds": 0, "backoff_max_seconds": 0}


class SilentServer:
    """Accepts TCP connections and never sends a byte, like a partner whose daemon hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(client)

    def close(self) -> None:
        self.listener.close()
        for client in self.accepted:
            with suppress(OSError):
                client.close()


class StallingProxy:
    """Forwards to the partner, then stops forwarding without closing: after `stall_after` bytes from
    the server on a connection, or on every connection once stall() is called."""

    def __init__(self, target_port: int, stall_after: int | None = None) -> None:
        self.target_port = target_port
        self.stall_after = stall_after
        self.stalled = threading.Event()
        self.sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self.stalled.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.stall_after), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, limit: int | None) -> None:
        sent = 0
        with suppress(OSError):
            while not self.stalled.is_set():
                data = source.recv(64 * 1024)
                if not data or self.stalled.is_set():
                    break
                target.sendall(data)
                sent += len(data)
                if limit is not None and sent >= limit:
                    break
        # Stalled: keep both ends open and quiet until the test closes the proxy.

    def close(self) -> None:
        self.stalled.set()
        self.listener.close()
        for end in self.sockets:
            with suppress(OSError):
                end.close()


@pytest.fixture(scope="module")
def live(django_db_setup: Any, django_db_blocker: Any) -> Iterator[LiveDatabase]:
    with django_db_blocker.unblock(), live_database() as database:
        yield database


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    with ssh_server(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def ftps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    with ftp_server(tmp_path_factory.mktemp("ftps"), tls="explicit") as server:
        yield server


@pytest.fixture(scope="module")
def worker(
    live: LiveDatabase, django_db_blocker: Any, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One worker with a single slot: a step left blocked would keep the next job from running at all."""
    redis.Redis.from_url(redis_url).flushdb()
    folder = tmp_path_factory.mktemp("stall-worker")
    cluster = CeleryCluster(live, redis_url, folder / "data", folder)
    with django_db_blocker.unblock():
        try:
            yield cluster.start_worker("stall", concurrency=1)
        finally:
            cluster.stop_all()
            live.execute("UPDATE job_executions SET state = 'cancelled' WHERE state IN ('queued', 'running', 'paused')")
            live.execute("UPDATE process_heartbeats SET stopped_at = now() WHERE stopped_at IS NULL")


@pytest.fixture
def run(live: LiveDatabase, worker: WorkerProcess) -> Callable[..., dict[str, Any]]:
    """Run a job on the worker until it ends; its outcome, step errors and how long it took."""

    def run_job(steps: list[tuple[str, dict[str, Any]]], timeout: int = 60) -> dict[str, Any]:
        job = make_job(steps, policy=STOP, timeout=timeout)
        started = time.monotonic()
        execution = control.enqueue(job, triggered_by="manual:tester", requested_by="tester")
        wait_for(
            lambda: (
                live.scalar("SELECT state FROM job_executions WHERE id = %s", (execution.pk,))
                in ("completed", "failed", "cancelled")
            ),
            BOUND + 30,
            f"execution {execution.pk} to end",
            interval=0.1,
        )
        result = live.scalar(
            "SELECT json_build_object('state', e.state, 'error', e.error_message, "
            "'steps', (SELECT json_agg(s.error_message ORDER BY s.started_at) "
            "FROM step_executions s WHERE s.job_execution_id = e.id)) FROM job_executions e WHERE e.id = %s",
            (execution.pk,),
        )
        return {**result, "seconds": time.monotonic() - started}

    return run_job


# ---------------------------------------------------------------------- helpers
def ftps_connection(server: FtpServer, port: int) -> Connection:
    connection = Connection(
        name=f"ftps-{uuid.uuid4().hex[:6]}",
        protocol="ftps",
        host="127.0.0.1",
        port=port,
        auth_method="password",
        username=server.user,
        tls_cert_policy="insecure",
        connect_timeout_sec=TIMEOUT,
        operation_timeout_sec=TIMEOUT,
        transport_retries=0,
    )
    connection.set_password(server.password)
    connection.save()
    return connection


def download(protocol: str, connection: Connection, remote: str = ".") -> tuple[str, dict[str, Any]]:
    return (f"{protocol}.download", {"connection_id": str(connection.pk), "remote_path": remote})


def assert_timed_out(result: dict[str, Any], port: int, what: str) -> None:
    """Failed in time with [E3000], naming the partner and the timeout it exceeded."""
    assert result["state"] == "failed", result
    assert result["seconds"] <= BOUND, result
    error = result["error"]
    assert "[E3000]" in error, result
    assert f"127.0.0.1:{port}" in error, error
    assert f"{what} of {TIMEOUT} s" in error, error


def assert_worker_free(run: Callable[..., dict[str, Any]], worker: WorkerProcess) -> None:
    assert worker.process.poll() is None, worker.output()[-3000:]
    after = run([("test.write", {"name": "after.txt", "text": "next job"})])
    assert after["state"] == "completed", after
    assert after["seconds"] < 15, after  # served at once: no blocked thread holds the only slot


# ---------------------------------------------------------------------- the tests
@pytest.mark.parametrize("protocol", ["sftp", "ftps"])
def test_a_server_that_accepts_and_says_nothing_fails_within_the_connect_timeout(
    run: Callable[..., dict[str, Any]], worker: WorkerProcess, sshd: SshServer, ftps: FtpServer, protocol: str
) -> None:
    silent = SilentServer()
    try:
        if protocol == "sftp":
            connection = sftp_connection(
                sshd, port=silent.port, connect_timeout_sec=TIMEOUT, operation_timeout_sec=TIMEOUT
            )
        else:
            connection = ftps_connection(ftps, silent.port)
        result = run([download(protocol, connection)])
        assert_timed_out(result, silent.port, "connect timeout")
        assert silent.accepted  # it did get as far as the partner
    finally:
        silent.close()
    assert_worker_free(run, worker)


def test_an_sftp_download_the_partner_stops_sending_midway_fails_within_the_operation_timeout(
    run: Callable[..., dict[str, Any]], worker: WorkerProcess, sshd: SshServer
) -> None:
    remote = sftp_folder(sshd, f"stall-{uuid.uuid4().hex[:8]}", {"big.bin": random.Random(5).randbytes(16 * MB)})
    proxy = StallingProxy(sshd.port, stall_after=2 * MB)
    try:
        connection = sftp_connection(
            sshd, port=proxy.port, connect_timeout_sec=TIMEOUT, operation_timeout_sec=TIMEOUT, transport_retries=0
        )
        result = run([download("sftp", connection, remote.name)])
        assert_timed_out(result, proxy.port, "operation timeout")
    finally:
        proxy.close()
        shutil.rmtree(remote, ignore_errors=True)
    assert_worker_free(run, worker)


def test_an_ftps_download_whose_control_connection_goes_silent_fails_within_the_operation_timeout(
    run: Callable[..., dict[str, Any]], worker: WorkerProcess, ftps: FtpServer
) -> None:
    folder: Path = ftps.root / f"stall-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / "big.bin").write_bytes(random.Random(6).randbytes(4 * MB))
    proxy = StallingProxy(ftps.port)
    # The data connection goes straight to the server's passive port; the control connection,
    # through the proxy, goes silent as soon as the download is asked for.
    watching = threading.Event()
    seen = len(ftps.commands)

    def stall_on_retr() -> None:
        while not watching.is_set():
            if any(command.startswith("RETR") for command in ftps.commands[seen:]):
                proxy.stall()
                return
            time.sleep(0.005)

    threading.Thread(target=stall_on_retr, daemon=True).start()
    try:
        connection = ftps_connection(ftps, proxy.port)
        result = run([download("ftps", connection, folder.name)])
        assert_timed_out(result, proxy.port, "operation timeout")
    finally:
        watching.set()
        proxy.close()
        shutil.rmtree(folder, ignore_errors=True)
    assert_worker_free(run, worker)
