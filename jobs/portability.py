"""Export and import of job definitions as JSON, to promote them between environments."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.models import AuditLogEntry
from connections.models import NUMBER_RANGES, Connection
from courier_site.errors import CourierError
from jobs.chains import MemberSpec, check_members
from jobs.definitions import check_definition, record_version
from jobs.dependencies import check_edge
from jobs.models import Job, JobChain, JobChainMember, JobDependency, JobStep
from jobs.redaction import is_secret_key
from jobs.scheduling import check as check_schedule
from jobs.scheduling import refresh as refresh_schedule
from jobs.secrets import seal_config
from keystore.portable import portable as portable_keys
from keystore.portable import resolve as resolve_keys
from monitors.models import FileMonitor, MonitorJobBinding
from monitors.services import check_definition as check_monitor_definition
from tags import portable as portable_tags

FORMAT = "courier-definitions"
FORMAT_VERSION = 1


class ImportRefused(CourierError):
    """The import file is malformed or a definition in it is invalid; nothing was written."""

    code = "E2060"


# Connection settings that travel between environments; secrets (password, keys) never do.
CONNECTION_FIELDS = (
    "name",
    "group",
    "protocol",
    "host",
    "port",
    "auth_method",
    "username",
    "host_key_policy",
    "passive_mode",
    "tls_version_floor",
    "tls_cert_policy",
    "tls_pinned_thumbprint",
    "ssh_algorithms",
    "connect_timeout_sec",
    "operation_timeout_sec",
    "keepalive_interval_sec",
    "transport_retries",
    "transfer_segments",
    "status",
    "notes",
)
CONNECTION_REFERENCE = "connection:"


# Sections the apps above this one add to the file (notifications: channels and rules), registered
# from their AppConfig.ready: exporter(document) returns the section; importer(section, report, by)
# runs inside the import's transaction, after jobs, chains and monitors exist.
Exporter = Callable[[dict[str, Any]], Any]
Importer = Callable[[Any, dict[str, list[str]], Any], None]
_SECTIONS: dict[str, tuple[Exporter, Importer, tuple[str, ...]]] = {}


def register_section(name: str, exporter: Exporter, importer: Importer, report_keys: tuple[str, ...] = ()) -> None:
    """Carry another app's definitions in the file under name; report_keys are added to the import report."""
    _SECTIONS[name] = (exporter, importer, report_keys)


def _portable_configuration(type_key: str, configuration: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """Step configuration without secrets, with connection ids written as "connection:<name>" and PGP key
    ids as "pgp_key:<fingerprint>"."""
    portable = {key: value for key, value in (configuration or {}).items() if not is_secret_key(key)}
    portable = portable_keys(type_key, portable)
    reference = portable.get("connection_id")
    if isinstance(reference, str) and reference in names:
        portable["connection_id"] = CONNECTION_REFERENCE + names[reference]
    return portable


def export_jobs(jobs: Any, chains: Any = None, monitors: Any = None) -> dict[str, Any]:
    """A JSON-ready document with the given jobs, chains and monitors: steps, schedules, dependencies,
    bindings, tags and the connections they use (no secrets, no history). A chain brings its member
    jobs along, a monitor the jobs and chains it runs."""

    monitors = list(monitors.order_by("name")) if monitors is not None else []
    bound = [binding for monitor in monitors for binding in monitor.bindings.all()]
    chain_ids = {chain.pk for chain in (chains if chains is not None else [])}
    chain_ids |= {binding.chain_id for binding in bound if binding.chain_id}
    chains = list(JobChain.objects.filter(pk__in=chain_ids).order_by("name"))
    member_ids = {member.job_id for chain in chains for member in chain.members.all()}
    bound_ids = {binding.job_id for binding in bound if binding.job_id}
    jobs = list(Job.objects.filter(pk__in={*(job.pk for job in jobs), *member_ids, *bound_ids}).order_by("name"))
    used = {
        str(step.configuration.get("connection_id"))
        for job in jobs
        for step in job.steps.all()
        if isinstance(step.configuration, dict) and step.configuration.get("connection_id")
    }
    used |= {str((monitor.watch_target or {}).get("connection_id")) for monitor in monitors}
    connections = list(Connection.objects.filter(pk__in=[pk for pk in used if _is_uuid(pk)]).order_by("name"))
    names = {str(connection.pk): connection.name for connection in connections}
    exported = []
    for job in jobs:
        exported.append(
            {
                "name": job.name,
                "description": job.description or "",
                "is_enabled": job.is_enabled,
                "failure_policy": job.failure_policy,
                "tags": portable_tags.names_of("job", job.pk),
                "steps": [
                    {
                        "step_order": step.step_order,
                        "name": step.name,
                        "type_key": step.type_key,
                        "alias": step.alias,
                        "configuration": _portable_configuration(step.type_key, step.configuration, names),
                        "timeout_seconds": step.timeout_seconds,
                    }
                    for step in job.steps.order_by("step_order")
                ],
                "schedules": [_portable_schedule(schedule) for schedule in job.schedules.order_by("created_at")],
                "upstream": [
                    {"job": edge.upstream_job.name, "run_on_failure": edge.run_on_failure}
                    for edge in job.upstream_edges.select_related("upstream_job").order_by("upstream_job__name")
                    if not edge.upstream_job.is_deleted
                ],
            }
        )
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported_at": timezone.now().isoformat(),
        "connections": [
            {
                **{field: getattr(connection, field) for field in CONNECTION_FIELDS},
                "tags": portable_tags.names_of("connection", connection.pk),
            }
            for connection in connections
        ],
        "jobs": exported,
        "chains": [_portable_chain(chain) for chain in chains],
        "monitors": [_portable_monitor(monitor, names) for monitor in monitors],
    }
    # The details of every tag named above, so the receiving side gets the same colours and groups.
    used_tags = {
        name
        for kind in ("connections", "jobs", "chains", "monitors")
        for item in document[kind]
        for name in item["tags"]
    }
    document["tags"] = portable_tags.described(used_tags)
    for name, (exporter, _, _) in _SECTIONS.items():
        document[name] = exporter(document)
    return document


