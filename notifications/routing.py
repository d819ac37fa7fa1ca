"""What a domain event means to notifications: its kind, its subject, and the message that tells of it."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.urls import reverse

from audit.relay import RelayedEvent
from jobs.models import ChainExecution, JobExecution, StepExecution
from keystore.models import PgpKey
from monitors.models import FileMonitor
from notifications.models import EventKind

ERROR_CODE = re.compile(r"\[(E\d{4})\]")
# Failures a quiet rule tells once until the subject succeeds again.
FAILURE_KINDS = frozenset(
    {
        EventKind.JOB_FAILED,
        EventKind.STEP_FAILED,
        EventKind.CHAIN_FAILED,
        EventKind.MONITOR_ERROR,
        EventKind.PARTITION_MISSING,
        EventKind.ARCHIVE_FAILED,
        EventKind.HOST_KEY_CHANGED,
    }
)
# Events that end a subject's failing streak (reset quiet rules), whether or not anyone listens to them.
SUCCESS_EVENTS = {
    "JobCompleted": "job",
    "ChainCompleted": "chain",
    "MonitorRecovered": "monitor",
    "MonitorTriggered": "monitor",
    "HostKeyApproved": "connection",
    "PartitionArchived": "system",
    "PartitionsReady": "system",
}
# Subjects whose tags a rule's tag scope matches (entity_tags.entity_type).
TAGGED_SUBJECTS = {
    "job": "job",
    "chain": "job_chain",
    "monitor": "file_monitor",
    "pgp_key": "pgp_key",
    "connection": "connection",
}
# Kinds about the platform itself: a rule's job / chain / monitor / tag scope does not apply.
UNSCOPED_KINDS = frozenset({EventKind.PARTITION_MISSING, EventKind.ARCHIVE_FAILED})


@dataclass(frozen=True)
class Classified:
    kind: str
    subject_type: str
    subject_id: uuid.UUID


@dataclass
class Rendered:
    subject: str
    body: str
    payload: dict[str, Any] = field(default_factory=dict)


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError):
        return None


def classify(event: RelayedEvent) -> Classified | None:
    """The notification kind of an event and the job, chain, monitor, key or connection it is about."""
    payload = event.payload or {}
    kind: str | None = None
    subject_type, subject_id = event.entity_type, event.entity_id
    if event.event_type == "JobFailed":
        kind, subject_type, subject_id = EventKind.JOB_FAILED, "job", _uuid(payload.get("job_id"))
    elif event.event_type == "JobCompleted":
        kind, subject_type, subject_id = EventKind.JOB_COMPLETED, "job", _uuid(payload.get("job_id"))
    elif event.event_type == "StepFailed" and not payload.get("will_retry"):
        kind, subject_type, subject_id = EventKind.STEP_FAILED, "job", _uuid(payload.get("job_id"))
    elif event.event_type == "ChainFailed":
        kind, subject_type, subject_id = EventKind.CHAIN_FAILED, "chain", _uuid(payload.get("chain_id"))
    elif event.event_type == "MonitorErrored":
        kind, subject_type = EventKind.MONITOR_ERROR, "monitor"
    elif event.event_type == "PgpKeyStatusChanged" and payload.get("to") in ("expiring", "retired"):
        kind = EventKind.KEY_EXPIRING if payload["to"] == "expiring" else EventKind.KEY_RETIRED
        subject_type = "pgp_key"
    elif event.event_type == "PartitionMissing":
        kind, subject_type = EventKind.PARTITION_MISSING, "system"
    elif event.event_type == "PartitionArchiveFailed":
        kind, subject_type = EventKind.ARCHIVE_FAILED, "system"
    elif event.event_type == "HostKeyRejected":
        kind, subject_type = EventKind.HOST_KEY_CHANGED, "connection"
    if kind is None or subject_id is None:
        return None
    return Classified(str(kind), subject_type, subject_id)


def success_subject(event: RelayedEvent) -> tuple[str, uuid.UUID] | None:
    """(subject_type, subject_id) whose failing streak this event ends, if any."""
    subject_type = SUCCESS_EVENTS.get(event.event_type)
    if subject_type is None:
        return None
    if subject_type == "job":
        subject_id = _uuid(event.payload.get("job_id"))
    elif subject_type == "chain":
        subject_id = _uuid(event.payload.get("chain_id"))
    else:
        subject_id = event.entity_id
    return (subject_type, subject_id) if subject_id else None


def console_link(admin_name: str, object_id: Any) -> str:
    return settings.COURIER_CONSOLE_URL + reverse(f"admin:{admin_name}_change", args=[object_id])


def error_code(message: str | None) -> str | None:
    match = ERROR_CODE.search(message or "")
    return match.group(1) if match else None


def render(event: RelayedEvent, classified: Classified) -> Rendered:
    """The message about an event: a subject line, a plain-text body and the webhook's JSON payload."""
    kind = classified.kind
    renderer = _RENDERERS.get(kind, _render_generic)
    rendered = renderer(event, classified)
    rendered.payload = {
        "event": kind,
        "event_type": event.event_type,
        "event_id": str(event.id),
        "occurred_at": event.occurred_at.isoformat(),
        "subject": {"type": classified.subject_type, "id": str(classified.subject_id)},
        "summary": rendered.subject,
        **rendered.payload,
    }
    rendered.body = (
        rendered.body.rstrip() + f"\n\nEvent {event.event_type} at {event.occurred_at:%Y-%m-%d %H:%M:%S %Z}.\n"
    )
    return rendered


