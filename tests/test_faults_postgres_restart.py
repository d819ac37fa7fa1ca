"""A PostgreSQL restart under load: workers, beat and web reconnect, and no execution, fire or audit row is lost."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection, transaction

from audit.models import AuditLogEntry
from courier_site.db import OutageTolerance, conninfo_for
from jobs import scheduling
from jobs.engine import control
from jobs.engine.recovery import recover_lost_executions
from jobs.models import JobSchedule
from tests.celery_support import CeleryCluster, LiveDatabase, wait_for
from tests.engine_support import make_job
from tests.fault_support import PrivatePostgres, django_connected_to, http_status, migrate, seconds_until, start_web

pytestmark = pytest.mark.celery

OUTAGE_SECONDS = 5
RUNS = 5  # executions whose first step runs across the outage
SHORT_STEPS = 16  # steps of a quarter second: several start and end while the database is away
SCHEDULES = 3
FINAL = ("completed", "failed", "cancelled")


@dataclass
class Restart:
    """What the scenario saw; each test below asserts one part of it."""

    database: LiveDatabase
    runs: list[str]
    stepping_run: str  # the execution of many short steps
    scheduled_job_id: str
    back_at: datetime
    recovered_at_restart: list[str]  # what crash recovery took for lost the moment the server was back
    health_back_after: float | None  # seconds after the server was up again, None when never
    new_run_completed_after: float | None
    runs_ended_after: float | None
    schedules_fired_after_restart: int


def states(database: LiveDatabase, ids: list[str]) -> dict[str, str]:
    rows = database.scalar("SELECT json_object_agg(id, state) FROM job_executions WHERE id = ANY(%s::uuid[])", (ids,))
    return dict(rows or {})


def schedules_fired_after(database: LiveDatabase, job_id: str, moment: datetime) -> int:
    """How many of the job's schedules fired an instant later than moment."""
    return database.scalar(
        "SELECT count(DISTINCT context_snapshot->'values'->>'trigger.schedule_id') FROM job_executions"
        " WHERE job_id = %s AND (context_snapshot->'values'->>'trigger.scheduled_for')::timestamptz > %s",
        (job_id, moment),
    )


