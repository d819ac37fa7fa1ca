"""The console roles Admin, Operator and Viewer (SPEC 8) as Django groups with their permissions."""

from __future__ import annotations

from typing import Any

ADMIN = "Admin"
OPERATOR = "Operator"
VIEWER = "Viewer"
ROLES = (ADMIN, OPERATOR, VIEWER)

COURIER_APPS = (
    "courier_site",
    "jobs",
    "connections",
    "keystore",
    "monitors",
    "audit",
    "tags",
    "system",
    "notifications",
)

# Models an Operator creates, edits and deletes: job definitions, chains, schedules,
# monitors and tags. Connections, keys, settings and users stay with Admins.
OPERATOR_MANAGED = {
    "jobs": {"job", "jobstep", "jobchain", "jobchainmember", "jobdependency", "jobschedule", "chainschedule"},
    "monitors": {"filemonitor", "monitorjobbinding"},
    "tags": {"tag", "entitytag"},
}
# Action permissions an Operator holds besides editing: running jobs and chains, controlling executions.
OPERATOR_EXTRA = {
    ("jobs", "run_job"),
    ("jobs", "run_jobchain"),
    ("jobs", "control_jobexecution"),
    ("connections", "test_connection"),
}
ADMIN_EXTRA_APPS = ("auth",)


def role_grants(role: str, app_label: str, model: str, codename: str) -> bool:
    """Whether role holds the permission codename of app_label.model."""
    courier = app_label in COURIER_APPS
    if role == ADMIN:
        return courier or app_label in ADMIN_EXTRA_APPS
    if not courier:
        return False
    if codename.startswith("view_"):
        return role in (OPERATOR, VIEWER)
    if (app_label, codename) in OPERATOR_EXTRA:
        return role == OPERATOR
    return role == OPERATOR and model in OPERATOR_MANAGED.get(app_label, set())


def role_permission_codenames(role: str, available: list[tuple[str, str, str]]) -> set[tuple[str, str]]:
    """(app_label, codename) pairs a role holds, from the available (app_label, model, codename) triples."""
    return {
        (app_label, codename)
        for app_label, model, codename in available
        if role_grants(role, app_label, model, codename)
    }


def sync_role_groups(sender: Any = None, apps: Any = None, using: str = "default", **_: Any) -> None:
    """Create the role groups and give each exactly its permissions (post_migrate, idempotent)."""
    if apps is None:
        from django.apps import apps as global_apps

        apps = global_apps
    try:
        Group = apps.get_model("auth", "Group")
        Permission = apps.get_model("auth", "Permission")
    except LookupError:
        return
    permissions = list(
        Permission.objects.using(using)
        .select_related("content_type")
        .values_list("id", "content_type__app_label", "content_type__model", "codename")
    )
    available = [(app_label, model, codename) for _, app_label, model, codename in permissions]
    ids = {(app_label, codename): pk for pk, app_label, _, codename in permissions}
    for role in ROLES:
        group, _ = Group.objects.using(using).get_or_create(name=role)
        wanted = {ids[pair] for pair in role_permission_codenames(role, available)}
        group.permissions.set(wanted)