def _execution_facts(execution_id: uuid.UUID | None) -> tuple[JobExecution | None, StepExecution | None]:
    if execution_id is None:
        return None, None
    execution = JobExecution.objects.select_related("job").filter(pk=execution_id).first()
    if execution is None:
        return None, None
    failed = (
        StepExecution.objects.filter(job_execution_id=execution.pk, state="failed")
        .order_by("-completed_at", "-step_order")
        .first()
    )
    return execution, failed


def _render_job(event: RelayedEvent, classified: Classified) -> Rendered:
    execution_id = (
        event.entity_id if event.entity_type == "job_execution" else _uuid(event.payload.get("job_execution_id"))
    )
    execution, failed_step = _execution_facts(execution_id)
    job_name = execution.job.name if execution and execution.job_id else str(classified.subject_id)
    outcome = "completed" if classified.kind == EventKind.JOB_COMPLETED else "failed"
    error = (failed_step.error_message if failed_step else None) or (execution.error_message if execution else None)
    if classified.kind == EventKind.STEP_FAILED:
        error = event.payload.get("error") or error
    code = error_code(error)
    link = console_link("jobs_jobexecution", execution_id) if execution_id else ""
    step_label = None
    if failed_step is not None:
        step_label = f"step {failed_step.position or failed_step.step_order}"
        if failed_step.step_name:
            step_label += f" '{failed_step.step_name}'"
        if failed_step.type_key:
            step_label += f" ({failed_step.type_key})"
    if classified.kind == EventKind.STEP_FAILED:
        what = f"step {event.payload.get('position') or event.payload.get('step_order')} of job '{job_name}' failed"
    else:
        what = f"job '{job_name}' {outcome}"
    subject = f"[Courier] {what}" + (f": {code}" if code else "")
    lines = [what[0].upper() + what[1:] + "."]
    if execution is not None:
        lines.append(f"Execution: {execution.pk} (attempt {execution.attempt}, triggered by {execution.triggered_by})")
        if execution.duration_seconds is not None:
            lines.append(f"Duration: {execution.duration_seconds:.1f} s")
    if outcome == "failed" or classified.kind == EventKind.STEP_FAILED:
        if step_label:
            lines.append(f"Failed step: {step_label}")
        if error:
            lines.append(f"Error: {error}")
    if link:
        lines.append(f"Console: {link}")
    payload: dict[str, Any] = {
        "job": {"id": str(classified.subject_id), "name": job_name},
        "execution": {
            "id": str(execution_id) if execution_id else None,
            "state": execution.state if execution else None,
            "attempt": execution.attempt if execution else None,
            "triggered_by": execution.triggered_by if execution else None,
            "link": link,
        },
        "link": link,
    }
    if outcome == "failed" or classified.kind == EventKind.STEP_FAILED:
        payload["failed_step"] = (
            {
                "order": failed_step.step_order,
                "position": failed_step.position,
                "name": failed_step.step_name,
                "type": failed_step.type_key,
            }
            if failed_step
            else None
        )
        payload["error"] = {"code": code, "message": error}
    return Rendered(subject, "\n".join(lines), payload)


def _render_chain(event: RelayedEvent, classified: Classified) -> Rendered:
    execution = ChainExecution.objects.select_related("chain").filter(pk=event.entity_id).first()
    name = execution.chain.name if execution and execution.chain_id else str(classified.subject_id)
    error = event.payload.get("error") or (getattr(execution, "error_message", None) if execution else None)
    code = error_code(error)
    link = console_link("jobs_chainexecution", event.entity_id)
    subject = f"[Courier] chain '{name}' failed" + (f": {code}" if code else "")
    body = f"Chain '{name}' failed.\nChain execution: {event.entity_id}\n" + (f"Error: {error}\n" if error else "")
    body += f"Console: {link}"
    payload = {
        "chain": {"id": str(classified.subject_id), "name": name},
        "chain_execution": {"id": str(event.entity_id), "link": link},
        "error": {"code": code, "message": error},
        "link": link,
    }
    return Rendered(subject, body, payload)


