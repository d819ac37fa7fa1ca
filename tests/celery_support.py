"""Real Celery workers for tests: a migrated database of their own, a private Redis db, process control."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.child_processes import tied_to_test_run

ROOT = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], Any], timeout: float, message: str, interval: float = 0.05) -> Any:
    """Poll condition until it returns something truthy; fail with message after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s: {message}")


def private_broker_url(base: str, index: int = 13) -> str:
    """The same Redis server, another database number, so tests never meet a developer's queue."""
    head, _, tail = base.rpartition("/")
    return f"{head}/{index}" if tail.isdigit() else f"{base.rstrip('/')}/{index}"


@dataclass
class LiveDatabase:
    name: str
    url: str
    conninfo: str

    def scalar(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            row = conn.execute(query, params).fetchone()
        return row[0] if row else None

    def execute(self, query: str, params: tuple[Any, ...] = ()) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(query, params)

    @classmethod
    def from_conninfo(cls, conninfo: str) -> LiveDatabase:
        """The database conninfo names, with the URL a worker process reads from DATABASE_URL."""
        info = psycopg.conninfo.conninfo_to_dict(conninfo)
        url = f"postgresql://{info.get('user', '')}@{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}"
        url = f"{url}/{info['dbname']}"
        if info.get("password"):
            url = url.replace("@", f":{info['password']}@", 1)
        return cls(str(info["dbname"]), url, conninfo)


@contextmanager
def live_database() -> Iterator[LiveDatabase]:
    """A scratch database migrated by `manage.py migrate`; Django's default connection points at it."""
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from courier_site.db import conninfo_for

    admin_conninfo = conninfo_for()
    name = f"courier_live_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_conninfo, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    original = settings.DATABASES["default"]["NAME"]
    info = psycopg.conninfo.conninfo_to_dict(admin_conninfo)
    info["dbname"] = name
    database = LiveDatabase.from_conninfo(psycopg.conninfo.make_conninfo(**info))
    try:
        connection.close()
        settings.DATABASES["default"]["NAME"] = name
        connection.settings_dict["NAME"] = name
        call_command("migrate", verbosity=0, interactive=False)
        yield database
    finally:
        connection.close()
        settings.DATABASES["default"]["NAME"] = original
        connection.settings_dict["NAME"] = original
        with psycopg.connect(admin_conninfo, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int, whole_group: bool = False) -> None:
        if self.process.poll() is None:
            if whole_group:
                os.killpg(self.process.pid, signum)
            else:
                self.process.send_signal(signum)

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL, whole_group=True)
                self.process.wait(5)
        # Pool processes left behind by a killed parent die with their group.
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class CeleryCluster:
    """Starts real `celery worker` / `celery beat` processes against the live database and private broker."""

    database: LiveDatabase
    broker_url: str
    data_dir: Path
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[WorkerProcess] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": self.database.url,
                "CELERY_BROKER_URL": self.broker_url,
                "REDIS_URL": self.broker_url,
                "COURIER_DATA_DIR": str(self.data_dir),
                "COURIER_HEARTBEAT_INTERVAL": "1",
                "COURIER_HEARTBEAT_TIMEOUT": "3",
                "COURIER_STEP_MODULES": "tests.engine_support",
                "COURIER_QUEUE": os.environ["COURIER_QUEUE"],
                "DJANGO_SETTINGS_MODULE": "courier_site.settings",
                "PYTHONPATH": str(ROOT),
            }
        )
        env.update(self.extra_env)
        return env

    def start_worker(
        self,
        name: str,
        concurrency: int = 4,
        wait: bool = True,
        respawn: bool = False,
        queues: tuple[str, ...] = ("", "-control", "-monitors"),
    ) -> WorkerProcess:
        """A worker on the given queue suffixes (by default job runs, the clock's control tasks and
        monitor scans alike); with respawn, under bin/respawn as the Procfile runs it."""
        command = [
            *celery_command("worker"),
            "--loglevel",
            "INFO",
            "--queues",
            ",".join(f"{os.environ['COURIER_QUEUE']}{suffix}" for suffix in queues),
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
        worker = self.spawn(name, command, respawn=respawn)
        if wait:
            # The heartbeat is written at worker_ready, when the consumer is already connected.
            self._wait_started(
                worker,
                "SELECT count(*) FROM process_heartbeats WHERE process_name LIKE %s AND stopped_at IS NULL",
                (f"{name}@%",),
            )
        return worker

    def start_beat(self, name: str = "beat", wait: bool = True, respawn: bool = False) -> WorkerProcess:
        """A `celery beat` with a schedule file of its own (two beats must not share one)."""
        command = [*celery_command("beat"), "--loglevel", "INFO", "--schedule", str(self.log_dir / f"{name}-schedule")]
        beat = self.spawn(name, command, respawn=respawn)
        if wait:
            # Without respawn the beat is this very process; with it, any new beat heartbeat will do.
            self._wait_started(
                beat,
                "SELECT count(*) FROM process_heartbeats WHERE kind = 'beat' AND stopped_at IS NULL"
                " AND (pid = %s OR %s) AND last_seen_at > now() - interval '5 seconds'",
                (beat.process.pid, respawn),
            )
        return beat

    def spawn(self, name: str, command: list[str], respawn: bool = False) -> WorkerProcess:
        """Start command in a process group of its own, logging to <log_dir>/<name>.log; reaped by stop_all."""
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                tied_to_test_run([str(ROOT / "bin" / "respawn"), *tied_to_test_run(command)])
                if respawn
                else tied_to_test_run(command),
                cwd=ROOT,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = WorkerProcess(name, process, log_path)
        self.processes.append(started)
        return started

    def _wait_started(self, started: WorkerProcess, query: str, params: tuple[Any, ...]) -> None:
        wait_for(
            lambda: started.process.poll() is not None or self.database.scalar(query, params),
            60,
            f"{started.name} to start",
            interval=0.2,
        )
        assert started.process.poll() is None, started.output()[-3000:]

    def stop_all(self) -> None:
        for worker in self.processes:
            worker.stop()


def celery_command(verb: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "courier_site", verb]
