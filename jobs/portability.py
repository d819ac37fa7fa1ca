"""Export and import of job definitions as JSON, to promote them between environments."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.models import AuditLogEntry
from courier_site.errors import CourierError
from jobs.definitions import check_definition, record_version
from jobs.redaction import is_secret_key
from jobs.secrets import seal_config

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
    "status",
    "notes",
)
CONNECTION_REFERENCE = "connection:"


def _portable_configuration(configuration: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """Step configuration without secrets, with connection ids written as "connection:<name>"."""
    portable = {key: value for key, value in (configuration or {}).items() if not is_secret_key(key)}
    reference = portable.get("connection_id")
    if isinstance(reference, str) and reference in names:
        portable["connection_id"] = CONNECTION_REFERENCE + names[reference]
    return portable


def export_jobs(jobs: Any) -> dict[str, Any]:
    """A JSON-ready document with the given jobs, their steps, tags and the connections they use
    (no secrets, no history)."""
    from connections.models import Connection
    from tags.models import EntityTag

    jobs = list(jobs.order_by("name"))
    used = {
        str(step.configuration.get("connection_id"))
        for job in jobs
        for step in job.steps.all()
        if isinstance(step.configuration, dict) and step.configuration.get("connection_id")
    }
    connections = list(Connection.objects.filter(pk__in=[pk for pk in used if _is_uuid(pk)]).order_by("name"))
    names = {str(connection.pk): connection.name for connection in connections}
    exported = []
    for job in jobs:
        tag_names = sorted(
            EntityTag.objects.filter(entity_type="job", entity_id=job.pk).values_list("tag__name", flat=True)
        )
        exported.append(
            {
                "name": job.name,
                "description": job.description or "",
                "is_enabled": job.is_enabled,
                "failure_policy": job.failure_policy,
                "tags": tag_names,
                "steps": [
                    {
                        "step_order": step.step_order,
                        "name": step.name,
                        "type_key": step.type_key,
                        "alias": step.alias,
                        "configuration": _portable_configuration(step.configuration, names),
                        "timeout_seconds": step.timeout_seconds,
                    }
                    for step in job.steps.order_by("step_order")
                ],
            }
        )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported_at": timezone.now().isoformat(),
        "connections": [
            {field: getattr(connection, field) for field in CONNECTION_FIELDS} for connection in connections
        ],
        "jobs": exported,
    }


def _is_uuid(value: str) -> bool:
    import uuid

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
    connections = document.get("connections") or []
    if not isinstance(connections, list) or not all(
        isinstance(item, dict) and isinstance(item.get("name"), str) and item.get("protocol") in ("sftp", "ftp", "ftps")
        for item in connections
    ):
        raise ImportRefused('"connections" must be a list of objects with a name and a protocol sftp, ftp or ftps')
    return jobs


def _import_connections(document: dict[str, Any], report: dict[str, list[str]]) -> dict[str, str]:
    """Create or update connections by name (never their secrets); returns name -> id."""
    from connections.models import Connection

    for data in document.get("connections") or []:
        fields = {field: data[field] for field in CONNECTION_FIELDS if field in data and field != "name"}
        connection = Connection.objects.filter(name=data["name"]).first()
        if connection is None:
            connection = Connection.objects.create(name=data["name"], **fields)
        else:
            for field, value in fields.items():
                setattr(connection, field, value)
            connection.save()
        if connection.auth_method != "ssh_key" and not connection.password_encrypted:
            report["connections_needing_password"].append(connection.name)
    return {str(name): str(pk) for name, pk in Connection.objects.values_list("name", "pk")}


def _resolve_connections(job: dict[str, Any], ids: dict[str, str]) -> None:
    for step in job.get("steps") or []:
        configuration = step.get("configuration") or {}
        reference = configuration.get("connection_id")
        if isinstance(reference, str) and reference.startswith(CONNECTION_REFERENCE):
            name = reference[len(CONNECTION_REFERENCE) :]
            if name not in ids:
                raise ImportRefused(f"job '{job['name']}' step {step.get('step_order')}: no connection named '{name}'")
            configuration["connection_id"] = ids[name]


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
    from jobs.models import Job, JobStep
    from tags.models import EntityTag, Tag

    jobs = _validate_document(document)
    report: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": [], "connections_needing_password": []}
    with transaction.atomic():
        # Connections first: the jobs' steps name them, and every definition is checked
        # before anything of the jobs is written (a refusal rolls all of it back).
        ids = _import_connections(document, report)
        for data in jobs:
            _resolve_connections(data, ids)
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
            for tag_name in data.get("tags") or []:
                tag = Tag.objects.filter(name__iexact=tag_name).first() or Tag.objects.create(name=tag_name)
                EntityTag.objects.get_or_create(tag=tag, entity_type="job", entity_id=job.pk)
            if created or _definition_key(job) != before:
                record_version(job, created_by=by, operation="imported")
                report["created" if created else "updated"].append(job.name)
            else:
                report["unchanged"].append(job.name)
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