def _render_monitor(event: RelayedEvent, classified: Classified) -> Rendered:
    monitor = FileMonitor.all_objects.filter(pk=event.entity_id).first()
    name = monitor.name if monitor else str(event.entity_id)
    error = event.payload.get("error")
    code = error_code(error)
    link = console_link("monitors_filemonitor", event.entity_id)
    failures = event.payload.get("failure_count")
    subject = f"[Courier] monitor '{name}' entered error" + (f": {code}" if code else "")
    body = f"File monitor '{name}' stopped polling after {failures} failures in a row.\n"
    body += (f"Error: {error}\n" if error else "") + f"Console: {link}"
    payload = {
        "monitor": {"id": str(event.entity_id), "name": name},
        "error": {"code": code, "message": error},
        "link": link,
    }
    return Rendered(subject, body, payload)


def _render_key(event: RelayedEvent, classified: Classified) -> Rendered:
    key = PgpKey.all_objects.filter(pk=event.entity_id).first()
    name = key.name if key else str(event.entity_id)
    expires = f"{key.expires_at:%Y-%m-%d %H:%M %Z}" if key and key.expires_at else "unknown"
    state = event.payload.get("to")
    link = console_link("keystore_pgpkey", event.entity_id)
    if state == "expiring":
        subject = f"[Courier] PGP key '{name}' expires {expires}"
        body = f"PGP key '{name}' expires at {expires}: replace it before partners' files can no longer be read.\n"
    else:
        subject = f"[Courier] PGP key '{name}' retired"
        body = f"PGP key '{name}' was retired (expiry {expires}); steps using it now fail with E4003.\n"
    body += f"Console: {link}"
    payload = {"key": {"id": str(event.entity_id), "name": name, "status": state, "expires_at": expires}, "link": link}
    return Rendered(subject, body, payload)


def _render_host_key(event: RelayedEvent, classified: Classified) -> Rendered:
    payload = event.payload or {}
    link = console_link("connections_connection", event.entity_id)
    endpoint = f"{payload.get('host', '?')}:{payload.get('port', '?')}"
    trusted = payload.get("trusted") or []
    change = "changed" if trusted else "is new and not approved"
    subject = f"[Courier] host key of {endpoint} {change}: approval needed [E3002]"
    body = (
        f"The SSH host key offered by {endpoint} {change}.\nOffered: {payload.get('fingerprint', '?')} "
        f"({payload.get('key_type', '?')})\nTrusted: {', '.join(trusted) or 'none'}\n"
        "Courier refuses to connect until an Admin approves the new key (or the partner fixes the server).\n"
        f"Console: {link}"
    )
    data = {
        "connection": {"id": str(event.entity_id), "endpoint": endpoint},
        "host_key": {"offered": payload.get("fingerprint"), "key_type": payload.get("key_type"), "trusted": trusted},
        "error": {"code": "E3002", "message": subject},
        "link": link,
    }
    return Rendered(subject, body, data)


def _render_generic(event: RelayedEvent, classified: Classified) -> Rendered:
    payload = event.payload or {}
    what = EventKind(classified.kind).label
    detail = payload.get("error") or payload.get("message") or ""
    table = payload.get("table") or payload.get("partition") or ""
    subject = f"[Courier] {what}" + (f": {table}" if table else "")
    body = f"{what}." + (f"\nTable: {table}" if table else "") + (f"\nError: {detail}" if detail else "")
    body += f"\nPartition health: {settings.COURIER_CONSOLE_URL}/health/partitions"
    return Rendered(
        subject, body, {"details": payload, "error": {"code": error_code(detail), "message": detail or None}}
    )


_RENDERERS = {
    EventKind.JOB_FAILED: _render_job,
    EventKind.JOB_COMPLETED: _render_job,
    EventKind.STEP_FAILED: _render_job,
    EventKind.CHAIN_FAILED: _render_chain,
    EventKind.MONITOR_ERROR: _render_monitor,
    EventKind.KEY_EXPIRING: _render_key,
    EventKind.KEY_RETIRED: _render_key,
    EventKind.HOST_KEY_CHANGED: _render_host_key,
}
