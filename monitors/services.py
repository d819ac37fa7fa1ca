"""File monitor polls: list the target, detect ready files, trigger bound jobs and chains, keep state (SPEC 7)."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audit.models import AuditLogEntry
from audit.querysets import actor_name
from connections.errors import AuthenticationFailed
from connections.models import Connection
from connections.transfer.sessions import open_session
from courier_site import heartbeats
from courier_site.errors import CourierError
from jobs import chains
from jobs.engine import control
from jobs.errors import PathNotAllowed
from monitors import detection
from monitors.models import FileMonitor, MonitorDirectoryState, MonitorFileLog, MonitorJobBinding
from system.values import setting_int

logger = logging.getLogger(__name__)

# Two-key advisory locks of monitors (a key space apart from the one-key locks of the
# migration runner and the dispatcher): one poll per monitor at a time, on any host.
MONITOR_LOCK_CLASS = 7001
# Monitors claimed per beat tick.
CLAIM_BATCH = 20
# A file that becomes stable before the next regular scan is looked at this soon after.
RECHECK_MARGIN = timedelta(milliseconds=300)
POLLING_STATES = ("active", "degraded")


class InvalidMonitor(CourierError):
    """A monitor definition the console or an import refuses."""

    code = "E5000"


class MonitorScanFailed(CourierError):
    """The watched directory could not be listed (missing, not allowed, connection failure)."""

    code = "E5001"


class MonitorStateRefused(CourierError):
    code = "E5002"


# ---------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    kind: str  # "local" or "remote"
    path: str
    connection_id: str | None = None

    @property
    def remote(self) -> bool:
        return self.kind == "remote"


def parse_target(data: Any) -> Target:
    """watch_target JSON: {"type": "local", "path": ...} or {"type": "remote", "connection_id": ..., "path": ...}."""
    if not isinstance(data, dict):
        raise InvalidMonitor("the watch target must be an object with a type and a path")
    kind = data.get("type") or ("remote" if data.get("connection_id") else "local")
    path = data.get("path")
    if kind not in ("local", "remote"):
        raise InvalidMonitor(f"watch target type must be local or remote, not {kind!r}")
    if not isinstance(path, str) or not path.strip():
        raise InvalidMonitor("the watch target needs the path of the directory to watch")
    if kind == "remote":
        if not data.get("connection_id"):
            raise InvalidMonitor("a remote watch target needs a connection")
        return Target("remote", path.strip(), str(data["connection_id"]))
    return Target("local", path.strip())


def allowed_roots() -> list[Path]:
    return [
        Path(settings.COURIER_DATA_DIR).resolve(),
        *(Path(root).resolve() for root in settings.COURIER_ALLOWED_ROOTS),
    ]


def check_local_path(path: str) -> Path:
    """The resolved local directory, inside COURIER_DATA_DIR or an allowed root [E2040].

    A relative path is taken inside COURIER_DATA_DIR: resolved against the working directory
    it would mean another folder in the web, worker and watcher processes.
    """

    resolved = (Path(settings.COURIER_DATA_DIR) / path).resolve()
    if not any(resolved == root or root in resolved.parents for root in allowed_roots()):
        raise PathNotAllowed(f"monitor path {path} is outside COURIER_DATA_DIR and COURIER_ALLOWED_ROOTS")
    return resolved


def usable_connection(connection_id: str) -> Any:
    try:
        found = Connection.objects.get(pk=uuid.UUID(str(connection_id)))
    except (ValueError, Connection.DoesNotExist):
        raise InvalidMonitor(f"connection {connection_id} does not exist (or is deleted)") from None
    if getattr(found, "status", "active") not in ("active", None):
        raise InvalidMonitor(f"connection '{found.name}' is {found.status}; a monitor needs an active connection")
    return found


def check_definition(monitor: FileMonitor) -> None:
    """Refuse what can never poll: bad target, interval under 30 s, window under 1 s, no events [E5000]."""
    target = parse_target(monitor.watch_target)
    if target.remote:
        usable_connection(target.connection_id)
    else:
        check_local_path(target.path)
    if (monitor.polling_interval_sec or 0) < 30:
        raise InvalidMonitor("the polling interval must be 30 seconds or more")
    if (monitor.stability_window_sec or 0) < 1:
        raise InvalidMonitor("the stability window must be at least 1 second")
    if not 1 <= (monitor.trigger_events or 0) <= 7:
        raise InvalidMonitor("choose at least one trigger event (created, modified, exists)")
    if not isinstance(monitor.file_patterns, list) or not all(isinstance(p, str) for p in monitor.file_patterns):
        raise InvalidMonitor("file patterns must be a list of globs such as ['*.csv', 'INV_*.pgp']")
    if monitor.max_consecutive_failures is not None and monitor.max_consecutive_failures < 1:
        raise InvalidMonitor("max consecutive failures must be 1 or more")


def list_target(monitor: FileMonitor) -> list[detection.ListedFile]:
    """The files (not directories) directly in the watched directory."""
    target = parse_target(monitor.watch_target)
    if target.remote:
        return _list_remote(target)
    directory = check_local_path(target.path)
    if not directory.is_dir():
        raise MonitorScanFailed(f"directory {directory} does not exist or is not a directory")
    files = []
    with os.scandir(directory) as entries:
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while listing
            files.append(detection.ListedFile(entry.path, entry.name, stat.st_size, stat.st_mtime))
    return files


def _list_remote(target: Target) -> list[detection.ListedFile]:
    found = usable_connection(target.connection_id)
    session = open_session(found, by="monitor")
    try:
        return [
            detection.ListedFile(item.path, item.name, item.size, item.modified.timestamp() if item.modified else 0.0)
            for item in session.listdir(target.path)
            if not item.is_dir
        ]
    finally:
        session.close()


# ---------------------------------------------------------------- polling


@contextmanager
def poll_lock(monitor_id: Any) -> Iterator[bool]:
    """A session advisory lock held for the whole poll, listing included (not just a transaction)."""
    key = int.from_bytes(uuid.UUID(str(monitor_id)).bytes[:4], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [MONITOR_LOCK_CLASS, key])
        got = cursor.fetchone()[0]
    try:
        yield got
    finally:
        if got:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [MONITOR_LOCK_CLASS, key])


@dataclass
class PollResult:
    monitor_id: str
    outcome: str  # "polled", "busy", "skipped", "failed"
    triggered: list[detection.TriggeredFile] = field(default_factory=list)
    executions: list[str] = field(default_factory=list)
    error: str | None = None
    # POSIX time at which a local file still being written can be stable, if any.
    pending_until: float | None = None


def rules_for(monitor: FileMonitor) -> detection.Rules:
    return detection.Rules(
        trigger_events=monitor.trigger_events,
        patterns=tuple(monitor.file_patterns or ()),
        stability_seconds=float(monitor.stability_window_sec),
        remote=parse_target(monitor.watch_target).remote,
    )


def latest_snapshot(monitor: FileMonitor) -> dict[str, dict[str, Any]] | None:
    """The listing the last poll stored; None when there is none (first poll, or lost), so
    detection falls back on the file log instead of taking every file for new."""
    row = MonitorDirectoryState.objects.filter(monitor=monitor).order_by("-captured_at").first()
    listing = row.directory_listing if row else None
    return listing if isinstance(listing, dict) else None


def logged_signatures(monitor: FileMonitor, paths: list[str]) -> dict[str, list[float]]:
    """Size and mtime of the last file log row of each path (one query, for a poll without a snapshot)."""
    if not paths:
        return {}
    # ix_monitor_file_log_monitor (monitor_id, file_path, triggered_at DESC): the newest row per path.
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT DISTINCT ON (file_path) file_path, file_size, last_modified
            FROM monitor_file_log
            WHERE monitor_id = %s AND file_path = ANY(%s)
            ORDER BY file_path, triggered_at DESC
            """,
            [monitor.pk, paths],
        )
        return {path: detection.signature(size, modified.timestamp()) for path, size, modified in cursor.fetchall()}


