"""`manage.py run_monitor_watcher`: the inotify watcher of local file monitors, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand

from courier_site import heartbeats
from courier_site.worker import ensure_schema_current
from monitors.watcher import MonitorWatcher


class Command(BaseCommand):
    help = (
        "Watch the directories of local file monitors with inotify and poll a monitor as soon as a changed "
        "file can be stable. Run one per host that sees the directories; the periodic scan stays the authority."
    )

    def handle(self, *args: Any, **options: Any) -> None:

        ensure_schema_current()
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        heartbeat = heartbeats.HeartbeatThread("watcher", heartbeats.process_name("watcher"))
        heartbeat.start()
        self.stdout.write("Watching local monitor directories; Ctrl-C stops.")
        try:
            MonitorWatcher().run(stop)
        finally:
            heartbeat.stop()
        self.stdout.write("Monitor watcher stopped.")