@pytest.fixture(scope="module")
def restart(django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: Any, redis_url: str) -> Iterator[Restart]:
    """Executions running, schedules firing every 3 s, then `pg_ctl -m fast stop`, 5 s away, start again."""
    base = tmp_path_factory.mktemp("postgres-restart")
    postgres = PrivatePostgres(base)
    cluster: CeleryCluster | None = None
    saved_roots = (settings.COURIER_DATA_DIR, settings.COURIER_ALLOWED_ROOTS)
    saved_timeout = settings.COURIER_HEARTBEAT_TIMEOUT
    settings.COURIER_DATA_DIR = base / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    redis.Redis.from_url(redis_url).flushdb()
    try:
        postgres.initialise()
        postgres.start()
        database = postgres.create_database()
        migrate(database)
        database.execute("UPDATE system_settings SET value = '20' WHERE key = 'job.concurrency_limit'")
        cluster = CeleryCluster(database, redis_url, base / "data", base)
        with django_db_blocker.unblock(), django_connected_to(database):
            cluster.start_worker("w1", concurrency=10)
            cluster.start_beat()
            _web, web = start_web(cluster)
            wait_for(lambda: http_status(f"{web}/health/") == 200, 30, "the web's /health/ to answer 200")

            # The first step is running when the database goes away, and ends while it is away.
            long_job = make_job([("test.sleep", {"seconds": 4}), ("test.sleep", {"seconds": 1})], name="long")
            runs = [str(control.enqueue(long_job, triggered_by="manual:tester").pk) for _ in range(RUNS)]
            stepping_job = make_job([("test.sleep", {"seconds": 0.25})] * SHORT_STEPS, name="stepping")
            stepping_run = str(control.enqueue(stepping_job, triggered_by="manual:tester").pk)
            scheduled_job = make_job([("test.sleep", {"seconds": 0.1})], name="scheduled")
            for _ in range(SCHEDULES):
                schedule = JobSchedule(job=scheduled_job, schedule_type="cron", cron_expression="*/3 * * * * ?")
                scheduling.check(schedule)
                scheduling.refresh(schedule)
                schedule.save()
            wait_for(
                lambda: (
                    database.scalar(
                        "SELECT count(*) FROM step_executions WHERE job_execution_id = ANY(%s::uuid[])"
                        " AND step_order = 0 AND state = 'running'",
                        (runs,),
                    )
                    == RUNS
                ),
                30,
                "every long execution to be in its first step",
            )
            time.sleep(0.5)

            postgres.stop("fast")
            time.sleep(OUTAGE_SECONDS)
            postgres.start()
            back_at = datetime.now(UTC)
            connection.close()  # this process's own session died with the server
            # The every-30s recovery sweep may run at this very moment, before any worker could
            # report again: with the workers' heartbeat timeout, the runs' heartbeats look expired.
            settings.COURIER_HEARTBEAT_TIMEOUT = 3
            try:
                recovered_at_restart = recover_lost_executions()
            finally:
                settings.COURIER_HEARTBEAT_TIMEOUT = saved_timeout

            health_back_after = seconds_until(lambda: http_status(f"{web}/health/") == 200, 20)
            after = str(control.enqueue(scheduled_job, triggered_by="manual:tester").pk)
            new_run_completed_after = seconds_until(lambda: states(database, [after]).get(after) == "completed", 30)
            runs_ended_after = seconds_until(
                lambda: all(state in FINAL for state in states(database, [*runs, stepping_run]).values()), 60
            )
            seconds_until(lambda: schedules_fired_after(database, scheduled_job.pk, back_at) == SCHEDULES, 15)
            database.execute("UPDATE job_schedules SET is_enabled = false")
        cluster.stop_all()
        yield Restart(
            database=database,
            runs=runs,
            stepping_run=stepping_run,
            scheduled_job_id=str(scheduled_job.pk),
            back_at=back_at,
            recovered_at_restart=recovered_at_restart,
            health_back_after=health_back_after,
            new_run_completed_after=new_run_completed_after,
            runs_ended_after=runs_ended_after,
            schedules_fired_after_restart=schedules_fired_after(database, scheduled_job.pk, back_at),
        )
    finally:
        if cluster is not None:
            cluster.stop_all()
        postgres.destroy()
        settings.COURIER_DATA_DIR, settings.COURIER_ALLOWED_ROOTS = saved_roots


def test_the_web_reports_healthy_again_soon_after_the_database_is_back(restart: Restart) -> None:
    # /health/ covers the database, Redis and fresh worker and beat heartbeats.
    assert restart.health_back_after is not None and restart.health_back_after < 20


def test_crash_recovery_takes_no_running_execution_for_lost_just_after_the_restart(restart: Restart) -> None:
    assert restart.recovered_at_restart == []


def test_workers_run_an_execution_queued_after_the_restart(restart: Restart) -> None:
    assert restart.new_run_completed_after is not None and restart.new_run_completed_after < 30


def test_beat_keeps_firing_every_schedule_after_the_restart(restart: Restart) -> None:
    assert restart.schedules_fired_after_restart == SCHEDULES


def test_executions_running_across_the_restart_complete_each_step_once(restart: Restart) -> None:
    database = restart.database
    assert restart.runs_ended_after is not None, states(database, restart.runs)
    # The step that ended while the database was away was checkpointed once it was back.
    assert set(states(database, restart.runs).values()) == {"completed"}, database.scalar(
        "SELECT json_agg(error_message) FROM job_executions WHERE id = ANY(%s::uuid[])", (restart.runs,)
    )
    rows = database.scalar(
        "SELECT json_agg(json_build_array(step_order, state) ORDER BY job_execution_id, step_order)"
        " FROM step_executions WHERE job_execution_id = ANY(%s::uuid[])",
        (restart.runs,),
    )
    assert rows == [[0, "completed"], [1, "completed"]] * RUNS