def poll(monitor_id: Any, *, reason: str = "schedule") -> PollResult:
    """Scan one monitor once: exactly one poller at a time, listing outside any transaction."""
    with poll_lock(monitor_id) as got:
        if not got:
            return PollResult(str(monitor_id), "busy")
        monitor = FileMonitor.objects.filter(pk=monitor_id).first()
        if monitor is None or monitor.state not in POLLING_STATES:
            return PollResult(str(monitor_id), "skipped")
        try:
            listing = list_target(monitor)
        except Exception as error:  # every failure counts toward the error state
            return _record_failure(monitor.pk, error)
        try:
            return _apply(monitor.pk, listing, reason)
        except Exception as error:
            # Nothing of the poll was stored (a missing file log partition, a full disk ...):
            # the files trigger at the next poll, and the operator sees the failure meanwhile.
            logger.exception("monitor %s: the poll could not be stored", monitor.pk)
            return _record_failure(monitor.pk, error)


def _apply(monitor_id: Any, listing: list[detection.ListedFile], reason: str) -> PollResult:
    now = timezone.now()
    with transaction.atomic():
        monitor = FileMonitor.objects.select_for_update().filter(pk=monitor_id).first()
        if monitor is None or monitor.state not in POLLING_STATES:
            return PollResult(str(monitor_id), "skipped")  # deleted, paused or disabled during the listing
        rules = rules_for(monitor)
        previous = latest_snapshot(monitor)
        logged = logged_signatures(monitor, [file.path for file in listing]) if previous is None else {}
        snapshot, triggered = detection.detect(listing, previous, rules, now.timestamp(), history=logged.get)
        executions: list[str] = []
        if triggered:
            already_refused = {path for path, entry in (previous or {}).items() if entry.get("refused")}
            executions, unserved = _trigger(monitor, triggered, now, reason, already_refused)
            # A file no binding could run for (job disabled, dependencies not met, no binding)
            # stays unannounced and triggers again at a later poll, e.g. once the job is enabled.
            for path in unserved:
                before = (previous or {}).get(path) or {}
                snapshot[path].update(
                    announced=bool(before.get("announced")), ready_sig=before.get("ready_sig"), refused=True
                )
        MonitorDirectoryState.objects.filter(monitor=monitor).delete()  # the latest listing only
        MonitorDirectoryState.objects.create(monitor=monitor, directory_listing=snapshot)
        next_poll = now + timedelta(seconds=monitor.polling_interval_sec)
        recheck = detection.pending_until(listing, rules, now.timestamp())
        if recheck is not None:
            next_poll = min(next_poll, datetime.fromtimestamp(recheck, tz=UTC) + RECHECK_MARGIN)
        was_failing = monitor.consecutive_failure_count
        FileMonitor.objects.filter(pk=monitor.pk).update(
            last_polled_at=now,
            next_poll_at=next_poll,
            consecutive_failure_count=0,
            last_error=None,
            updated_at=now,
        )
        if was_failing:
            AuditLogEntry.objects.record(
                entity_type="file_monitor",
                entity_id=monitor.pk,
                operation="poll_recovered",
                details={"after_failures": was_failing},
                event_type="MonitorRecovered",
            )
    return PollResult(str(monitor_id), "polled", triggered, executions, pending_until=recheck)


