"""Celery beat scheduler that records a heartbeat and queues start-up maintenance."""

from __future__ import annotations

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
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        super().close(*args, **kwargs)
