"""Schedules of jobs and chains: checks, next fire times, and the beat tick that fires them (SPEC 4.5)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Min
from django.utils import timezone

from audit.models import AuditLogEntry
from courier_site.errors import CourierError
from jobs import chains, cron
from jobs.engine import control
from jobs.models import ChainSchedule, JobSchedule, Schedule

logger = logging.getLogger(__name__)

# Schedules claimed per statement: bounds one transaction when many fall due together.
CLAIM_BATCH = 50
# Missed instants counted for the audit record after downtime, at most.
MISSED_COUNT_LIMIT = 1000


class PastOneShot(CourierError):
    code = "E2013"


def check(schedule: Schedule, *, now: datetime | None = None, run_at_changed: bool = True) -> None:
    """Refuse an invalid cron expression or time zone [E2012], or a one-shot in the past [E2013]."""
    now = now or timezone.now()
    if schedule.time_zone:
        schedule.time_zone = cron.validate_time_zone(schedule.time_zone)
    if schedule.schedule_type == "cron":
        if not (schedule.cron_expression or "").strip():
            raise cron.InvalidCronExpression("a cron schedule needs a cron expression")
        schedule.cron_expression = cron.parse(schedule.cron_expression).source
        schedule.run_at = None
    elif schedule.schedule_type == "one_shot":
        if schedule.run_at is None:
            raise PastOneShot("a one-shot schedule needs the date and time to run at")
        if run_at_changed and schedule.run_at <= now:
            raise PastOneShot(
                f"the one-shot time {schedule.run_at:%Y-%m-%d %H:%M:%S %Z} has passed; choose a time in the future"
            )
        schedule.cron_expression = None
    else:
        raise cron.InvalidCronExpression(f"unknown schedule type {schedule.schedule_type!r}")


def next_fire_after(schedule: Schedule, after: datetime) -> datetime | None:
    """The first instant strictly after `after` at which schedule fires, or None when it never will
    (disabled, a one-shot that fired, a Quartz year range that has run out)."""
    if not schedule.is_enabled:
        return None
    if schedule.schedule_type == "one_shot":
        if schedule.last_fired_at is not None:
            return None
        return schedule.run_at
    return cron.next_fire_time(schedule.cron_expression, after, tz=schedule.time_zone or None)


def upcoming(schedule: Schedule, count: int = 5, now: datetime | None = None) -> list[datetime]:
    """The next `count` fire times, for the console."""
    now = now or timezone.now()
    if schedule.schedule_type == "one_shot":
        return [schedule.run_at] if schedule.run_at and schedule.run_at > now and not schedule.last_fired_at else []
    if not schedule.cron_expression:
        return []
    return cron.next_fire_times(schedule.cron_expression, now, tz=schedule.time_zone or None, count=count)


def describe(schedule: Schedule) -> str:
    if schedule.schedule_type == "one_shot":
        return f"once at {schedule.run_at:%Y-%m-%d %H:%M:%S %Z}" if schedule.run_at else "once"
    try:
        text = cron.describe(schedule.cron_expression or "")
    except CourierError:
        return "invalid expression"
    return f"{text} ({schedule.time_zone})" if schedule.time_zone else f"{text} (UTC)"


def refresh(schedule: Schedule, now: datetime | None = None) -> None:
    """Set next_fire_at from the definition (after a save, an enable, or an import); no save."""
    now = now or timezone.now()
    schedule.next_fire_at = next_fire_after(schedule, now)


def set_enabled(schedule: Schedule, enabled: bool, *, by: Any) -> None:
    """Enable (next fire computed from now: missed instants are not made up) or disable a schedule."""
    with transaction.atomic():
        locked = type(schedule).objects.select_for_update().get(pk=schedule.pk)
        if locked.is_enabled == enabled:
            return
        one_shot_passed = (
            locked.schedule_type == "one_shot"
            and locked.last_fired_at is None
            and locked.run_at is not None
            and locked.run_at <= timezone.now()
        )
        if enabled and one_shot_passed:
            raise PastOneShot("this one-shot schedule's time has passed; set a new time to enable it")
        locked.is_enabled = enabled
        refresh(locked)
        locked.save()
        AuditLogEntry.objects.record(
            entity_type=entity_type(locked),
            entity_id=locked.pk,
            operation="enabled" if enabled else "disabled",
            performed_by=by,
            details={"next_fire_at": locked.next_fire_at},
        )
    schedule.is_enabled, schedule.next_fire_at = locked.is_enabled, locked.next_fire_at


def entity_type(schedule: Schedule) -> str:
    return "job_schedule" if hasattr(schedule, "job_id") else "chain_schedule"


@dataclass
class FireResult:
    schedule_id: str
    kind: str  # "job" or "chain"
    scheduled_for: datetime
    fired_at: datetime
    execution_id: str | None = None
    refused: str | None = None

    @property
    def lateness_seconds(self) -> float:
        return (self.fired_at - self.scheduled_for).total_seconds()


def _missed_instants(schedule: Schedule, scheduled_for: datetime, now: datetime) -> int:
    """How many more instants fell between the one being fired and now (beat was down)."""
    if schedule.schedule_type != "cron":
        return 0
    missed = 0
    cursor = scheduled_for
    while missed < MISSED_COUNT_LIMIT:
        following = cron.next_fire_time(schedule.cron_expression, cursor, tz=schedule.time_zone or None)
        if following is None or following > now:
            break
        cursor = following
        missed += 1
    return missed


def _trigger(schedule: Schedule, scheduled_for: datetime) -> str:
    """Queue the schedule's job execution or start its chain; returns the new execution id."""
    context = {"trigger.schedule_id": str(schedule.pk), "trigger.scheduled_for": scheduled_for.isoformat()}
    if hasattr(schedule, "job_id"):
        return str(control.enqueue(schedule.job, triggered_by="schedule", context=context).pk)
    return str(chains.trigger(schedule.chain, triggered_by="schedule", by="schedule", context=context).pk)