def _trigger(
    monitor: FileMonitor, triggered: list[detection.TriggeredFile], now: Any, reason: str, already_refused: set[str]
) -> tuple[list[str], list[str]]:
    """Queue a run per binding (batch) or per binding and file (individual); log every file.

    Returns the executions started and the paths of files no binding could run for.
    """

    groups = [triggered] if monitor.batch_mode else [[item] for item in triggered]
    bindings = list(MonitorJobBinding.objects.filter(monitor=monitor).select_related("job", "chain"))
    started: list[str] = []
    refusals: list[str] = []
    unserved: list[str] = []
    log_rows = []
    for group in groups:
        served = False
        events = sorted({item.event for item in group}, key=list(detection.EVENT_NAMES.values()).index)
        context = {
            "monitor.id": str(monitor.pk),
            "monitor.name": monitor.name,
            "monitor.trigger_event": ",".join(events),
            "monitor.triggered_files": [item.as_context() for item in group],
            # The paths alone, so that a step taking a list of files (file.zip source_path,
            # file.copy ...) can process a whole batch: "context:monitor.triggered_paths".
            "monitor.triggered_paths": [item.file.path for item in group],
            "monitor.triggered_at": now.isoformat(),
        }
        for binding in bindings:
            try:
                with transaction.atomic():
                    if binding.job_id:
                        execution_id = control.enqueue(
                            binding.job, triggered_by=f"monitor:{monitor.pk}", context=context
                        ).pk
                    else:
                        execution_id = chains.trigger(
                            binding.chain, triggered_by=f"monitor:{monitor.pk}", by="monitor", context=context
                        ).pk
            except CourierError as error:
                refusals.append(str(error))
                continue
            started.append(str(execution_id))
            served = True
            log_rows.extend(
                MonitorFileLog(
                    monitor_id=monitor.pk,
                    file_path=item.file.path,
                    file_size=item.file.size,
                    last_modified=datetime.fromtimestamp(item.file.modified, tz=UTC),
                    execution_id=execution_id,
                    trigger_event=item.event,
                )
                for item in group
            )
        if not served:
            unserved.extend(item.file.path for item in group)
    MonitorFileLog.objects.bulk_create(log_rows, batch_size=2000)
    details = {
        "files": [item.file.path for item in triggered][:100],
        "file_count": len(triggered),
        "events": sorted({item.event for item in triggered}),
        "executions": started,
        "bindings": len(bindings),
        "polled_by": reason,  # schedule (the periodic scan) or watcher (inotify)
    }
    if refusals or not bindings:
        details["refused"] = refusals or ["the monitor is bound to no job or chain"]
        details["waiting_files"] = unserved[:100]
    # A refusal is recorded once per waiting file, not again at every poll while it waits.
    if started or not set(unserved) <= already_refused:
        AuditLogEntry.objects.record(
            entity_type="file_monitor",
            entity_id=monitor.pk,
            operation="triggered" if started else "trigger_refused",
            details=details,
            event_type="MonitorTriggered" if started else None,
        )
    return started, unserved


