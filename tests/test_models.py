"""Every table through the ORM: a row written and read back, partitions, JSON, soft delete, updated_at."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from audit.models import AuditLogEntry, DomainEvent
from connections.models import Connection, KnownHost
from courier_site.models import ProcessHeartbeat, SchemaVersion
from jobs.models import (
    ChainExecution,
    ChainSchedule,
    Job,
    JobChain,
    JobChainMember,
    JobDependency,
    JobExecution,
    JobSchedule,
    JobStep,
    JobVersion,
    StepExecution,
)
from keystore.models import PgpKey, PublicKeyShareToken, SshKey
from monitors.models import FileMonitor, MonitorDirectoryState, MonitorFileLog, MonitorJobBinding
from system.models import SystemSetting
from tags.models import EntityTag, Tag

pytestmark = pytest.mark.django_db


def partition_of(table: str, pk: uuid.UUID) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT tableoid::regclass::text FROM {table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


@pytest.fixture
def graph() -> dict[str, object]:
    """One row in each of the 25 tables of the reference schema, linked as the product links them."""
    job = Job.objects.create(name="Invoices", description="ACME invoices")
    step = JobStep.objects.create(
        job=job,
        step_order=0,
        name="list",
        type_key="file.copy",
        configuration={"source_path": "a", "destination_path": "b/"},
    )
    version = JobVersion.objects.create(job=job, version_number=1, config_snapshot={"steps": []}, created_by="alice")
    chain = JobChain.objects.create(name="Month end")
    member = JobChainMember.objects.create(chain=chain, job=job, execution_order=0)
    chain_execution = ChainExecution.objects.create(chain=chain, triggered_by="manual:alice")
    execution = JobExecution.objects.create(
        job=job,
        job_version_number=1,
        triggered_by="manual:alice",
        chain_execution=chain_execution,
        context_snapshot={"values": {"k": [1]}},
    )
    step_execution = StepExecution.objects.create(
        job_execution=execution, job_step=step, step_order=0, output_data={"copied_files": ["/x"]}
    )
    other = Job.objects.create(name="Downstream")
    dependency = JobDependency.objects.create(upstream_job=job, downstream_job=other)
    job_schedule = JobSchedule.objects.create(job=job, cron_expression="0 6 * * *")
    chain_schedule = ChainSchedule.objects.create(
        chain=chain, schedule_type="one_shot", run_at=timezone.now() + timedelta(days=1)
    )
    ssh_key = SshKey.objects.create(
        name="acme",
        key_type="ed25519",
        public_key_data="ssh-ed25519 AAAA",
        private_key_data=b"\x01\x02",
        fingerprint=f"SHA256:{uuid.uuid4().hex}",
        created_by="alice",
    )
    conn = Connection.objects.create(
        name="ACME SFTP",
        group="acme",
        protocol="sftp",
        host="sftp.acme.test",
        port=22,
        auth_method="ssh_key",
        username="courier",
        ssh_key=ssh_key,
        ssh_algorithms={"ciphers": ["aes256-gcm@openssh.com"]},
    )
    known_host = KnownHost.objects.create(
        connection=conn, fingerprint="SHA256:abc", key_type="ssh-ed25519", approved_by="system"
    )
    pgp_key = PgpKey.objects.create(
        name="ACME 2026",
        fingerprint=uuid.uuid4().hex + "abcdefgh",
        short_key_id="0123456789ABCDEF",
        algorithm="rsa_3072",
        key_type="public_only",
        public_key_data="-----BEGIN PGP PUBLIC KEY BLOCK-----",
        created_by="alice",
    )
    token = PublicKeyShareToken.objects.create(
        token_hash="f" * 64,
        key_type="pgp",
        key_id=pgp_key.pk,
        expires_at=timezone.now() + timedelta(days=7),
        created_by="alice",
    )
    monitor = FileMonitor.objects.create(
        name="Inbox", watch_target={"type": "local", "path": "/data/in"}, trigger_events=1, file_patterns=["*.csv"]
    )
    binding = MonitorJobBinding.objects.create(monitor=monitor, job=job)
    snapshot = MonitorDirectoryState.objects.create(monitor=monitor, directory_listing=[{"name": "a.csv"}])
    file_log = MonitorFileLog.objects.create(
        monitor=monitor,
        file_path="/data/in/a.csv",
        file_size=10,
        last_modified=timezone.now(),
        execution_id=execution.pk,
    )
    tag = Tag.objects.create(name="Finance", color="#2e7d32")
    entity_tag = EntityTag.objects.create(tag=tag, entity_type="job", entity_id=job.pk)
    audit = AuditLogEntry.objects.create(
        entity_type="job", entity_id=job.pk, operation="created", performed_by="alice", details={"name": "Invoices"}
    )
    event = DomainEvent.objects.create(
        event_type="JobCreated", entity_type="job", entity_id=job.pk, payload={"name": "Invoices"}
    )
    setting = SystemSetting.objects.create(key="test.example", value="1", updated_by="alice")
    return {name: value for name, value in locals().items() if name != "other"}


def test_every_table_round_trips_a_row(graph: dict[str, object]) -> None:
    tables = {type(row)._meta.db_table for row in graph.values()}
    assert len(tables) == 25
    for row in graph.values():
        fresh = type(row)._base_manager.get(pk=row.pk)
        assert fresh.pk == row.pk


def test_partitioned_rows_land_in_the_current_month(graph: dict[str, object]) -> None:
    month = timezone.now().strftime("%Y_%m")
    for key, table in [
        ("execution", "job_executions"),
        ("step_execution", "step_executions"),
        ("file_log", "monitor_file_log"),
        ("audit", "audit_log_entries"),
        ("event", "domain_events"),
    ]:
        assert partition_of(table, graph[key].pk) == f"{table}_{month}"


def test_json_columns_come_back_as_python_structures(graph: dict[str, object]) -> None:
    assert JobExecution.objects.get(pk=graph["execution"].pk).context_snapshot == {"values": {"k": [1]}}
    assert FileMonitor.objects.get(pk=graph["monitor"].pk).file_patterns == ["*.csv"]
    assert Job.objects.get(pk=graph["job"].pk).failure_policy["type"] == "stop"
    assert StepExecution.objects.get(pk=graph["step_execution"].pk).output_data == {"copied_files": ["/x"]}


def test_group_column_and_foreign_keys_round_trip(graph: dict[str, object]) -> None:
    conn = Connection.objects.select_related("ssh_key").get(pk=graph["conn"].pk)
    assert conn.group == "acme" and conn.ssh_key.name == "acme"
    step_execution = StepExecution.objects.select_related("job_execution__job").get(pk=graph["step_execution"].pk)
    assert step_execution.job_execution.job.name == "Invoices"


def test_database_defaults_are_returned_on_insert(graph: dict[str, object]) -> None:
    job = graph["job"]
    assert job.created_at is not None and job.current_version == 1
    assert graph["execution"].state == "created" and graph["execution"].created_at is not None


def test_updated_at_is_maintained_by_the_database_even_for_raw_updates(graph: dict[str, object]) -> None:
    job = graph["job"]
    with connection.cursor() as cursor:
        # Even an explicit attempt to back-date it is overridden by the trigger.
        cursor.execute(
            "UPDATE jobs SET description = 'raw', updated_at = now() - interval '1 day' WHERE id = %s", [job.pk]
        )
        cursor.execute("SELECT updated_at = now() FROM jobs WHERE id = %s", [job.pk])
        assert cursor.fetchone()[0] is True


def test_updated_at_advances_on_save(graph: dict[str, object]) -> None:
    job = graph["job"]
    before = job.updated_at
    job.description = "edited"
    job.save()
    assert job.updated_at > before


def test_soft_delete_hides_rows_but_keeps_them(graph: dict[str, object]) -> None:
    job = graph["job"]
    job.delete()
    assert not Job.objects.filter(pk=job.pk).exists()
    kept = Job.all_objects.get(pk=job.pk)
    assert kept.is_deleted and kept.deleted_at is not None
    Tag.objects.filter(pk=graph["tag"].pk).delete()
    assert Tag.all_objects.get(pk=graph["tag"].pk).is_deleted


def test_platform_tables_are_mapped_too() -> None:
    assert SchemaVersion.objects.filter(script_name="0001_jobs.sql").exists()
    ProcessHeartbeat.objects.create(
        process_name="w@test",
        kind="worker",
        hostname="test",
        pid=1,
        started_at=timezone.now(),
        last_seen_at=timezone.now(),
    )
    assert ProcessHeartbeat.objects.get(pk="w@test").kind == "worker"


def test_choices_match_the_database_checks() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'ck_job_executions_state'")
        definition = cursor.fetchone()[0]
    for value, _ in JobExecution.State.choices:
        assert f"'{value}'" in definition