MONITOR_FIELDS = (
    "description",
    "trigger_events",
    "file_patterns",
    "polling_interval_sec",
    "stability_window_sec",
    "batch_mode",
    "max_consecutive_failures",
)


def _portable_monitor(monitor: Any, names: dict[str, str]) -> dict[str, Any]:
    target = dict(monitor.watch_target or {})
    if target.get("connection_id") and str(target["connection_id"]) in names:
        target["connection_id"] = CONNECTION_REFERENCE + names[str(target["connection_id"])]
    return {
        "name": monitor.name,
        "watch_target": target,
        **{field: getattr(monitor, field) for field in MONITOR_FIELDS},
        "is_enabled": monitor.state != "disabled",
        "runs": [
            {"job": binding.job.name} if binding.job_id else {"chain": binding.chain.name}
            for binding in monitor.bindings.select_related("job", "chain")
        ],
        "tags": portable_tags.names_of("file_monitor", monitor.pk),
    }


def _portable_schedule(schedule: Any) -> dict[str, Any]:
    return {
        "schedule_type": schedule.schedule_type,
        "cron_expression": schedule.cron_expression,
        "run_at": schedule.run_at.isoformat() if schedule.run_at else None,
        "time_zone": schedule.time_zone,
        "is_enabled": schedule.is_enabled,
    }


def _portable_chain(chain: Any) -> dict[str, Any]:
    return {
        "name": chain.name,
        "description": chain.description or "",
        "is_enabled": chain.is_enabled,
        "tags": portable_tags.names_of("job_chain", chain.pk),
        "members": [
            {
                "execution_order": member.execution_order,
                "job": member.job.name,
                "after": member.depends_on_member.execution_order if member.depends_on_member else None,
                "run_on_upstream_failure": member.run_on_upstream_failure,
            }
            for member in chain.members.select_related("job", "depends_on_member").order_by("execution_order")
        ],
        "schedules": [_portable_schedule(schedule) for schedule in chain.schedules.order_by("created_at")],
    }


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _validate_document(document: Any) -> list[dict[str, Any]]:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ImportRefused(f'not a Courier definitions file (expected "format": "{FORMAT}")')
    if document.get("format_version") != FORMAT_VERSION:
        raise ImportRefused(
            f"unsupported format_version {document.get('format_version')!r} (this build reads {FORMAT_VERSION})"
        )
    jobs = document.get("jobs") or []
    if not isinstance(jobs, list):
        raise ImportRefused('"jobs" must be a list')
    names = [job.get("name") for job in jobs if isinstance(job, dict)]
    if len(names) != len(jobs) or not all(isinstance(name, str) and name.strip() for name in names):
        raise ImportRefused('every job needs a non-empty "name"')
    if len(set(names)) != len(names):
        raise ImportRefused("the file names a job more than once")
    chains = document.get("chains") or []
    if not isinstance(chains, list) or not all(
        isinstance(chain, dict) and isinstance(chain.get("name"), str) and chain["name"].strip() for chain in chains
    ):
        raise ImportRefused('"chains" must be a list of objects with a non-empty "name"')
    chain_names = [chain["name"] for chain in chains]
    if len(set(chain_names)) != len(chain_names):
        raise ImportRefused("the file names a chain more than once")
    connections = document.get("connections") or []
    if not isinstance(connections, list) or not all(
        isinstance(item, dict) and isinstance(item.get("name"), str) and item.get("protocol") in ("sftp", "ftp", "ftps")
        for item in connections
    ):
        raise ImportRefused('"connections" must be a list of objects with a name and a protocol sftp, ftp or ftps')
    problems = portable_tags.section_problems(document["tags"]) if "tags" in document else []
    for kind, label in (("connections", "connection"), ("jobs", "job"), ("chains", "chain")):
        for item in document.get(kind) or []:
            problems += portable_tags.names_problems(f"{label} '{item['name']}'", item.get("tags"))
    if problems:
        raise ImportRefused("; ".join(problems))
    return jobs


