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


def export_jobs(jobs: Any) -> dict[str, Any]:
    """A JSON-ready document with the given jobs, their steps and tags (no secrets, no history)."""
    from tags.models import EntityTag

    exported = []
    for job in jobs.order_by("name"):
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
                        # Secrets never leave in an export; they are entered again in the target environment.
                        "configuration": {
                            key: value for key, value in (step.configuration or {}).items() if not is_secret_key(key)
                        },
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
        "jobs": exported,
    }


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
    for job in jobs:
        steps = job.get("steps") or []
        definition = {
            "name": job["name"],
            "failure_policy": job.get("failure_policy") or {"type": "stop"},
            "steps": [{"id": None, **step} for step in steps],
        }
        try:
            check_definition(definition)
        except CourierError as error:
            raise ImportRefused(f"job '{job['name']}': {error}") from error
    return jobs


def import_jobs(document: Any, *, by: Any, dry_run: bool = False) -> dict[str, list[str]]:
    """Create or update jobs by name, all or nothing; a changed definition gets a new version."""
    from jobs.models import Job, JobStep
    from tags.models import EntityTag, Tag

    jobs = _validate_document(document)
    report: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": []}
    with transaction.atomic():
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
