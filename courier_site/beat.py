"""Celery beat scheduler that records a heartbeat and queues start-up maintenance."""

from __future__ import annotations

import signal
import threading
from typing import Any

from celery.beat import PersistentScheduler

from courier_site import heartbeats
from courier_site.worker import ensure_schema_current


class HeartbeatScheduler(PersistentScheduler):
    """PersistentScheduler plus a heartbeat row, so /health/ can tell that beat is alive."""

    _heartbeat: heartbeats.HeartbeatThread | None = None

    def setup_schedule(self) -> None:
        ensure_schema_current()
        super().setup_schedule()
        self._heartbeat = heartbeats.HeartbeatThread("beat", heartbeats.process_name("beat"))
        self._heartbeat.start()
        # Partition maintenance runs weekly and once whenever beat starts.
        self.app.send_task("courier_site.tasks.create_monthly_partitions", expires=3600)

    def close(self, *args: Any, **kwargs: Any) -> None:
        # Celery calls this from its SIGTERM/SIGINT handler. A process manager signalling the
        # whole group while bin/respawn passes the signal on delivers two at once, and a handler
        # re-entering this one mid-way would deadlock on a lock the first holds: once stopping,
        # further stop signals are ignored (SIGKILL still ends the process).
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_IGN)
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.stop()
        super().close(*args, **kwargs)