def _record_failure(monitor_id: Any, error: BaseException) -> PollResult:
    """Count a failed poll; an authentication failure, or max_consecutive_failures in a row, means error."""

    message = str(error) if isinstance(error, CourierError) else f"[E5001] {error.__class__.__name__}: {error}"
    with transaction.atomic():
        monitor = FileMonitor.objects.select_for_update().filter(pk=monitor_id).first()
        if monitor is None or monitor.state not in POLLING_STATES:
            # Deleted, paused or disabled while the listing failed: nothing to count.
            return PollResult(str(monitor_id), "skipped", error=message)
        count = monitor.consecutive_failure_count + 1
        fatal = isinstance(error, AuthenticationFailed) or count >= monitor.max_consecutive_failures
        now = timezone.now()
        monitor.consecutive_failure_count = count
        monitor.last_error = message[:2000]
        monitor.next_poll_at = now + timedelta(seconds=monitor.polling_interval_sec)
        previous = monitor.state
        if fatal:
            monitor.state = "error"
        monitor.save(update_fields=["consecutive_failure_count", "last_error", "next_poll_at", "state", "updated_at"])
        AuditLogEntry.objects.record(
            entity_type="file_monitor",
            entity_id=monitor.pk,
            operation="poll_failed",
            details={
                "error": message[:2000],
                "failure_count": count,
                "max_consecutive_failures": monitor.max_consecutive_failures,
                "state": monitor.state,
                "from": previous,
            },
            event_type="MonitorErrored" if fatal else None,
        )
    logger.warning("monitor %s poll failed (%d in a row): %s", monitor_id, count, message)
    return PollResult(str(monitor_id), "failed", error=message)


