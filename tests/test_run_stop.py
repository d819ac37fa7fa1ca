"""`make run` / `bin/courier run` stop every process they started, application first, on SIGTERM, SIGINT or SIGHUP."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.celery_support import ROOT
from tests.fault_support import free_port

# Started once per test from an already migrated data folder; the first start also runs initdb
# and every SQL script, hence the generous bound.
READY_TIMEOUT = 240
STOP_BOUND = 20

# The variables `bin/courier test` exports for the suite: the embedded run must provision its own.
_SUITE_VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "SECRET_KEY",
    "COURIER_MASTER_KEY",
    "COURIER_DATA_DIR",
    "PYTHONWARNINGS",
)


@pytest.fixture(scope="module")
def local_dir() -> Iterator[Path]:
    # PostgreSQL runs as the `postgres` account when tests run as root: the folder must be
    # reachable by it, which pytest's private tmp folders are not.
    base = Path(tempfile.mkdtemp(prefix="courier-run-stop-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        yield base / "data"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class EmbeddedRun:
    process: subprocess.Popen
    web: str
    local_dir: Path
    output: Path
    env: dict[str, str]
    # Everything under the launcher once it was healthy: reparented when the launcher dies, so
    # the clean-up cannot find them from its pid any more.
    started: set[int] = field(default_factory=set)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def log(self) -> str:
        """The end of the run's output, for failure messages."""
        return self.text()[-4000:]


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every live process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _descendants(root: int) -> set[int]:
    table = _process_table()
    found, frontier = set(), {root}
    while frontier:
        children = {pid for pid, (parent, _state) in table.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def _alive(pid: int, table: dict[int, tuple[int, str]]) -> bool:
    state = table.get(pid)
    # A zombie has exited; only its reaping is left to whoever is its parent now.
    return state is not None and state[1] != "Z"


def _is_launcher(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return argv[0].endswith(b"make") or any(part.endswith(b"bin/courier") for part in argv[:2])


def _pid_file(path: Path) -> int:
    return int(path.read_text().split()[0])


def _healthy(web: str) -> bool:
    host, port = web.split(":")
    try:
        connection = http.client.HTTPConnection(host, int(port), timeout=2)
        connection.request("GET", "/health/")
        return connection.getresponse().status == 200
    except OSError:
        return False


def _start(command: list[str], local_dir: Path, tmp_path: Path) -> EmbeddedRun:
    web = f"127.0.0.1:{free_port()}"
    env = {key: value for key, value in os.environ.items() if key not in _SUITE_VARIABLES}
    env.update(
        COURIER_LOCAL_DIR=str(local_dir),
        COURIER_PG_PORT=str(free_port()),
        COURIER_REDIS_PORT=str(free_port()),
        COURIER_WEB_BIND=web,
        COURIER_WEB_WORKERS="1",
        COURIER_WORKER_CONCURRENCY="1",
    )
    output = tmp_path / "run.log"
    with output.open("wb") as sink:
        # A session of its own stands in for the terminal: SIGINT goes to its whole group,
        # as Ctrl-C would send it.
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    run = EmbeddedRun(process, web, local_dir, output, env)
    deadline = time.monotonic() + READY_TIMEOUT
    while not _healthy(web):
        if process.poll() is not None or time.monotonic() > deadline:
            _kill_everything(run)
            pytest.fail(f"{' '.join(command)} did not become healthy:\n{run.log()}")
        time.sleep(0.5)
    run.started = _descendants(process.pid)
    return run


def _kill_everything(run: EmbeddedRun) -> None:
    """Last-resort clean-up by PID, whatever the stop under test left behind."""
    for pid in run.started | _descendants(run.process.pid) | {run.process.pid}:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    run.process.wait(timeout=10)
    for pid_file, program in (
        (run.local_dir / "postgres" / "postmaster.pid", b"postgres"),
        (run.local_dir / "redis" / "redis.pid", b"redis-server"),
    ):
        try:
            pid = _pid_file(pid_file)
            # A pid file left by a server that stopped may name a recycled pid: check first.
            if program in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.mark.parametrize(
    ("command", "how"),
    [
        (["bin/courier", "run"], "SIGTERM to the script"),
        (["make", "run"], "SIGTERM to make"),
        (["make", "run"], "SIGINT to the terminal's process group"),
        (["bin/courier", "run"], "SIGHUP to the script"),
    ],
)
def test_the_embedded_run_stops_the_application_before_postgres_and_redis_within_20_s(
    command: list[str], how: str, local_dir: Path, tmp_path: Path
) -> None:
    run = _start(command, local_dir, tmp_path)
    try:
        # Everything under the launcher except the launcher scripts themselves (make, bin/courier),
        # which by design outlive the application to stop PostgreSQL and Redis after it.
        application = {pid for pid in _descendants(run.process.pid) if not _is_launcher(pid)}
        postgres = _pid_file(local_dir / "postgres" / "postmaster.pid")
        redis_server = _pid_file(local_dir / "redis" / "redis.pid")
        assert len(application) >= 8, f"expected web, workers, beat and watcher under the run, found {application}"

        started = time.monotonic()
        if how.startswith("SIGINT"):
            os.killpg(run.process.pid, signal.SIGINT)
        else:
            run.process.send_signal(signal.SIGTERM if how.startswith("SIGTERM") else signal.SIGHUP)

        gone_at: dict[int, float] = {}
        watched = application | {postgres, redis_server, run.process.pid}
        while time.monotonic() - started < STOP_BOUND + 5 and len(gone_at) < len(watched):
            table, now = _process_table(), time.monotonic() - started
            for pid in watched - gone_at.keys():
                if not _alive(pid, table):
                    gone_at[pid] = now
            time.sleep(0.05)

        left = sorted(watched - gone_at.keys())
        assert not left, f"still running {STOP_BOUND + 5} s after {how}: {left}\n{run.log()}"
        assert max(gone_at.values()) <= STOP_BOUND, f"stopping took {max(gone_at.values()):.1f} s"
        last_application = max(gone_at[pid] for pid in application)
        assert last_application <= min(gone_at[postgres], gone_at[redis_server]), (
            f"PostgreSQL or Redis stopped before the application was gone\n{run.log()}"
        )
        assert run.process.wait(timeout=5) is not None
    finally:
        _kill_everything(run)


def test_a_sigkilled_launcher_still_stops_the_application_within_20_s(local_dir: Path, tmp_path: Path) -> None:
    run = _start(["bin/courier", "run"], local_dir, tmp_path)
    try:
        application = {pid for pid in _descendants(run.process.pid) if not _is_launcher(pid)}
        assert len(application) >= 8, f"expected web, workers, beat and watcher under the run, found {application}"

        # No trap runs on SIGKILL: PostgreSQL and Redis stay up for the next start to take over,
        # but nothing of the application may go on running without its launcher.
        run.process.kill()
        started = time.monotonic()
        left = application
        while left and time.monotonic() - started < STOP_BOUND:
            table = _process_table()
            left = {pid for pid in left if _alive(pid, table)}
            time.sleep(0.1)

        assert not left, f"still running {STOP_BOUND} s after the launcher was killed: {sorted(left)}\n{run.log()}"
    finally:
        # As an operator would after such a kill: stop the left-running PostgreSQL and Redis cleanly,
        # so that the next start on the same data folder finds them down.
        subprocess.run(["bin/courier", "stop"], cwd=ROOT, env=run.env, capture_output=True, timeout=60, check=False)
        _kill_everything(run)


def test_the_embedded_run_as_root_keeps_celerys_superuser_warning_off_the_terminal(
    local_dir: Path, tmp_path: Path
) -> None:
    if os.getuid() != 0:
        pytest.skip("Celery warns only when its workers run as root")
    run = _start(["bin/courier", "run"], local_dir, tmp_path)
    try:
        # The workers are up (health needs their heartbeat); their banners are on the log by now.
        # The whole output: the banners are printed at start, health checks may follow by the kilobyte.
        assert "[queues]" in run.text(), run.log()
        assert "superuser privileges" not in run.text()
        run.process.send_signal(signal.SIGTERM)
        run.process.wait(timeout=STOP_BOUND + 5)
    finally:
        _kill_everything(run)
