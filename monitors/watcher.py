"""The inotify watcher of local monitors: a change in a watched directory polls that monitor as soon as
the file can be stable, instead of at the next regular scan. The scan stays the authority."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.db import close_old_connections, connection
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from monitors import services
from monitors.models import FileMonitor

logger = logging.getLogger(__name__)

# Seconds between re-reading the monitor list (new, edited, paused monitors).
REFRESH_SECONDS = 5.0
# Poll a little after the stability window ends, so the file's mtime is old enough.
SETTLE_SECONDS = 0.05
# Retry soon when another process holds the monitor's poll lock.
BUSY_RETRY_SECONDS = 0.5


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: MonitorWatcher, monitor_id: str) -> None:
        self.watcher = watcher
        self.monitor_id = monitor_id

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write"):
            return
        self.watcher.changed(self.monitor_id)


class _OverflowAlarm(logging.Handler):
    """Notices watchdog's report of a kernel inotify queue overflow (it offers no public hook).

    Events were lost, so every watched monitor must be scanned: the watcher marks them
    degraded for a refresh round and polls them all at once.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.raised = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.raised.set()


class MonitorWatcher:
    """Watches the directories of local monitors that poll (active or degraded)."""

    def __init__(self, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.refresh_seconds = refresh_seconds
        self.observer: Any = None
        # monitor id -> (path, ObservedWatch, handler). Monitors on the same directory share
        # one ObservedWatch (watchdog keys watches by path), each with a handler of its own.
        self.watches: dict[str, tuple[str, Any, _Handler]] = {}
        self.stability: dict[str, float] = {}
        self.due: dict[str, float] = {}  # monitor id -> monotonic time to poll
        self.lock = threading.Lock()

    # Called from watchdog's thread: only note the time, the main loop polls.
    def changed(self, monitor_id: str) -> None:
        # The earliest wins: a steady trickle of writes to one file must not postpone a poll
        # that another, finished file is waiting for. The poll re-arms for files still written.
        when = time.monotonic() + self.stability.get(monitor_id, 5.0) + SETTLE_SECONDS
        with self.lock:
            self.due[monitor_id] = min(self.due.get(monitor_id, when), when)

    def _start_observer(self) -> None:
        self.observer = Observer()
        self.observer.start()
        self.watches.clear()

    def _live_watches(self) -> set[Any]:
        # An emitter stops by itself when its directory is deleted (or moved away); its watch
        # stays registered but sees nothing any more.
        return {emitter.watch for emitter in self.observer.emitters if emitter.is_alive()}

    def _unwatch(self, monitor_id: str) -> None:
        _path, watch, handler = self.watches.pop(monitor_id)
        if any(other == watch for _, other, _ in self.watches.values()):
            # Another monitor watches the same directory: unscheduling would blind it too.
            self.observer.remove_handler_for_watch(handler, watch)
        else:
            self.observer.unschedule(watch)

    def refresh(self) -> None:
        """Watch the directories of local polling monitors; stop watching the others."""

        wanted: dict[str, str] = {}
        degraded: set[str] = set()
        for monitor in FileMonitor.objects.filter(state__in=services.POLLING_STATES):
            try:
                target = services.parse_target(monitor.watch_target)
                if target.remote:
                    continue
                wanted[str(monitor.pk)] = str(services.check_local_path(target.path))
            except Exception as error:  # a broken definition is reported by the scan
                logger.debug("monitor %s not watched: %s", monitor.pk, error)
                continue
            self.stability[str(monitor.pk)] = float(monitor.stability_window_sec)
            if monitor.state == "degraded":
                degraded.add(str(monitor.pk))
        live = self._live_watches()
        for monitor_id, (path, watch, _handler) in list(self.watches.items()):
            if wanted.get(monitor_id) == path and watch in live:
                continue
            self._unwatch(monitor_id)
            if monitor_id in wanted:
                services.set_watcher_state(monitor_id, False, reason=f"{path} is no longer watched (removed?)")
        for monitor_id, path in wanted.items():
            if monitor_id in self.watches:
                if monitor_id in degraded:
                    # Marked degraded while this watcher was running (degrade_unwatched saw its
                    # heartbeat late, e.g. during a database restart): it is watched all the same.
                    services.set_watcher_state(monitor_id, True, reason=f"watching {path}")
                continue
            handler = _Handler(self, monitor_id)
            try:
                watch = self.observer.schedule(handler, path, recursive=False)
            except OSError as error:
                # A missing directory, or the inotify watch limit: the scan carries on alone.
                services.set_watcher_state(monitor_id, False, reason=f"cannot watch {path}: {error}")
                continue
            self.watches[monitor_id] = (path, watch, handler)
            services.set_watcher_state(monitor_id, True, reason=f"watching {path}")
            # Files that arrived while nothing watched are picked up by a poll now.
            self.changed(monitor_id)

    def poll_due(self) -> None:
        now = time.monotonic()
        with self.lock:
            ready = [monitor_id for monitor_id, when in self.due.items() if when <= now]
            for monitor_id in ready:
                del self.due[monitor_id]
        for monitor_id in ready:
            try:
                result = services.poll(monitor_id, reason="watcher")
            except Exception:
                logger.exception("watcher poll of monitor %s failed", monitor_id)
                continue
            if result.outcome == "busy":
                with self.lock:
                    self.due.setdefault(monitor_id, time.monotonic() + BUSY_RETRY_SECONDS)
            elif result.pending_until is not None:
                # A file is still being written: look again when it can be stable.
                wait = max(result.pending_until - time.time(), 0) + SETTLE_SECONDS
                with self.lock:
                    self.due.setdefault(monitor_id, time.monotonic() + wait)

    def _refresh_round(self) -> None:
        close_old_connections()
        if not self.observer.is_alive():
            # An internal error stopped the observer: start anew, every directory is watched
            # again and polled once for what was missed.
            logger.warning("the inotify observer stopped; starting it again")
            for monitor_id in list(self.watches):
                services.set_watcher_state(monitor_id, False, reason="inotify observer stopped")
            self._start_observer()
        self.refresh()

    def handle_overflow(self) -> None:
        """After lost events: degraded until the next refresh round, and a poll of every watched monitor."""
        for monitor_id, (path, *_) in list(self.watches.items()):
            services.set_watcher_state(monitor_id, False, reason=f"inotify queue overflowed; scanning {path}")
            with self.lock:
                self.due[monitor_id] = time.monotonic()

    def run(self, stop: threading.Event) -> None:
        alarm = _OverflowAlarm()
        watchdog_logger = logging.getLogger("watchdog.observers.inotify_c")
        watchdog_logger.addHandler(alarm)
        self._start_observer()
        next_refresh = 0.0
        try:
            while not stop.is_set():
                if alarm.raised.is_set():
                    alarm.raised.clear()
                    logger.warning("inotify queue overflowed: scanning every watched monitor")
                    self.handle_overflow()
                    next_refresh = time.monotonic() + self.refresh_seconds
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + self.refresh_seconds
                    try:
                        self._refresh_round()
                    except Exception:
                        # The database may be restarting: the scan goes on without us meanwhile,
                        # and the next round tries again on a fresh connection.
                        logger.exception("refreshing the watched monitor directories failed")
                        connection.close()
                self.poll_due()
                stop.wait(0.05)
        finally:
            watchdog_logger.removeHandler(alarm)
            self.observer.stop()
            self.observer.join(10)
            for monitor_id in list(self.watches):
                services.set_watcher_state(monitor_id, False, reason="watcher stopped")
