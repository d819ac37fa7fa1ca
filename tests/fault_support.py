"""Fault-test helpers: a private PostgreSQL and Redis to restart at will, a web process, a counting step, two beats."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

from jobs.steps.base import ConfigField, StepResult, StepType, register
from tests.celery_support import ROOT, CeleryCluster, LiveDatabase, WorkerProcess, wait_for
from tests.child_processes import tied_to_test_run


def seconds_until(condition: Callable[[], Any], timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until condition held, or None when it did not within timeout (for the test to judge)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(interval)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- PostgreSQL


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql")
    return found[-1].parent


class PrivatePostgres:
    """A PostgreSQL cluster of one test's own, on a free port, started the way `bin/courier` starts it.

    PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` account,
    in a folder that account can reach (tmp_path when it can, otherwise one under /var/tmp).
    """

    def __init__(self, base: Path) -> None:
        self.bin = _postgres_bin()
        self.port = free_port()
        self.owner = "postgres" if os.getuid() == 0 else None
        self._own_folder: Path | None = None
        folder = base / "postgres"
        folder.mkdir(parents=True, exist_ok=True)
        if self.owner and not self._reachable(folder):
            self._own_folder = Path(tempfile.mkdtemp(prefix="courier-fault-pg-", dir="/var/tmp"))
            folder = self._own_folder
        self.data_dir = folder / "data"
        self.log_path = folder / "server.log"
        if self.owner:
            shutil.chown(folder, self.owner)

    def _reachable(self, folder: Path) -> bool:
        """Whether the owner can get to folder through every parent (it is given folder itself)."""
        return subprocess.run(["runuser", "-u", self.owner or "", "--", "test", "-x", str(folder)]).returncode == 0

    def _run(self, *command: str, timeout: float = 90) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.owner, "--"] if self.owner else []
        return subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=timeout)

    def initialise(self) -> None:
        result = self._run(
            str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", "courier", "-A", "trust", "-E", "UTF8",
            "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c timezone=UTC -c max_connections=200"
            # A test cluster needs no durability across a crash of the machine.
            " -c fsync=off -c synchronous_commit=off"
        )
        result = self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", "60",
            "start", "-o", options,
        )  # fmt: skip
        assert result.returncode == 0, f"{result.stderr}\n{self.server_log()[-3000:]}"

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl -m fast stop`: every session is cut off, as in a restart by an operator or a failover."""
        result = self._run(str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")
        assert result.returncode == 0, result.stderr

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def destroy(self) -> None:
        """Stop the server by its PID whatever state the test left it in, and remove its files."""
        pid = self.postmaster_pid()
        if pid is not None:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown: the postmaster ends its backends
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._own_folder is not None:
            shutil.rmtree(self._own_folder, ignore_errors=True)

    def server_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def create_database(self, name: str = "courier") -> LiveDatabase:
        conninfo = f"host=127.0.0.1 port={self.port} user=courier dbname={name}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=courier dbname=postgres", autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return LiveDatabase(name, f"postgresql://courier@127.0.0.1:{self.port}/{name}", conninfo)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def migrate(database: LiveDatabase) -> None:
    """Courier's own `manage.py migrate`, in a process of its own, against database."""
    env = {**os.environ, "DATABASE_URL": database.url, "DJANGO_SETTINGS_MODULE": "courier_site.settings"}
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "--verbosity", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@contextmanager
def django_connected_to(database: LiveDatabase) -> Iterator[None]:
    """Point this process's default Django connection at database (another server too) for a while."""
    # Django's settings and connections are read once it is set up, not when this module loads.
    from django.conf import settings
    from django.db import connection

    info = psycopg.conninfo.conninfo_to_dict(database.conninfo)
    wanted = {
        "NAME": info["dbname"],
        "HOST": info.get("host", ""),
        "PORT": str(info.get("port", "")),
        "USER": info.get("user", ""),
        "PASSWORD": info.get("password", ""),
    }
    saved = {key: settings.DATABASES["default"].get(key) for key in wanted}
    connection.close()
    settings.DATABASES["default"].update(wanted)
    connection.settings_dict.update(wanted)
    try:
        yield
    finally:
        connection.close()
        settings.DATABASES["default"].update(saved)
        connection.settings_dict.update(saved)


# ---------------------------------------------------------------- Redis


class RedisServer:
    """A private redis-server without persistence: a restart loses every message, as a crash would."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            tied_to_test_run(
                [
                    shutil.which("redis-server") or "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, "redis-server to answer")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url).ping())
        except redis.ConnectionError:
            return False


def point_app_at(app: Any, url: str) -> None:
    """Make this process's Celery app publish to another broker (its pools are rebuilt on next use)."""
    app.conf.broker_url = url
    app._pool = None
    app.amqp._producer_pool = None


# ---------------------------------------------------------------- web


def start_web(cluster: CeleryCluster, name: str = "web") -> tuple[WorkerProcess, str]:
    """gunicorn serving courier_site.wsgi on a free port, as the Procfile runs it; returns it and its base URL."""
    port = free_port()
    web = cluster.spawn(
        name,
        [
            sys.executable, "-m", "gunicorn", "courier_site.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1",
            "--timeout", "30", "--graceful-timeout", "5",
        ],
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: web.process.poll() is not None or http_status(f"{base}/health/"), 30, "gunicorn to answer")
    assert web.process.poll() is None, web.output()[-3000:]
    return web, base


