"""Export and import of job definitions, and the run_job command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.models import AuditLogEntry
from connections.models import Connection
from jobs.models import Job, JobExecution, JobVersion
from jobs.portability import ImportRefused, export_jobs, import_jobs
from tags.models import EntityTag, Tag
from tests.engine_support import make_job

pytestmark = pytest.mark.django_db


def test_export_then_import_elsewhere_recreates_the_definition(tmp_path: Path) -> None:
    job = make_job(
        [("flow.foreach", {"source": ["a"]}), ("flow.end", {})],
        name="Promote me",
        policy={"type": "retry_job", "max_retries": 2},
    )
    tag = Tag.objects.create(name="Finance")
    EntityTag.objects.create(tag=tag, entity_type="job", entity_id=job.pk)
    path = tmp_path / "definitions.json"
    call_command("export_definitions", "--output", str(path), "--job", "Promote me")
    document = json.loads(path.read_text())

    # Another environment: the job does not exist there yet.
    job.hard_delete()
    report = import_jobs(document, by="deployer")

    assert report["created"] == ["Promote me"]
    imported = Job.objects.get(name="Promote me")
    assert imported.failure_policy == {"type": "retry_job", "max_retries": 2}
    assert [s.type_key for s in imported.steps.order_by("step_order")] == ["flow.foreach", "flow.end"]
    assert EntityTag.objects.filter(entity_id=imported.pk, tag__name="Finance").exists()
    assert JobVersion.objects.get(job=imported).created_by == "deployer"


def test_reimporting_an_unchanged_definition_writes_no_new_version() -> None:
    make_job([("flow.foreach", {"source": []}), ("flow.end", {})], name="Stable")
    document = export_jobs(Job.objects.filter(name="Stable"))

    report = import_jobs(document, by="deployer")

    assert report["unchanged"] == ["Stable"]
    assert JobVersion.objects.filter(job__name="Stable").count() == 1


def test_changed_definition_is_updated_with_a_new_version() -> None:
    make_job([("flow.foreach", {"source": []}), ("flow.end", {})], name="Evolving")
    document = export_jobs(Job.objects.filter(name="Evolving"))
    document["jobs"][0]["steps"][0]["configuration"] = {"source": ["x"]}

    assert import_jobs(document, by="deployer")["updated"] == ["Evolving"]
    job = Job.objects.get(name="Evolving")
    assert job.current_version == 2
    assert job.steps.get(step_order=0).configuration == {"source": ["x"]}


def test_an_invalid_definition_refuses_the_whole_file_and_changes_nothing() -> None:
    make_job([("flow.foreach", {"source": []}), ("flow.end", {})], name="Keep me")
    document = export_jobs(Job.objects.filter(name="Keep me"))
    document["jobs"][0]["steps"][0]["configuration"] = {"source": ["changed"]}
    document["jobs"].append(
        {"name": "Broken", "steps": [{"step_order": 0, "type_key": "nope.step", "configuration": {}}]}
    )

    with pytest.raises(ImportRefused, match=r"\[E2060\] job 'Broken': \[E2001\] unknown step type 'nope.step'"):
        import_jobs(document, by="deployer")

    assert not Job.objects.filter(name="Broken").exists()
    assert Job.objects.get(name="Keep me").steps.get(step_order=0).configuration == {"source": []}


def test_import_command_reports_a_malformed_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"format": "something-else"}')
    with pytest.raises(CommandError, match="not a Courier definitions file"):
        call_command("import_definitions", str(path))


def test_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_job([("flow.foreach", {"source": []}), ("flow.end", {})], name="Dry")
    document = export_jobs(Job.objects.filter(name="Dry"))
    document["jobs"][0]["name"] = "Dry copy"
    path = tmp_path / "defs.json"
    path.write_text(json.dumps(document))

    call_command("import_definitions", str(path), "--dry-run")

    assert "Dry run: would import 1 new" in capsys.readouterr().out
    assert not Job.objects.filter(name="Dry copy").exists()


def test_run_job_queues_an_execution_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    job = make_job([("flow.foreach", {"source": []}), ("flow.end", {})], name="Nightly export")

    call_command("run_job", "Nightly export", "--json", "--user", "ops")

    output = json.loads(capsys.readouterr().out)
    execution = JobExecution.objects.get(pk=output["execution_id"])
    assert (execution.job_id, execution.state, execution.triggered_by) == (job.pk, "queued", "manual:ops")


def test_run_job_names_an_unknown_job() -> None:
    with pytest.raises(CommandError, match="no job named or with id 'missing'"):
        call_command("run_job", "missing")


def test_export_leaves_secrets_out() -> None:
    make_job([("file.zip", {"source_path": "a", "output_path": "b.zip", "password": "zip-secret-123"})], name="Zipper")
    document = export_jobs(Job.objects.filter(name="Zipper"))
    assert "zip-secret-123" not in json.dumps(document)
    assert document["jobs"][0]["steps"][0]["configuration"] == {"source_path": "a", "output_path": "b.zip"}


def test_connections_travel_with_their_jobs_by_name_and_without_secrets() -> None:
    from connections.models import Connection

    connection = Connection(
        name="ACME SFTP", protocol="sftp", host="sftp.acme.test", port=22, auth_method="password", username="courier"
    )
    connection.set_password("conn-secret-771")
    connection.save()
    make_job([("sftp.list", {"connection_id": str(connection.pk), "remote_path": "/out"})], name="Lister")
    document = export_jobs(Job.objects.filter(name="Lister"))

    assert "conn-secret-771" not in json.dumps(document)
    assert document["connections"][0]["name"] == "ACME SFTP"
    assert document["jobs"][0]["steps"][0]["configuration"]["connection_id"] == "connection:ACME SFTP"

    # Another environment: neither the job nor the connection exists there.
    Job.all_objects.filter(name="Lister").get().hard_delete()
    connection.hard_delete()
    report = import_jobs(document, by="deployer")

    imported = Connection.objects.get(name="ACME SFTP")
    assert imported.host == "sftp.acme.test" and not imported.password_encrypted
    assert report["connections_needing_password"] == ["ACME SFTP"]
    step = Job.objects.get(name="Lister").steps.get()
    assert step.configuration["connection_id"] == str(imported.pk)


def test_a_job_naming_an_unknown_connection_is_refused() -> None:
    document = {
        "format": "courier-definitions",
        "format_version": 1,
        "jobs": [
            {
                "name": "Orphan",
                "steps": [
                    {
                        "step_order": 0,
                        "type_key": "sftp.list",
                        "configuration": {"connection_id": "connection:Nowhere", "remote_path": "/"},
                    }
                ],
            }
        ],
    }
    with pytest.raises(ImportRefused, match="no connection named 'Nowhere'"):
        import_jobs(document, by="deployer")
    assert not Job.objects.filter(name="Orphan").exists()


def _chain_with_schedules() -> None:
    from jobs import scheduling
    from jobs.models import ChainSchedule, JobChain, JobChainMember, JobDependency, JobSchedule

    fetch = make_job([("flow.foreach", {"source": ["a"]}), ("flow.end", {})], name="Fetch")
    load = make_job([("flow.foreach", {"source": ["b"]}), ("flow.end", {})], name="Load")
    JobDependency.objects.create(upstream_job=fetch, downstream_job=load, run_on_failure=True)
    job_schedule = JobSchedule(job=fetch, cron_expression="0 30 2 ? * MON-FRI", time_zone="Europe/Berlin")
    scheduling.refresh(job_schedule)
    job_schedule.save()
    chain = JobChain.objects.create(name="Nightly")
    first = JobChainMember.objects.create(chain=chain, job=fetch, execution_order=0)
    JobChainMember.objects.create(
        chain=chain, job=load, execution_order=1, depends_on_member=first, run_on_upstream_failure=True
    )
    chain_schedule = ChainSchedule(chain=chain, cron_expression="15 4 * * *")
    scheduling.refresh(chain_schedule)
    chain_schedule.save()


def test_schedules_dependencies_and_chains_travel_with_the_export(tmp_path: Path) -> None:
    from jobs.models import ChainSchedule, JobChain, JobChainMember, JobDependency, JobSchedule

    _chain_with_schedules()
    path = tmp_path / "definitions.json"
    call_command("export_definitions", "--output", str(path), "--chain", "Nightly")
    document = json.loads(path.read_text())
    assert [job["name"] for job in document["jobs"]] == ["Fetch", "Load"]

    # Another environment: nothing of it exists yet.
    for chain in JobChain.all_objects.all():
        chain.hard_delete()
    for job in Job.all_objects.all():
        job.hard_delete()
    report = import_jobs(document, by="deployer")

    assert report["chains"] == ["Nightly"]
    schedule = JobSchedule.objects.get(job__name="Fetch")
    assert (schedule.cron_expression, schedule.time_zone) == ("0 30 2 ? * MON-FRI", "Europe/Berlin")
    assert schedule.next_fire_at is not None
    edge = JobDependency.objects.get()
    assert (edge.upstream_job.name, edge.downstream_job.name, edge.run_on_failure) == ("Fetch", "Load", True)
    second = JobChainMember.objects.get(chain__name="Nightly", execution_order=1)
    assert second.depends_on_member.execution_order == 0 and second.run_on_upstream_failure
    assert ChainSchedule.objects.get(chain__name="Nightly").cron_expression == "15 4 * * *"


def test_an_import_with_an_invalid_schedule_writes_nothing() -> None:
    _chain_with_schedules()
    from jobs.models import JobChain

    document = export_jobs(Job.objects.none(), JobChain.objects.all())
    document["chains"][0]["schedules"][0]["cron_expression"] = "0 0 31 2 *"
    document["chains"][0]["description"] = "changed"

    with pytest.raises(ImportRefused, match=r"E2060.*chain 'Nightly'.*E2012"):
        import_jobs(document, by="deployer")

    assert JobChain.objects.get(name="Nightly").description in ("", None)


def test_monitors_travel_with_their_bindings_tags_and_chain(tmp_path: Path, settings) -> None:
    from jobs.models import JobChain
    from monitors.models import FileMonitor, MonitorJobBinding

    settings.COURIER_DATA_DIR = tmp_path
    settings.COURIER_ALLOWED_ROOTS = [tmp_path]
    _chain_with_schedules()
    chain = JobChain.objects.get(name="Nightly")
    tag = Tag.objects.create(name="Month end")
    EntityTag.objects.create(tag=tag, entity_type="job_chain", entity_id=chain.pk)
    monitor = FileMonitor.objects.create(
        name="Inbox",
        watch_target={"type": "local", "path": str(tmp_path)},
        trigger_events=3,
        file_patterns=["*.csv"],
        batch_mode=False,
    )
    MonitorJobBinding.objects.create(monitor=monitor, chain=chain)
    MonitorJobBinding.objects.create(monitor=monitor, job=Job.objects.get(name="Load"))
    EntityTag.objects.create(tag=tag, entity_type="file_monitor", entity_id=monitor.pk)
    path = tmp_path / "definitions.json"
    call_command("export_definitions", "--output", str(path), "--monitor", "Inbox")
    document = json.loads(path.read_text())
    assert [chain["name"] for chain in document["chains"]] == ["Nightly"]

    # Another environment: nothing of it exists yet.
    monitor.hard_delete()
    chain.hard_delete()
    for job in Job.all_objects.all():
        job.hard_delete()
    report = import_jobs(document, by="deployer")

    assert report["monitors"] == ["Inbox"]
    imported = FileMonitor.objects.get(name="Inbox")
    assert (imported.trigger_events, imported.file_patterns, imported.batch_mode) == (3, ["*.csv"], False)
    runs = {(b.job.name if b.job else None, b.chain.name if b.chain else None) for b in imported.bindings.all()}
    assert runs == {(None, "Nightly"), ("Load", None)}
    new_chain = JobChain.objects.get(name="Nightly")
    assert EntityTag.objects.filter(entity_type="job_chain", entity_id=new_chain.pk, tag__name="Month end").exists()
    assert EntityTag.objects.filter(entity_type="file_monitor", entity_id=imported.pk).exists()


def test_a_monitor_with_a_too_short_interval_is_refused_on_import(tmp_path: Path, settings) -> None:
    settings.COURIER_DATA_DIR = tmp_path
    settings.COURIER_ALLOWED_ROOTS = [tmp_path]
    document = export_jobs(Job.objects.none())
    document["monitors"] = [
        {
            "name": "Fast",
            "watch_target": {"type": "local", "path": str(tmp_path)},
            "trigger_events": 1,
            "polling_interval_sec": 5,
        }
    ]

    with pytest.raises(ImportRefused, match=r"E2060.*monitor 'Fast'.*E5000.*30 seconds"):
        import_jobs(document, by="deployer")


@pytest.mark.parametrize(("field", "value"), [("transfer_segments", 9), ("transport_retries", 7), ("port", "22")])
def test_a_connection_setting_outside_its_range_refuses_the_file_and_changes_nothing(field: str, value: object) -> None:
    connection = {
        "name": "Partner",
        "protocol": "sftp",
        "host": "sftp.partner.test",
        "port": 22,
        "auth_method": "password",
        "username": "courier",
        field: value,
    }
    document = {"format": "courier-definitions", "format_version": 1, "jobs": [], "connections": [connection]}
    with pytest.raises(ImportRefused, match=rf"\[E2060\] connection 'Partner': {field} must be a whole number from"):
        import_jobs(document, by="deployer")
    assert not Connection.objects.filter(name="Partner").exists()


def _tagged(entity_type: str, entity_id: object) -> list[str]:
    return sorted(EntityTag.objects.of_entity(entity_type, entity_id).values_list("tag__name", flat=True))


def test_tags_travel_with_their_colour_category_and_description() -> None:
    connection = Connection.objects.create(
        name="Bank SFTP", protocol="sftp", host="sftp.bank.test", port=22, auth_method="password", username="c"
    )
    make_job([("sftp.list", {"connection_id": str(connection.pk), "remote_path": "/"})], name="Statements")
    finance = Tag.objects.create(name="Finance", color="#2e7d32", category="team", description="Month-end reports")
    partner = Tag.objects.create(name="partner:bank")
    job = Job.objects.get(name="Statements")
    EntityTag.objects.create(tag=finance, entity_type="job", entity_id=job.pk)
    EntityTag.objects.create(tag=partner, entity_type="connection", entity_id=connection.pk)
    document = json.loads(json.dumps(export_jobs(Job.objects.filter(name="Statements"))))

    assert document["tags"] == [
        {"name": "Finance", "color": "#2e7d32", "category": "team", "description": "Month-end reports"},
        {"name": "partner:bank", "color": None, "category": None, "description": None},
    ]
    assert document["connections"][0]["tags"] == ["partner:bank"]

    # Another environment: no job, connection or tag of these exists there.
    job.hard_delete()
    connection.hard_delete()
    Tag.all_objects.all().delete()
    report = import_jobs(document, by="deployer")

    assert report["tags_created"] == ["Finance", "partner:bank"]
    finance = Tag.objects.get(name="Finance")
    assert (finance.color, finance.category, finance.description) == ("#2e7d32", "team", "Month-end reports")
    assert _tagged("job", Job.objects.get(name="Statements").pk) == ["Finance"]
    assert _tagged("connection", Connection.objects.get(name="Bank SFTP").pk) == ["partner:bank"]


def test_import_brings_tag_details_and_an_entitys_tags_in_line_with_the_file() -> None:
    job = make_job([("flow.foreach", {"source": []}), ("flow.end", {})], name="Payroll")
    kept = Tag.objects.create(name="FINANCE", color="#000000")
    dropped = Tag.objects.create(name="Legacy")
    EntityTag.objects.create(tag=kept, entity_type="job", entity_id=job.pk)
    EntityTag.objects.create(tag=dropped, entity_type="job", entity_id=job.pk)
    document = export_jobs(Job.objects.filter(name="Payroll"))
    document["jobs"][0]["tags"] = ["finance"]
    document["tags"] = [{"name": "finance", "color": "#2e7d32", "category": "team", "description": None}]

    report = import_jobs(document, by="deployer")

    assert (report["tags_created"], report["tags_updated"]) == ([], ["FINANCE"])
    kept.refresh_from_db()
    assert (kept.name, kept.color, kept.category) == ("FINANCE", "#2e7d32", "team")
    assert _tagged("job", job.pk) == ["FINANCE"]
    change = AuditLogEntry.objects.get(entity_id=job.pk, operation="tags_changed")
    assert change.details == {"added": [], "removed": ["Legacy"]}


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("file", [{"name": " "}], 'every tag needs a non-empty "name"'),
        ("file", [{"name": "Ops"}, {"name": "ops"}], "describes tag 'ops' more than once"),
        ("file", [{"name": "Ops", "color": 7}], "tag 'Ops': color must be text or null"),
        ("job", "Ops", "job 'Tagged': \"tags\" must be a list of non-empty tag names"),
    ],
)
def test_a_malformed_tag_refuses_the_file_and_changes_nothing(where: str, value: object, message: str) -> None:
    make_job([("flow.foreach", {"source": []}), ("flow.end", {})], name="Tagged")
    document = export_jobs(Job.objects.filter(name="Tagged"))
    document["jobs"][0]["steps"][0]["configuration"] = {"source": ["changed"]}
    if where == "file":
        document["tags"] = value
    else:
        document["jobs"][0]["tags"] = value

    with pytest.raises(ImportRefused, match=r"\[E2060\].*" + message.replace("(", r"\(")):
        import_jobs(document, by="deployer")

    assert not Tag.objects.exists()
    assert Job.objects.get(name="Tagged").steps.get(step_order=0).configuration == {"source": []}