def _fire(schedule: Schedule, now: datetime) -> FireResult:
    """Fire one claimed schedule once and advance it; the caller holds its row lock."""
    scheduled_for = schedule.next_fire_at
    kind = "job" if hasattr(schedule, "job_id") else "chain"
    result = FireResult(str(schedule.pk), kind, scheduled_for, now)
    missed = _missed_instants(schedule, scheduled_for, now)
    try:
        with transaction.atomic():
            result.execution_id = _trigger(schedule, scheduled_for)
    except CourierError as error:
        # A disabled or stepless job, a disabled chain, unmet dependencies: the instant is
        # passed over (recorded), and the schedule keeps its cadence.
        result.refused = str(error)
    except Exception as error:
        logger.exception("schedule %s could not fire", schedule.pk)
        result.refused = f"could not fire: {error.__class__.__name__}"
    schedule.last_fired_at = now
    if schedule.schedule_type == "one_shot":
        schedule.is_enabled = False
        schedule.next_fire_at = None
    else:
        # From now, not from the missed instant: after downtime a schedule fires once.
        schedule.next_fire_at = cron.next_fire_time(schedule.cron_expression, now, tz=schedule.time_zone or None)
        if schedule.next_fire_at is None:  # a Quartz year field that has run out
            schedule.is_enabled = False
    schedule.save(update_fields=["last_fired_at", "next_fire_at", "is_enabled", "updated_at"])
    details: dict[str, Any] = {
        "scheduled_for": scheduled_for,
        "lateness_ms": int(result.lateness_seconds * 1000),
        "next_fire_at": schedule.next_fire_at,
        f"{kind}_id": str(getattr(schedule, f"{kind}_id")),
    }
    if missed:
        details["missed_instants"] = missed
    if result.refused:
        details["refused"] = result.refused
        AuditLogEntry.objects.record(
            entity_type=entity_type(schedule), entity_id=schedule.pk, operation="fire_refused", details=details
        )
    else:
        details["execution_id"] = result.execution_id
        AuditLogEntry.objects.record(
            entity_type=entity_type(schedule),
            entity_id=schedule.pk,
            operation="fired",
            details=details,
            event_type="ScheduleFired",
        )
    return result


def fire_due(now: datetime | None = None) -> list[FireResult]:
    """Fire every enabled schedule whose next_fire_at has come, each exactly once.

    Rows are claimed with FOR UPDATE SKIP LOCKED and advanced in the same transaction as
    the execution they queue, so two beat processes (or two overlapping ticks) never fire
    one instant twice: the second either skips the locked row or finds it advanced.
    """
    results: list[FireResult] = []
    for model, parent in ((JobSchedule, "job"), (ChainSchedule, "chain")):
        while True:
            moment = now or timezone.now()
            with transaction.atomic():
                due = list(
                    model.objects.select_for_update(skip_locked=True, of=("self",))
                    .select_related(parent)
                    .filter(is_enabled=True, next_fire_at__lte=moment)
                    .order_by("next_fire_at")[:CLAIM_BATCH]
                )
                for schedule in due:
                    results.append(_fire(schedule, now or timezone.now()))
            if len(due) < CLAIM_BATCH:
                break
    return results


def next_due_instant() -> datetime | None:
    """The earliest next_fire_at of any enabled schedule (ix_*_schedules_due)."""
    instants = [
        model.objects.filter(is_enabled=True).aggregate(first=Min("next_fire_at"))["first"]
        for model in (JobSchedule, ChainSchedule)
    ]
    instants = [instant for instant in instants if instant is not None]
    return min(instants) if instants else None


def tick(window_seconds: float) -> list[FireResult]:
    """One beat tick: fire what is due, then keep firing instants that fall due within the window.

    Beat sends a tick every window_seconds; waiting for instants inside the window keeps
    the lateness of a fire to the cost of a query rather than up to a whole tick.
    """
    deadline = time.monotonic() + window_seconds
    results = fire_due()
    while time.monotonic() < deadline:
        upcoming_instant = next_due_instant()
        if upcoming_instant is None:
            break
        wait = (upcoming_instant - timezone.now()).total_seconds()
        if wait > deadline - time.monotonic():
            break
        # A due row that another tick holds locked shows as due here until it commits.
        time.sleep(max(wait, 0.02))
        results.extend(fire_due())
    return results