def _import_connections(document: dict[str, Any], report: dict[str, list[str]], by: Any) -> dict[str, str]:
    """Create or update connections by name (never their secrets); returns name -> id."""

    for data in document.get("connections") or []:
        fields = {field: data[field] for field in CONNECTION_FIELDS if field in data and field != "name"}
        for field, (lowest, highest) in NUMBER_RANGES.items():
            value = fields.get(field)
            if field in fields and (type(value) is not int or not lowest <= value <= highest):
                raise ImportRefused(
                    f"connection '{data['name']}': {field} must be a whole number from {lowest} to {highest}, "
                    f"not {value!r}"
                )
        connection = Connection.objects.filter(name=data["name"]).first()
        if connection is None:
            connection = Connection.objects.create(name=data["name"], **fields)
        else:
            for field, value in fields.items():
                setattr(connection, field, value)
            connection.save()
        portable_tags.assign("connection", connection.pk, data.get("tags"), by=by)
        if connection.auth_method != "ssh_key" and not connection.password_encrypted:
            report["connections_needing_password"].append(connection.name)
    return {str(name): str(pk) for name, pk in Connection.objects.values_list("name", "pk")}


def _resolve_references(job: dict[str, Any], ids: dict[str, str]) -> None:
    for step in job.get("steps") or []:
        configuration = step.get("configuration") or {}
        reference = configuration.get("connection_id")
        if isinstance(reference, str) and reference.startswith(CONNECTION_REFERENCE):
            name = reference[len(CONNECTION_REFERENCE) :]
            if name not in ids:
                raise ImportRefused(f"job '{job['name']}' step {step.get('step_order')}: no connection named '{name}'")
            configuration["connection_id"] = ids[name]
        label = f"job '{job['name']}' step {step.get('step_order')}"
        problems = resolve_keys(str(step.get("type_key")), configuration, label)
        if problems:
            raise ImportRefused("; ".join(problems))


def _check_job(job: dict[str, Any]) -> None:
    definition = {
        "name": job["name"],
        "failure_policy": job.get("failure_policy") or {"type": "stop"},
        "steps": [{"id": None, **step} for step in job.get("steps") or []],
    }
    try:
        check_definition(definition)
    except CourierError as error:
        raise ImportRefused(f"job '{job['name']}': {error}") from error