def claim_due(now: Any = None, limit: int = CLAIM_BATCH) -> list[str]:
    """Monitors whose scan is due, claimed by pushing next_poll_at forward (SKIP LOCKED)."""
    now = now or timezone.now()
    with transaction.atomic():
        due = list(
            FileMonitor.objects.select_for_update(skip_locked=True)
            .filter(state__in=POLLING_STATES, next_poll_at__lte=now)
            .order_by("next_poll_at")
            .values_list("pk", "polling_interval_sec")[:limit]
        )
        for pk, interval in due:
            # Pushed ahead so the next tick does not claim it again while it is being polled;
            # the poll sets the real next time.
            FileMonitor.objects.filter(pk=pk).update(next_poll_at=now + timedelta(seconds=interval))
    return [str(pk) for pk, _ in due]


# ---------------------------------------------------------------- states


_ACTIONS = {
    # action: (states it applies to, new state, audit operation)
    "pause": (("active", "degraded"), "paused", "paused"),
    "resume": (("paused",), "active", "resumed"),
    "disable": (("active", "degraded", "paused", "error"), "disabled", "disabled"),
    "enable": (("disabled",), "active", "enabled"),
    "acknowledge": (("error",), "active", "acknowledged"),
}


def change_state(monitor_id: Any, action: str, *, by: Any) -> FileMonitor:
    """Pause, resume, disable, enable or acknowledge a monitor (error -> active only by acknowledge)."""
    allowed, new_state, operation = _ACTIONS[action]
    with transaction.atomic():
        monitor = FileMonitor.objects.select_for_update().get(pk=monitor_id)
        if monitor.state not in allowed:
            raise MonitorStateRefused(f"monitor '{monitor.name}' is {monitor.state}; it cannot be {operation}")
        previous = monitor.state
        monitor.state = new_state
        fields = ["state", "updated_at"]
        if new_state == "active":
            monitor.consecutive_failure_count = 0
            monitor.next_poll_at = timezone.now()
            fields += ["consecutive_failure_count", "next_poll_at"]
        monitor.save(update_fields=fields)
        AuditLogEntry.objects.record(
            entity_type="file_monitor",
            entity_id=monitor.pk,
            operation=operation,
            performed_by=by,
            details={"from": previous, "to": new_state, "last_error": monitor.last_error},
        )
    return monitor


def set_watcher_state(monitor_id: Any, watching: bool, *, reason: str = "") -> None:
    """active <-> degraded as the inotify watcher gains or loses a local monitor's directory."""
    wanted, other = ("active", "degraded") if watching else ("degraded", "active")
    with transaction.atomic():
        monitor = FileMonitor.objects.select_for_update().filter(pk=monitor_id, state=other).first()
        if monitor is None:
            return
        monitor.state = wanted
        monitor.save(update_fields=["state", "updated_at"])
        AuditLogEntry.objects.record(
            entity_type="file_monitor",
            entity_id=monitor.pk,
            operation="watcher_on" if watching else "watcher_off",
            details={"from": other, "to": wanted, "reason": reason},
        )


def degrade_unwatched() -> int:
    """Local monitors show degraded (scan only) while no watcher process reports a heartbeat."""

    newest = heartbeats.newest("watcher")
    if newest is not None and heartbeats.is_fresh(newest[1]):
        return 0
    changed = 0
    for monitor in FileMonitor.objects.filter(state="active").only("pk", "watch_target"):
        try:
            local = not parse_target(monitor.watch_target).remote
        except InvalidMonitor:
            continue
        if local:
            set_watcher_state(monitor.pk, False, reason="no monitor watcher process is running")
            changed += 1
    return changed


def prune_file_log(now: Any = None) -> int:
    """Delete file log rows older than monitor.file_log_retention_days."""

    days = setting_int("monitor.file_log_retention_days", 30)
    cutoff = (now or timezone.now()) - timedelta(days=days)
    deleted, _ = MonitorFileLog.objects.filter(triggered_at__lt=cutoff).delete()
    return deleted


def actor(by: Any) -> str:
    return actor_name(by)
