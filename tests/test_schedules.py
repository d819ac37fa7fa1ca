"""Schedules: next fire times, firing on a frozen clock, misfires, one-shots, refusals, two tick runners at once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection

from audit.models import AuditLogEntry, DomainEvent
from jobs import cron, scheduling
from jobs.models import ChainExecution, JobChain, JobChainMember, JobExecution, JobSchedule
from tests.engine_support import make_job

OK = [("test.write", {"name": "out.txt", "text": "done"})]
START = datetime(2026, 3, 2, 8, 0, 0, tzinfo=UTC)  # a Monday


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]


def cron_schedule(job, expression: str, *, time_zone: str | None = None, now: datetime = START) -> JobSchedule:
    schedule = JobSchedule(job=job, schedule_type="cron", cron_expression=expression, time_zone=time_zone)
    scheduling.check(schedule, now=now)
    scheduling.refresh(schedule, now)
    schedule.save()
    return schedule


def runs_of(job) -> list[JobExecution]:
    return list(JobExecution.objects.filter(job=job).order_by("created_at"))


@pytest.mark.django_db
def test_next_fire_at_is_the_first_instant_after_saving() -> None:
    schedule = cron_schedule(make_job(OK), "*/15 * * * *")

    assert schedule.next_fire_at == datetime(2026, 3, 2, 8, 15, tzinfo=UTC)


@pytest.mark.django_db
def test_quartz_seconds_and_time_zone_are_honoured() -> None:
    schedule = cron_schedule(make_job(OK), "30 0 9 ? * MON-FRI", time_zone="Europe/Berlin")

    # 09:00:30 in Berlin (UTC+1 in March before the change) is 08:00:30 UTC, just after START.
    assert schedule.next_fire_at == datetime(2026, 3, 2, 8, 0, 30, tzinfo=UTC)
    assert [moment.isoformat() for moment in scheduling.upcoming(schedule, 2, now=START)] == [
        "2026-03-02T08:00:30+00:00",
        "2026-03-03T08:00:30+00:00",
    ]


@pytest.mark.django_db
def test_a_due_schedule_fires_once_and_advances_on_a_frozen_clock() -> None:
    job = make_job(OK)
    schedule = cron_schedule(job, "*/5 * * * *")

    with time_machine.travel(START + timedelta(minutes=5, seconds=1), tick=False):
        first = scheduling.fire_due()
        again = scheduling.fire_due()

    assert len(first) == 1 and again == []
    [execution] = runs_of(job)
    assert execution.triggered_by == "schedule"
    assert execution.context_snapshot["values"]["trigger.scheduled_for"] == "2026-03-02T08:05:00+00:00"
    schedule.refresh_from_db()
    assert schedule.last_fired_at == START + timedelta(minutes=5, seconds=1)
    assert schedule.next_fire_at == START + timedelta(minutes=10)
    fired = AuditLogEntry.objects.get(entity_id=schedule.pk, operation="fired")
    assert fired.details["lateness_ms"] == 1000
    assert DomainEvent.objects.filter(entity_id=schedule.pk, event_type="ScheduleFired").count() == 1


@pytest.mark.django_db
def test_nothing_fires_before_the_instant() -> None:
    job = make_job(OK)
    cron_schedule(job, "*/5 * * * *")

    with time_machine.travel(START + timedelta(minutes=4, seconds=59), tick=False):
        assert scheduling.fire_due() == []
    assert runs_of(job) == []


@pytest.mark.django_db
def test_a_misfire_after_downtime_fires_once_not_once_per_missed_instant() -> None:
    job = make_job(OK)
    schedule = cron_schedule(job, "* * * * *")

    # Beat was down for an hour: sixty instants passed.
    with time_machine.travel(START + timedelta(hours=1, seconds=20), tick=False):
        scheduling.fire_due()
        scheduling.fire_due()

    assert len(runs_of(job)) == 1
    schedule.refresh_from_db()
    assert schedule.next_fire_at == START + timedelta(hours=1, minutes=1)
    fired = AuditLogEntry.objects.get(entity_id=schedule.pk, operation="fired")
    # 08:01 fires; the 59 instants from 08:02 to 09:00 are recorded as passed over.
    assert fired.details["scheduled_for"].startswith("2026-03-02T08:01:00")
    assert fired.details["missed_instants"] == 59


@pytest.mark.django_db
def test_a_one_shot_fires_once_and_disables_itself() -> None:
    job = make_job(OK)
    schedule = JobSchedule(job=job, schedule_type="one_shot", run_at=START + timedelta(minutes=30))
    scheduling.check(schedule, now=START)
    scheduling.refresh(schedule, START)
    schedule.save()

    with time_machine.travel(START + timedelta(minutes=31), tick=False):
        scheduling.fire_due()
    with time_machine.travel(START + timedelta(days=2), tick=False):
        scheduling.fire_due()

    assert len(runs_of(job)) == 1
    schedule.refresh_from_db()
    assert schedule.is_enabled is False and schedule.next_fire_at is None


@pytest.mark.django_db
def test_a_past_one_shot_and_an_invalid_cron_are_refused() -> None:
    job = make_job(OK)
    with pytest.raises(scheduling.PastOneShot, match=r"\[E2013\].*has passed"):
        scheduling.check(JobSchedule(job=job, schedule_type="one_shot", run_at=START - timedelta(minutes=1)), now=START)
    with pytest.raises(cron.InvalidCronExpression, match=r"\[E2012\]"):
        scheduling.check(JobSchedule(job=job, schedule_type="cron", cron_expression="61 * * * *"), now=START)
    with pytest.raises(cron.InvalidCronExpression, match=r"\[E2012\].*Mars/Olympus"):
        scheduling.check(
            JobSchedule(job=job, schedule_type="cron", cron_expression="* * * * *", time_zone="Mars/Olympus"), now=START
        )


@pytest.mark.django_db
def test_a_disabled_job_is_not_fired_but_its_schedule_keeps_its_cadence() -> None:
    job = make_job(OK)
    schedule = cron_schedule(job, "*/5 * * * *")
    job.is_enabled = False
    job.save()

    with time_machine.travel(START + timedelta(minutes=5), tick=False):
        scheduling.fire_due()

    assert runs_of(job) == []
    schedule.refresh_from_db()
    assert schedule.next_fire_at == START + timedelta(minutes=10)
    refused = AuditLogEntry.objects.get(entity_id=schedule.pk, operation="fire_refused")
    assert "disabled" in refused.details["refused"]


@pytest.mark.django_db
def test_a_job_without_steps_is_not_fired() -> None:
    job = make_job([])
    schedule = cron_schedule(job, "*/5 * * * *")

    with time_machine.travel(START + timedelta(minutes=5), tick=False):
        scheduling.fire_due()

    assert runs_of(job) == []
    assert "no steps" in AuditLogEntry.objects.get(entity_id=schedule.pk, operation="fire_refused").details["refused"]


@pytest.mark.django_db
def test_a_disabled_schedule_does_not_fire_and_enabling_does_not_make_up_missed_instants() -> None:
    job = make_job(OK)
    schedule = cron_schedule(job, "*/5 * * * *")
    scheduling.set_enabled(schedule, False, by="tester")

    with time_machine.travel(START + timedelta(minutes=20), tick=False):
        assert scheduling.fire_due() == []
        scheduling.set_enabled(schedule, True, by="tester")
        assert scheduling.fire_due() == []

    schedule.refresh_from_db()
    assert schedule.next_fire_at == START + timedelta(minutes=25)
    assert runs_of(job) == []


@pytest.mark.django_db
def test_a_chain_schedule_starts_a_chain_execution() -> None:
    from jobs.models import ChainSchedule

    chain = JobChain.objects.create(name="Scheduled chain")
    JobChainMember.objects.create(chain=chain, job=make_job(OK), execution_order=0)
    schedule = ChainSchedule(chain=chain, schedule_type="cron", cron_expression="0 9 * * *")
    scheduling.refresh(schedule, START)
    schedule.save()

    with time_machine.travel(START + timedelta(hours=1), tick=False):
        [result] = scheduling.fire_due()

    execution = ChainExecution.objects.get(pk=result.execution_id)
    assert execution.triggered_by == "schedule" and execution.state == "running"
    assert JobExecution.objects.filter(chain_execution_id=execution.pk, state="queued").count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_tick_runners_at_once_fire_each_instant_exactly_once() -> None:
    jobs = [make_job(OK, name=f"parallel-{index}") for index in range(12)]
    past = datetime.now(UTC) - timedelta(seconds=5)
    for job in jobs:
        JobSchedule.objects.create(job=job, schedule_type="cron", cron_expression="0 0 1 1 *", next_fire_at=past)
    barrier = threading.Barrier(2)
    fired: list[int] = []
    errors: list[BaseException] = []

    def runner() -> None:
        try:
            barrier.wait()
            fired.append(len(scheduling.fire_due()))
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert sum(fired) == 12
    assert JobExecution.objects.filter(job__in=jobs, triggered_by="schedule").count() == 12
    for job in jobs:
        assert JobExecution.objects.filter(job=job).count() == 1


@pytest.mark.django_db
def test_tick_fires_an_instant_due_within_its_window() -> None:
    job = make_job(OK)
    schedule = JobSchedule.objects.create(
        job=job,
        schedule_type="cron",
        cron_expression="* * * * * ? *",
        next_fire_at=datetime.now(UTC) + timedelta(milliseconds=300),
    )

    results = scheduling.tick(1.0)

    assert [result.schedule_id for result in results][:1] == [str(schedule.pk)]
    assert results[0].lateness_seconds < 0.5