def import_jobs(document: Any, *, by: Any, dry_run: bool = False) -> dict[str, list[str]]:
    """Create or update jobs by name, all or nothing; a changed definition gets a new version."""

    jobs = _validate_document(document)
    report: dict[str, list[str]] = {
        "created": [],
        "updated": [],
        "unchanged": [],
        "chains": [],
        "monitors": [],
        "connections_needing_password": [],
        "tags_created": [],
        "tags_updated": [],
        **{key: [] for _, _, keys in _SECTIONS.values() for key in keys},
    }
    with transaction.atomic():
        # Tags first, so entities find them with their details; then connections: the jobs'
        # steps name them, and every definition is checked before anything of the jobs is
        # written (a refusal rolls all of it back).
        report["tags_created"], report["tags_updated"] = portable_tags.import_details(document.get("tags") or [])
        ids = _import_connections(document, report, by)
        for data in jobs:
            _resolve_references(data, ids)
            _check_job(data)
        for data in jobs:
            job = Job.objects.filter(name=data["name"]).order_by("created_at").first()
            created = job is None
            if created:
                job = Job.objects.create(name=data["name"])
            before = None if created else _definition_key(job)
            job.description = data.get("description") or ""
            job.is_enabled = bool(data.get("is_enabled", True))
            job.failure_policy = data.get("failure_policy") or job.failure_policy
            job.save()
            job.steps.all().delete()
            JobStep.objects.bulk_create(
                [
                    JobStep(
                        job=job,
                        step_order=step["step_order"],
                        name=step.get("name") or step["type_key"],
                        type_key=step["type_key"],
                        alias=step.get("alias") or None,
                        configuration=seal_config(step["type_key"], step.get("configuration") or {}),
                        timeout_seconds=step.get("timeout_seconds") or 300,
                    )
                    for step in data.get("steps") or []
                ]
            )
            portable_tags.assign("job", job.pk, data.get("tags"), by=by)
            if created or _definition_key(job) != before:
                record_version(job, created_by=by, operation="imported")
                report["created" if created else "updated"].append(job.name)
            else:
                report["unchanged"].append(job.name)
            _replace_schedules(job, data.get("schedules"), f"job '{job.name}'")
        _import_dependencies(jobs)
        for data in document.get("chains") or []:
            _import_chain(data, by=by, report=report)
        for data in document.get("monitors") or []:
            _import_monitor(data, ids, by=by, report=report)
        for name, (_, importer, _) in _SECTIONS.items():
            if name in document:
                importer(document[name], report, by)
        if dry_run:
            transaction.set_rollback(True)
        else:
            AuditLogEntry.objects.record(
                entity_type="system",
                entity_id="definitions-import",
                operation="definitions_imported",
                performed_by=by,
                details={key: value for key, value in report.items()},
            )
    return report


def _definition_key(job: Any) -> Any:
    steps = [
        (s.step_order, s.name, s.type_key, s.alias or None, s.configuration, s.timeout_seconds)
        for s in job.steps.order_by("step_order")
    ]
    return (job.description or "", job.failure_policy, steps)


def _replace_schedules(owner: Any, schedules: Any, label: str) -> None:
    """Schedules travel with their job or chain: the file's list replaces the stored one."""

    if schedules is None:
        return
    if not isinstance(schedules, list):
        raise ImportRefused(f'{label}: "schedules" must be a list')
    owner.schedules.all().delete()
    for index, data in enumerate(schedules):
        if not isinstance(data, dict):
            raise ImportRefused(f"{label}: schedule {index} must be an object")
        run_at = data.get("run_at")
        try:
            run_at = datetime.fromisoformat(run_at) if run_at else None
        except (TypeError, ValueError):
            raise ImportRefused(f"{label}: schedule {index} has an unreadable run_at {run_at!r}") from None
        schedule = owner.schedules.model(
            schedule_type=data.get("schedule_type") or "cron",
            cron_expression=data.get("cron_expression"),
            run_at=run_at,
            time_zone=data.get("time_zone") or None,
            is_enabled=bool(data.get("is_enabled", True)),
        )
        setattr(schedule, owner.schedules.field.name, owner)
        # A one-shot whose time passed in the source environment arrives disabled.
        if schedule.schedule_type == "one_shot" and run_at is not None and run_at <= timezone.now():
            schedule.is_enabled = False
        try:
            check_schedule(schedule, run_at_changed=schedule.is_enabled)
        except CourierError as error:
            raise ImportRefused(f"{label}: schedule {index}: {error}") from error
        refresh_schedule(schedule)
        schedule.save()


def _import_dependencies(jobs: list[dict[str, Any]]) -> None:
    """Each imported job's upstream list replaces its stored one; names must exist after the import."""

    for data in jobs:
        upstream = data.get("upstream")
        if upstream is None:
            continue
        if not isinstance(upstream, list):
            raise ImportRefused(f"job '{data['name']}': \"upstream\" must be a list")
        job = Job.objects.filter(name=data["name"]).order_by("created_at").first()
        JobDependency.objects.filter(downstream_job=job).delete()
        for item in upstream:
            name = item.get("job") if isinstance(item, dict) else None
            parent = Job.objects.filter(name=name).order_by("created_at").first() if name else None
            if parent is None:
                raise ImportRefused(f"job '{data['name']}' depends on '{name}', which is neither here nor in the file")
            try:
                check_edge(parent.pk, job.pk)
            except CourierError as error:
                raise ImportRefused(f"job '{data['name']}': {error}") from error
            JobDependency.objects.create(
                upstream_job=parent, downstream_job=job, run_on_failure=bool(item.get("run_on_failure"))
            )