def test_an_execution_stepping_through_the_restart_runs_every_step_once(restart: Restart) -> None:
    database = restart.database
    assert states(database, [restart.stepping_run]) == {restart.stepping_run: "completed"}
    rows = database.scalar(
        "SELECT json_agg(json_build_array(step_order, state) ORDER BY step_order) FROM step_executions"
        " WHERE job_execution_id = %s",
        (restart.stepping_run,),
    )
    assert rows == [[order, "completed"] for order in range(SHORT_STEPS)]


def test_every_transition_across_the_restart_is_audited_with_its_event(restart: Restart) -> None:
    database = restart.database
    transitions = database.scalar(
        "SELECT json_object_agg(entity_id, operations) FROM (SELECT entity_id,"
        " json_agg(operation ORDER BY performed_at) AS operations FROM audit_log_entries"
        " WHERE entity_type = 'job_execution' AND entity_id = ANY(%s::uuid[]) GROUP BY entity_id) grouped",
        (restart.runs,),
    )
    assert transitions == {run: ["queued", "running", "completed"] for run in restart.runs}
    step_audits = database.scalar(
        "SELECT json_agg(operation ORDER BY operation) FROM audit_log_entries"
        " WHERE entity_type = 'step_execution' AND details->>'job_execution_id' = ANY(%s)",
        (restart.runs,),
    )
    assert step_audits == ["completed"] * (2 * RUNS) + ["running"] * (2 * RUNS)
    # Each of those audit rows has its domain event.
    assert (
        database.scalar(
            "SELECT count(*) FROM domain_events WHERE entity_id IN (SELECT entity_id FROM audit_log_entries"
            " WHERE entity_id = ANY(%s::uuid[]) OR details->>'job_execution_id' = ANY(%s))",
            (restart.runs, restart.runs),
        )
        == 3 * RUNS + 2 * 2 * RUNS
    )


def test_no_schedule_fires_twice_for_one_instant_and_every_fire_is_audited(restart: Restart) -> None:
    database = restart.database
    fires, instants = database.scalar(
        "SELECT json_build_array(count(*), count(DISTINCT (context_snapshot->'values'->>'trigger.schedule_id',"
        " context_snapshot->'values'->>'trigger.scheduled_for'))) FROM job_executions"
        " WHERE job_id = %s AND triggered_by = 'schedule'",
        (restart.scheduled_job_id,),
    )
    assert fires > SCHEDULES  # fires before and after the restart
    assert fires == instants
    audited = database.scalar(
        "SELECT count(*) FROM audit_log_entries WHERE entity_type = 'job_schedule' AND operation = 'fired'"
    )
    assert audited == fires


def cut_off() -> None:
    """End this process's database session from another one, as a restart or failover would."""
    with psycopg.connect(conninfo_for(), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (connection.connection.info.backend_pid,))


@pytest.mark.django_db(transaction=True)
def test_a_write_cut_off_before_its_commit_is_made_on_a_new_connection() -> None:
    entity = uuid.uuid4()
    attempts = 0

    def write() -> None:
        nonlocal attempts
        attempts += 1
        with transaction.atomic():
            AuditLogEntry.objects.record(entity_type="job_execution", entity_id=entity, operation="running")
            if attempts == 1:
                cut_off()
                AuditLogEntry.objects.record(entity_type="job_execution", entity_id=entity, operation="running")

    OutageTolerance("test").retry("writing", write, lambda: AuditLogEntry.objects.filter(entity_id=entity).exists())

    assert attempts == 2
    assert AuditLogEntry.objects.filter(entity_id=entity).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_write_whose_commit_went_through_before_the_session_was_lost_is_not_made_twice() -> None:
    entity = uuid.uuid4()
    attempts = 0

    def write() -> None:
        nonlocal attempts
        attempts += 1
        with transaction.atomic():
            AuditLogEntry.objects.record(entity_type="job_execution", entity_id=entity, operation="running")
        if attempts == 1:
            # Committed, but the caller never hears so: its session is gone before the reply.
            cut_off()
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")

    OutageTolerance("test").retry("writing", write, lambda: AuditLogEntry.objects.filter(entity_id=entity).exists())

    assert attempts == 1
    assert AuditLogEntry.objects.filter(entity_id=entity).count() == 1