def http_status(url: str, timeout: float = 5) -> int | None:
    """The HTTP status of a GET on a local http:// URL, or None when nothing answers."""
    address, _, path = url.removeprefix("http://").partition("/")
    host, _, port = address.partition(":")
    client = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        client.request("GET", f"/{path}")
        return client.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        client.close()


# ---------------------------------------------------------------- a step that counts its runs


@register
class CountRunsStep(StepType):
    """Appends the execution id to a file, then sleeps: the file shows how often each execution ran."""

    type_key = "test.count_runs"
    fields = (ConfigField("path", "string", required=True), ConfigField("seconds", "number", default=0))
    outputs = ("runs",)

    def execute(self, config: dict[str, Any], context: Any, cancel: Any) -> StepResult:
        with open(config["path"], "a") as log:
            log.write(f"{context.execution_id}\n")
        deadline = time.monotonic() + float(config["seconds"])
        while time.monotonic() < deadline:
            cancel.check()
            time.sleep(0.02)
        return StepResult(outputs={"runs": 1})


def runs_counted(path: Path) -> dict[str, int]:
    """Execution id -> how many times test.count_runs ran for it."""
    counts: dict[str, int] = {}
    if path.exists():
        for line in path.read_text().split():
            counts[line] = counts.get(line, 0) + 1
    return counts


# ---------------------------------------------------------------- two beats, two clock workers


@dataclass
class FireCounts:
    """What two beats and two clock workers did with `schedules` schedules over the measured window."""

    schedules: int
    due: int  # instants that fell due inside the window, summed over the schedules
    fired: int  # executions the schedules queued (inside the window or not)
    duplicated: int  # executions beyond the first for one (schedule, instant)
    missed: int  # instants due inside the window that queued no execution
    fired_audits: int  # "fired" audit records of the schedules
    max_lateness_ms: int

    @property
    def exact(self) -> bool:
        return self.duplicated == 0 and self.missed == 0 and self.fired_audits == self.fired


def two_beats_fire_every_instant_once(
    cluster: CeleryCluster, duration: float, *, schedules: int = 50, expression: str = "*/3 * * * * ?"
) -> FireCounts:
    """Two `celery beat` and two clock workers (control queue only) drive `schedules` schedules of one job
    for `duration` seconds; count duplicated and missed instants.

    Django's default connection must point at cluster.database. The job has no worker, so its
    executions stay queued (and are cancelled at the end): only the firing is measured.
    """
    # Models load only once Django is set up; a benchmark may import this module before.
    from jobs import cron, scheduling
    from jobs.models import JobSchedule
    from tests.engine_support import make_job

    processes: list[WorkerProcess] = []
    try:
        processes += [cluster.start_worker(f"clock{n}", concurrency=2, queues=("-control",)) for n in (1, 2)]
        processes += [cluster.start_beat(f"beat{n}") for n in (1, 2)]
        job = make_job([("test.sleep", {"seconds": 0.1})], name=f"fired by two beats {time.time_ns()}")
        created = []
        enabled_at = datetime.now(UTC)
        for _ in range(schedules):
            schedule = JobSchedule(job=job, schedule_type="cron", cron_expression=expression)
            scheduling.check(schedule)
            scheduling.refresh(schedule, enabled_at)
            schedule.save()
            created.append(schedule)
        time.sleep(duration)
        cluster.database.execute("UPDATE job_schedules SET is_enabled = false WHERE job_id = %s", (job.pk,))
        disabled_at = datetime.now(UTC)
    finally:
        for process in processes:
            process.stop()
    first = cron.next_fire_time(expression, enabled_at)
    period = cron.next_fire_time(expression, first) - first
    # An instant due at least one period before the schedules were disabled must have fired;
    # later ones may have been in flight.
    window_end = disabled_at - period
    instants = 0
    instant = first
    while instant is not None and instant <= window_end:
        instants += 1
        instant = cron.next_fire_time(expression, instant)
    due = instants * len(created)
    with psycopg.connect(cluster.database.conninfo, autocommit=True) as conn:
        fired, distinct, inside, lateness = conn.execute(
            """
            WITH fires AS (
                SELECT context_snapshot->'values'->>'trigger.schedule_id' AS schedule_id,
                       (context_snapshot->'values'->>'trigger.scheduled_for')::timestamptz AS scheduled_for,
                       created_at
                FROM job_executions WHERE job_id = %(job)s AND triggered_by = 'schedule'
            )
            SELECT count(*),
                   count(DISTINCT (schedule_id, scheduled_for)),
                   count(DISTINCT (schedule_id, scheduled_for)) FILTER (WHERE scheduled_for <= %(end)s),
                   coalesce(max(extract(epoch FROM created_at - scheduled_for) * 1000), 0)::bigint
            FROM fires
            """,
            {"job": job.pk, "end": window_end},
        ).fetchone()
        fired_audits = conn.execute(
            "SELECT count(*) FROM audit_log_entries WHERE entity_type = 'job_schedule' AND operation = 'fired'"
            " AND details->>'job_id' = %s",
            (str(job.pk),),
        ).fetchone()[0]
        conn.execute("UPDATE job_executions SET state = 'cancelled' WHERE job_id = %s AND state = 'queued'", (job.pk,))
    return FireCounts(
        schedules=schedules,
        due=due,
        fired=fired,
        duplicated=fired - distinct,
        missed=due - inside,
        fired_audits=fired_audits,
        max_lateness_ms=int(lateness),
    )