def _import_chain(data: dict[str, Any], *, by: Any, report: dict[str, list[str]]) -> None:
    """Create or update a chain by name: members (by job name and order) and schedules are replaced."""

    label = f"chain '{data['name']}'"
    members = data.get("members") or []
    if not isinstance(members, list) or not all(isinstance(item, dict) for item in members):
        raise ImportRefused(f'{label}: "members" must be a list of objects')
    jobs = {}
    specs = []
    for item in members:
        job = Job.objects.filter(name=item.get("job")).order_by("created_at").first()
        if job is None:
            raise ImportRefused(f"{label}: member job '{item.get('job')}' is neither here nor in the file")
        order = item.get("execution_order")
        if not isinstance(order, int):
            raise ImportRefused(f"{label}: every member needs an integer execution_order")
        jobs[order] = job
        specs.append(
            MemberSpec(
                execution_order=order,
                job_id=job.pk,
                depends_on_order=item.get("after"),
                run_on_upstream_failure=bool(item.get("run_on_upstream_failure")),
            )
        )
    try:
        check_members(specs)
    except CourierError as error:
        raise ImportRefused(f"{label}: {error}") from error
    chain = JobChain.objects.filter(name=data["name"]).order_by("created_at").first()
    if chain is None:
        chain = JobChain.objects.create(name=data["name"])
    chain.description = data.get("description") or ""
    chain.is_enabled = bool(data.get("is_enabled", True))
    chain.save()
    chain.members.all().delete()
    created = {
        spec.execution_order: JobChainMember.objects.create(
            chain=chain,
            job=jobs[spec.execution_order],
            execution_order=spec.execution_order,
            run_on_upstream_failure=spec.run_on_upstream_failure,
        )
        for spec in specs
    }
    for spec in specs:
        if spec.depends_on_order is not None:
            member = created[spec.execution_order]
            member.depends_on_member = created[spec.depends_on_order]
            member.save(update_fields=["depends_on_member"])
    _replace_schedules(chain, data.get("schedules"), label)
    portable_tags.assign("job_chain", chain.pk, data.get("tags"), by=by)
    AuditLogEntry.objects.record(
        entity_type="chain", entity_id=chain.pk, operation="imported", performed_by=by, details={"name": chain.name}
    )
    report["chains"].append(chain.name)


def _import_monitor(data: Any, connection_ids: dict[str, str], *, by: Any, report: dict[str, list[str]]) -> None:
    """Create or update a monitor by name; its bindings name jobs and chains, its remote target a connection."""

    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"].strip():
        raise ImportRefused('every monitor needs a non-empty "name"')
    label = f"monitor '{data['name']}'"
    target = dict(data.get("watch_target") or {})
    reference = target.get("connection_id")
    if isinstance(reference, str) and reference.startswith(CONNECTION_REFERENCE):
        name = reference[len(CONNECTION_REFERENCE) :]
        if name not in connection_ids:
            raise ImportRefused(f"{label}: no connection named '{name}'")
        target["connection_id"] = connection_ids[name]
    monitor = FileMonitor.objects.filter(name=data["name"]).order_by("created_at").first()
    created = monitor is None
    monitor = monitor or FileMonitor(name=data["name"], state="active")
    monitor.watch_target = target
    for field in MONITOR_FIELDS:
        if field in data:
            setattr(monitor, field, data[field])
    if not data.get("is_enabled", True):
        monitor.state = "disabled"
    elif monitor.state == "disabled":
        monitor.state = "active"
    try:
        check_monitor_definition(monitor)
    except CourierError as error:
        raise ImportRefused(f"{label}: {error}") from error
    monitor.save()
    monitor.bindings.all().delete()
    for run in data.get("runs") or []:
        job = Job.objects.filter(name=run.get("job")).first() if isinstance(run, dict) and run.get("job") else None
        chain = (
            JobChain.objects.filter(name=run.get("chain")).first()
            if isinstance(run, dict) and run.get("chain")
            else None
        )
        if (job is None) == (chain is None):
            raise ImportRefused(f"{label}: each run names an existing job or chain, not {run!r}")
        MonitorJobBinding.objects.create(monitor=monitor, job=job, chain=chain)
    problems = portable_tags.names_problems(label, data.get("tags"))
    if problems:
        raise ImportRefused("; ".join(problems))
    portable_tags.assign("file_monitor", monitor.pk, data.get("tags"), by=by)
    AuditLogEntry.objects.record(
        entity_type="file_monitor",
        entity_id=monitor.pk,
        operation="imported",
        performed_by=by,
        details={"name": monitor.name, "created": created},
    )
    report["monitors"].append(monitor.name)
