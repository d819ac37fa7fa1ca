"""Roles hardened (SPEC 8): every console page, save, action and custom URL, tried as Viewer, Operator and Admin.

The tables below say what each role may do; the tests walk the admin registry and the URL
resolver, so a model, action or URL added later without a line here makes a test fail.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.conf import settings as django_settings
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Model
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from audit.models import AuditLogEntry, DomainEvent
from audit.querysets import entity_uuid
from connections import hostkeys
from connections.models import Connection, KnownHost
from courier_site.envelope import keyring
from courier_site.models import ProcessHeartbeat, SchemaVersion
from courier_site.roles import ADMIN, OPERATOR, VIEWER
from jobs import chains
from jobs.engine import control
from jobs.models import (
    ChainExecution,
    ChainExecutionMember,
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
from jobs.secrets import seal_config, unseal_config
from keystore import pgp, ssh
from keystore.models import PublicKeyShareToken
from keystore.services import save_pgp_key, save_ssh_key
from monitors.models import FileMonitor, MonitorDirectoryState, MonitorFileLog, MonitorJobBinding
from notifications.models import Channel, Delivery, Rule
from system.models import SystemSetting
from tags.models import EntityTag, Tag
from tests.engine_support import make_job

pytestmark = pytest.mark.django_db

# ----------------------------------------------------------------- secrets the console must never show

CONNECTION_PASSWORD = "Conn-Password-Never-Shown-5521"
SSH_PASSPHRASE = "Ssh-Passphrase-Never-Shown-7730"
PGP_PASSPHRASE = "Pgp-Passphrase-Never-Shown-3390"
ZIP_PASSWORD = "Zip-Password-Never-Shown-1184"
TRIGGER_SECRET = "Trigger-Secret-Never-Shown-6604"
WEBHOOK_SECRET = "Webhook-Secret-Never-Shown-8817"
SMTP_PASSWORD = "Smtp-Password-Never-Shown-4406"


@functools.cache
def ssh_key_material() -> ssh.SshKeyMaterial:
    """An Ed25519 key imported with its passphrase (made once: the key derivation is slow on purpose)."""
    private = ed25519.Ed25519PrivateKey.generate()
    text = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(SSH_PASSPHRASE.encode()),
    ).decode()
    return ssh.load(text, SSH_PASSPHRASE)


@functools.cache
def pgp_key_material() -> pgp.PgpKeyMaterial:
    """A PGP key pair protected by a passphrase (generated once by gpg)."""
    return pgp.generate("ecc_p256", "Roles test pair", "roles@example.com", None, PGP_PASSPHRASE)


def private_lines(private_text: str, public_text: str) -> list[str]:
    """Lines of a private key block that do not also occur in its public half (which may be shown)."""
    return [line for line in private_text.splitlines() if len(line) >= 40 and line not in public_text]


def known_secrets() -> dict[str, str]:
    ssh_material, pgp_material = ssh_key_material(), pgp_key_material()
    pgp_private = json.loads(pgp_material.secret_bundle)["armored"]
    return {
        "connection password": CONNECTION_PASSWORD,
        "SSH key passphrase": SSH_PASSPHRASE,
        "SSH private key": private_lines(ssh_material.private_openssh, ssh_material.public_openssh)[0],
        "PGP key passphrase": PGP_PASSPHRASE,
        "PGP private key": private_lines(pgp_private, pgp_material.public_armored)[-1],
        "zip password of a job step": ZIP_PASSWORD,
        "secret trigger value": TRIGGER_SECRET,
        "master key": django_settings.COURIER_MASTER_KEY,
        "webhook signing secret": WEBHOOK_SECRET,
        "SMTP password": SMTP_PASSWORD,
    }


# ----------------------------------------------------------------- what each role may do with each model

ROLES = (VIEWER, OPERATOR, ADMIN)
ALL_ROLES = frozenset(ROLES)
STAFF = frozenset({OPERATOR, ADMIN})
ADMINS = frozenset({ADMIN})
NOBODY: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Rights:
    """Roles that may open the list and pages, add, save a change and delete (SPEC 8)."""

    add: frozenset[str]
    change: frozenset[str]
    delete: frozenset[str]
    view: frozenset[str] = ALL_ROLES


HISTORY = Rights(add=NOBODY, change=NOBODY, delete=NOBODY)  # written by the engine, never edited here
OPERATOR_MANAGED = Rights(add=STAFF, change=STAFF, delete=STAFF)
ADMIN_MANAGED = Rights(add=ADMINS, change=ADMINS, delete=ADMINS)

MODEL_RIGHTS: dict[str, Rights] = {
    # Operators create, edit and run jobs, chains, schedules, monitors and tags.
    "jobs.job": OPERATOR_MANAGED,
    "jobs.jobstep": OPERATOR_MANAGED,
    "jobs.jobchain": OPERATOR_MANAGED,
    "jobs.jobschedule": OPERATOR_MANAGED,
    "jobs.chainschedule": OPERATOR_MANAGED,
    "jobs.jobdependency": OPERATOR_MANAGED,
    "monitors.filemonitor": OPERATOR_MANAGED,
    "tags.tag": OPERATOR_MANAGED,
    # Assignments are made on the entity's page; the list only removes them.
    "tags.entitytag": Rights(add=NOBODY, change=NOBODY, delete=STAFF),
    # Admins alone manage connections, keys, share links, settings and users.
    "connections.connection": ADMIN_MANAGED,
    "connections.knownhost": Rights(add=NOBODY, change=ADMINS, delete=ADMINS),
    "keystore.pgpkey": ADMIN_MANAGED,
    "keystore.sshkey": ADMIN_MANAGED,
    "keystore.publickeysharetoken": Rights(add=ADMINS, change=NOBODY, delete=ADMINS),
    "system.systemsetting": Rights(add=ADMINS, change=ADMINS, delete=NOBODY),
    "auth.user": Rights(add=ADMINS, change=ADMINS, delete=ADMINS, view=ADMINS),
    "auth.group": Rights(add=ADMINS, change=ADMINS, delete=ADMINS, view=ADMINS),
    # History and members edited on their parent's page: read by everyone, written by nobody here.
    "jobs.jobversion": HISTORY,
    "jobs.jobexecution": HISTORY,
    "jobs.stepexecution": HISTORY,
    "jobs.chainexecution": HISTORY,
    "jobs.chainexecutionmember": HISTORY,
    "jobs.jobchainmember": HISTORY,
    "monitors.monitorjobbinding": HISTORY,
    "monitors.monitordirectorystate": HISTORY,
    "monitors.monitorfilelog": HISTORY,
    "audit.auditlogentry": HISTORY,
    "audit.domainevent": HISTORY,
    "courier_site.schemaversion": HISTORY,
    "courier_site.processheartbeat": HISTORY,
    # Notifications: Admins configure channels and rules; everyone reads them and the delivery log.
    "notifications.channel": ADMIN_MANAGED,
    "notifications.rule": ADMIN_MANAGED,
    "notifications.delivery": HISTORY,
}

# A harmless edit per editable model: (form field, new value, attribute that shows it was saved).
EDITS: dict[str, tuple[str, str, str] | None] = {
    "jobs.job": ("description", "Edited by the roles test", "description"),
    "jobs.jobstep": ("name", "zip the invoices (edited)", "name"),
    "jobs.jobchain": ("description", "Edited by the roles test", "description"),
    "jobs.jobschedule": ("cron_expression", "0 7 * * *", "cron_expression"),
    "jobs.chainschedule": ("cron_expression", "45 7 * * *", "cron_expression"),
    "jobs.jobdependency": ("run_on_failure", "on", "run_on_failure"),
    "monitors.filemonitor": ("description", "Edited by the roles test", "description"),
    "tags.tag": ("description", "Edited by the roles test", "description"),
    "connections.connection": ("notes", "Edited by the roles test", "notes"),
    "keystore.pgpkey": ("purpose", "Edited by the roles test", "purpose"),
    "keystore.sshkey": ("notes", "Edited by the roles test", "notes"),
    "system.systemsetting": ("value", "21", "value"),
    "connections.knownhost": None,  # every field is read-only: saving changes nothing
    "notifications.channel": ("description", "Edited by the roles test", "description"),
    "notifications.rule": ("description", "Edited by the roles test", "description"),
    "auth.user": ("first_name", "Edited", "first_name"),
    "auth.group": ("name", "Auditors (edited)", "name"),
}


def label(model: type[Model]) -> str:
    return model._meta.label_lower


def console_models() -> list[type[Model]]:
    return sorted(admin.site._registry, key=label)


def url_name(model_label: str, view: str) -> str:
    return f"admin:{model_label.replace('.', '_')}_{view}"


def per_role(model_labels: list[str]) -> list[Any]:
    """(model label, role) for each model and role, named like "jobs.job-Operator"."""
    return [
        pytest.param(model_label, role, id=f"{model_label}-{role}") for model_label in model_labels for role in ROLES
    ]


# ----------------------------------------------------------------- one row of every model


@dataclass
class World:
    """One row of every console model (secrets included), the role users and a data directory."""

    users: dict[str, Any]
    rows: dict[str, Model]
    data_dir: Path
    spare_job: Job
    forms: dict[str, dict[str, Any]] = field(default_factory=dict)  # admin forms as rendered, by URL


@dataclass
class Console:
    """The world every test starts from, and a client that signs in as a role."""

    client: Client
    world: World

    @property
    def users(self) -> dict[str, Any]:
        return self.world.users

    @property
    def data_dir(self) -> Path:
        return self.world.data_dir

    def sign_in(self, role: str) -> Client:
        self.client.force_login(self.users[role])
        return self.client

    def row(self, model_label: str) -> Model:
        return self.world.rows[model_label]

    def fresh(self, model_label: str) -> Model:
        row = self.row(model_label)
        return type(row)._base_manager.get(pk=row.pk)

    def change_url(self, model_label: str) -> str:
        return reverse(url_name(model_label, "change"), args=[self.row(model_label).pk])


@pytest.fixture(scope="module")
def world(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Built once for the module, inside a transaction rolled back at its end.

    Each test runs in a savepoint of that transaction (pytest-django's django_db), so whatever
    a test saves, adds or deletes is undone before the next one starts.
    """
    data_dir = tmp_path_factory.mktemp("roles") / "data"
    (data_dir / "inbox").mkdir(parents=True)
    with (
        django_db_blocker.unblock(),
        override_settings(COURIER_DATA_DIR=data_dir, COURIER_ALLOWED_ROOTS=[data_dir]),
        transaction.atomic(),
    ):
        yield build_world(data_dir)
        transaction.set_rollback(True)


@pytest.fixture
def console(world: World, client: Client) -> Console:
    return Console(client=client, world=world)


def build_world(data_dir: Path) -> World:
    User = get_user_model()
    users = {}
    for role in ROLES:
        # No password: force_login needs none, and hashing one would be most of the set-up's cost.
        user = User.objects.create_user(username=f"{role.lower()}-roles", is_staff=True)
        user.groups.add(Group.objects.get(name=role))
        users[role] = user
    someone = User.objects.create_user(username="someone")
    auditors = Group.objects.create(name="Auditors")

    ssh_key = save_ssh_key("ACME login key", ssh_key_material(), by="admin-roles", operation="imported")
    pgp_key = save_pgp_key("ACME pair", pgp_key_material(), by="admin-roles", operation="generated")
    SystemSetting.objects.filter(key="security.public_key_share_links_enabled").update(value="true")
    share_link = PublicKeyShareToken.objects.create(
        token_hash="e" * 64,
        key_type="pgp",
        key_id=pgp_key.pk,
        expires_at=timezone.now() + timedelta(days=7),
        created_by="admin-roles",
    )
    connection = Connection(
        name="ACME SFTP",
        protocol="sftp",
        host="127.0.0.1",
        port=1,  # nothing listens: "test connection" fails at once with E3003
        auth_method="password_and_ssh_key",
        username="courier",
        ssh_key=ssh_key,
        connect_timeout_sec=5,
    )
    connection.set_password(CONNECTION_PASSWORD)
    connection.save()
    known_host = KnownHost.objects.create(
        connection=connection, fingerprint="SHA256:trusted-roles-test", key_type="ssh-ed25519", approved_by="system"
    )

    zip_config = {"source_path": str(data_dir / "in.txt"), "output_path": "out.zip", "password": ZIP_PASSWORD}
    job = make_job([("file.zip", seal_config("file.zip", zip_config))], name="ACME invoices")
    member_job = make_job([("test.write", {"name": "a.txt", "text": "x"})], name="ACME receipts")
    spare_job = make_job([("test.write", {"name": "b.txt", "text": "y"})], name="ACME archive")
    execution = control.enqueue(
        job, triggered_by="manual:tester", context={"trigger.password": TRIGGER_SECRET, "batch": "42"}
    )
    step_execution = StepExecution.objects.create(
        job_execution=execution,
        job_step=job.steps.get(),
        step_order=0,
        state="pending",
        step_name="zip",
        type_key="file.zip",
    )
    chain = JobChain.objects.create(name="ACME month end")
    chain_member = JobChainMember.objects.create(chain=chain, job=member_job, execution_order=1)
    chain_execution = chains.trigger(chain, triggered_by="manual:tester", by="tester")
    dependency = JobDependency.objects.create(upstream_job=member_job, downstream_job=spare_job)
    job_schedule = JobSchedule.objects.create(job=job, cron_expression="0 6 * * *")
    chain_schedule = ChainSchedule.objects.create(chain=chain, cron_expression="30 6 * * *")

    monitor = FileMonitor.objects.create(
        name="ACME inbox",
        watch_target={"type": "local", "path": str(data_dir / "inbox")},
        trigger_events=1,
        file_patterns=["*.csv"],
    )
    binding = MonitorJobBinding.objects.create(monitor=monitor, job=job)
    directory_state = MonitorDirectoryState.objects.create(monitor=monitor, directory_listing={"a.csv": {"size": 1}})
    file_log = MonitorFileLog.objects.create(
        monitor=monitor,
        file_path=str(data_dir / "inbox" / "a.csv"),
        file_size=1,
        last_modified=timezone.now(),
        execution_id=execution.pk,
        trigger_event="FileCreated",
    )
    tag = Tag.objects.create(name="Finance", color="#2e7d32")
    entity_tag = EntityTag.objects.create(tag=tag, entity_type="job", entity_id=job.pk)
    audit_id = AuditLogEntry.objects.record(
        entity_type="job", entity_id=job.pk, operation="created", performed_by="tester", details={"name": job.name}
    )
    heartbeat = ProcessHeartbeat.objects.create(
        process_name="worker@roles",
        kind="worker",
        hostname="roles",
        pid=1,
        started_at=timezone.now(),
        last_seen_at=timezone.now(),
    )
    # Nothing listens on port 1: a test notification fails at once with E8003.
    webhook = Channel.objects.create(
        name="ACME pager",
        kind="webhook",
        settings={"url": "http://127.0.0.1:1/hook", "timeout_seconds": 2},
        secret_encrypted=keyring().seal(WEBHOOK_SECRET),
    )
    mail = Channel.objects.create(
        name="ACME ops mail",
        kind="email",
        settings={"host": "127.0.0.1", "port": 1, "security": "none", "username": "ops", "recipients": ["o@x.example"]},
        secret_encrypted=keyring().seal(SMTP_PASSWORD),
    )
    rule = Rule.objects.create(name="ACME failures", events=["job_failed", "step_failed"], quiet=True)
    rule.channels.add(webhook, mail)
    rule.jobs.add(job)
    delivery = Delivery.objects.create(
        event_type="JobFailed",
        event_kind="job_failed",
        channel=webhook,
        rule=rule,
        state="sent",
        attempts=1,
        subject="[Courier] job 'ACME invoices' failed",
        body="Job 'ACME invoices' failed.",
    )
    rows: dict[str, Model] = {
        "jobs.job": job,
        "jobs.jobstep": job.steps.get(),
        "jobs.jobversion": JobVersion.objects.get(job=job),
        "jobs.jobexecution": execution,
        "jobs.stepexecution": step_execution,
        "jobs.jobchain": chain,
        "jobs.jobchainmember": chain_member,
        "jobs.chainexecution": chain_execution,
        "jobs.chainexecutionmember": ChainExecutionMember.objects.get(chain_execution=chain_execution),
        "jobs.jobdependency": dependency,
        "jobs.jobschedule": job_schedule,
        "jobs.chainschedule": chain_schedule,
        "connections.connection": connection,
        "connections.knownhost": known_host,
        "keystore.sshkey": ssh_key,
        "keystore.pgpkey": pgp_key,
        "keystore.publickeysharetoken": share_link,
        "monitors.filemonitor": monitor,
        "monitors.monitorjobbinding": binding,
        "monitors.monitordirectorystate": directory_state,
        "monitors.monitorfilelog": file_log,
        "tags.tag": tag,
        "tags.entitytag": entity_tag,
        "audit.auditlogentry": AuditLogEntry.objects.get(pk=audit_id),
        "audit.domainevent": DomainEvent.objects.filter(entity_id=execution.pk).first(),
        "system.systemsetting": SystemSetting.objects.get(key="key.expiration_warning_days"),
        "courier_site.schemaversion": SchemaVersion.objects.order_by("script_name").first(),
        "courier_site.processheartbeat": heartbeat,
        "auth.user": someone,
        "auth.group": auditors,
        "notifications.channel": webhook,
        "notifications.rule": rule,
        "notifications.delivery": delivery,
    }
    return World(users=users, rows=rows, data_dir=data_dir, spare_job=spare_job)


# ----------------------------------------------------------------- posting a form as a browser would


class ChangeForm(HTMLParser):
    """The fields a browser submits from the admin's change form, as rendered (disabled ones left out)."""

    def __init__(self, form_id: str) -> None:
        super().__init__(convert_charrefs=True)
        self.form_id = form_id
        self.inside = False
        self.fields: list[tuple[str, str]] = []
        self._select: tuple[str, bool, list[tuple[str, bool]]] | None = None
        self._option: list[Any] | None = None
        self._textarea: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value if value is not None else "" for name, value in attrs}
        if tag == "form":
            self.inside = attributes.get("id") == self.form_id
            return
        if not self.inside:
            return
        if tag == "option":
            if self._select is not None:
                self._option = [attributes.get("value"), "selected" in attributes, ""]
            return
        if "disabled" in attributes or "name" not in attributes:
            return
        if tag == "input":
            kind = attributes.get("type", "text").lower()
            if kind in ("submit", "button", "image", "reset", "file"):
                return
            if kind in ("checkbox", "radio") and "checked" not in attributes:
                return
            self.fields.append((attributes["name"], attributes.get("value", "on" if kind == "checkbox" else "")))
        elif tag == "textarea":
            self._textarea = [attributes["name"]]
        elif tag == "select":
            self._select = (attributes["name"], "multiple" in attributes, [])

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._textarea.append(data)
        if self._option is not None:
            self._option[2] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "textarea" and self._textarea is not None:
            name, *text = self._textarea
            self.fields.append((name, "".join(text).removeprefix("\n")))
            self._textarea = None
        elif tag == "option" and self._option is not None and self._select is not None:
            value, selected, text = self._option
            self._select[2].append((text.strip() if value is None else value, selected))
            self._option = None
        elif tag == "select" and self._select is not None:
            name, multiple, options = self._select
            chosen = [value for value, selected in options if selected]
            if not chosen and options and not multiple:
                chosen = [options[0][0]]
            self.fields.extend((name, value) for value in chosen)
            self._select = None


def form_fields(page: Any, model_label: str) -> dict[str, Any]:
    """The admin change (or add) form on page as POST data, ready to be edited and sent back."""
    parser = ChangeForm(f"{model_label.split('.')[1]}_form")
    parser.feed(page.content.decode())
    data: dict[str, Any] = {}
    for name, value in parser.fields:
        if name in data:
            data[name] = [*data[name], value] if isinstance(data[name], list) else [data[name], value]
        else:
            data[name] = value
    data.pop("csrfmiddlewaretoken", None)
    data["_save"] = "Save"
    return data


def admin_form(console: Console, url: str, model_label: str) -> dict[str, Any]:
    """The form an Admin sees at url (every field editable), to post as another role.

    Every test starts from the same rows, so each form is read once for the module.
    """
    if url not in console.world.forms:
        page = console.sign_in(ADMIN).get(url)
        assert page.status_code == 200, url
        console.world.forms[url] = form_fields(page, model_label)
    return dict(console.world.forms[url])


def saved_value(row: Model, attribute: str) -> Any:
    return getattr(type(row)._base_manager.get(pk=row.pk), attribute)


def was_audited(user: Any, operation: str, entity_id: Any = None) -> bool:
    entries = AuditLogEntry.objects.filter(performed_by=user.get_username(), operation=operation)
    if entity_id is not None:
        entries = entries.filter(entity_id=entity_uuid(entity_id))
    return entries.exists()


# ----------------------------------------------------------------- rows each role may add (the add form, filled in)

# Values typed into the add form (on top of its defaults), and the query string of the add page.
ADDS: dict[str, tuple[str, Callable[[Console], dict[str, Any]]]] = {
    "jobs.job": ("", lambda console: {"name": "Added job"}),
    "jobs.jobstep": (
        "?type_key=flow.end",
        lambda console: {
            "job": str(console.row("jobs.job").pk),
            "step_order": "5",
            "name": "Added step",
            "type_key": "flow.end",
        },
    ),
    "jobs.jobchain": ("", lambda console: {"name": "Added chain"}),
    "jobs.jobschedule": ("", lambda console: {"job": str(console.row("jobs.job").pk), "cron_expression": "5 5 * * *"}),
    "jobs.chainschedule": (
        "",
        lambda console: {"chain": str(console.row("jobs.jobchain").pk), "cron_expression": "5 5 * * *"},
    ),
    "jobs.jobdependency": (
        "",
        lambda console: {
            "upstream_job": str(console.world.spare_job.pk),
            "downstream_job": str(console.row("jobs.job").pk),
        },
    ),
    "monitors.filemonitor": (
        "",
        lambda console: {
            "name": "Added monitor",
            "target_type": "local",
            "target_path": str(console.data_dir / "inbox"),
            "events": "1",
        },
    ),
    "tags.tag": ("", lambda console: {"name": "Added tag"}),
    "connections.connection": (
        "",
        lambda console: {
            "name": "Added connection",
            "protocol": "sftp",
            "host": "127.0.0.1",
            "auth_method": "password",
            "username": "partner",
            "new_password": "another-password",
        },
    ),
    "keystore.sshkey": ("", lambda console: {"name": "Added SSH key", "mode": "generate", "key_type": "ed25519"}),
    "keystore.pgpkey": (
        "",
        lambda console: {"name": "Added PGP key", "mode": "generate", "algorithm_choice": "ecc_p256"},
    ),
    "keystore.publickeysharetoken": (
        "",
        lambda console: {"key_choice": f"ssh:{console.row('keystore.sshkey').pk}", "days": "7"},
    ),
    "auth.user": (
        "",
        lambda console: {
            "username": "new-operator",
            "password1": "a-long-new-password-9",
            "password2": "a-long-new-password-9",
        },
    ),
    "notifications.channel": (
        "",
        lambda console: {
            "name": "Added channel",
            "kind": "email",
            "smtp_host": "smtp.example.com",
            "smtp_security": "starttls",
            "recipients": "ops@example.com",
        },
    ),
    "notifications.rule": (
        "",
        lambda console: {
            "name": "Added rule",
            "events": "job_failed",
            "channels": str(console.row("notifications.channel").pk),
        },
    ),
    "auth.group": ("", lambda console: {"name": "New group"}),
}

# Entities whose refused saves, adds and deletes are audited: all but Django's own user pages.
AUDITED_REFUSALS = [
    model_label
    for model_label, rights in MODEL_RIGHTS.items()
    if (rights.add or rights.change) and model_label not in ("auth.user", "auth.group")
]


# ----------------------------------------------------------------- console actions (the list's "Action" menu)


def set_row(model_label: str, **values: Any) -> Callable[[Console], None]:
    def prepare(console: Console) -> None:
        row = console.row(model_label)
        type(row)._base_manager.filter(pk=row.pk).update(**values)

    return prepare


def row_is(model_label: str, **values: Any) -> Callable[[Console, Any], bool]:
    def done(console: Console, response: Any) -> bool:
        row = console.fresh(model_label)
        return all(getattr(row, name) == value for name, value in values.items())

    return done


def nothing(console: Console) -> None:
    """No preparation needed."""


@dataclass(frozen=True)
class ConsoleAction:
    """An action of a list's menu, the roles it works for, and how to tell that it did its work."""

    model_label: str
    name: str
    roles: frozenset[str]
    done: Callable[[Console, Any], bool]
    prepare: Callable[[Console], None] = nothing
    refusal: str | None = None  # audit operation when the action itself refuses the role

    def __str__(self) -> str:
        return f"{self.model_label}.{self.name}"


ACTIONS = [
    ConsoleAction(
        "jobs.job",
        "run_selected",
        STAFF,
        lambda console, response: JobExecution.objects.filter(job=console.row("jobs.job")).count() == 2,
    ),
    ConsoleAction(
        "jobs.jobchain",
        "trigger_selected",
        STAFF,
        lambda console, response: ChainExecution.objects.filter(chain=console.row("jobs.jobchain")).count() == 2,
    ),
    ConsoleAction("jobs.jobexecution", "cancel_selected", STAFF, row_is("jobs.jobexecution", state="cancelled")),
    ConsoleAction("jobs.chainexecution", "cancel_selected", STAFF, row_is("jobs.chainexecution", state="cancelled")),
    ConsoleAction("jobs.jobschedule", "disable_selected", STAFF, row_is("jobs.jobschedule", is_enabled=False)),
    ConsoleAction(
        "jobs.jobschedule",
        "enable_selected",
        STAFF,
        row_is("jobs.jobschedule", is_enabled=True),
        set_row("jobs.jobschedule", is_enabled=False),
    ),
    ConsoleAction("jobs.chainschedule", "disable_selected", STAFF, row_is("jobs.chainschedule", is_enabled=False)),
    ConsoleAction(
        "jobs.chainschedule",
        "enable_selected",
        STAFF,
        row_is("jobs.chainschedule", is_enabled=True),
        set_row("jobs.chainschedule", is_enabled=False),
    ),
    ConsoleAction(
        "monitors.filemonitor",
        "poll_selected",
        STAFF,
        lambda console, response: "Queued a poll of 1 monitor(s)." in response.content.decode(),
    ),
    ConsoleAction("monitors.filemonitor", "pause_selected", STAFF, row_is("monitors.filemonitor", state="paused")),
    ConsoleAction(
        "monitors.filemonitor",
        "resume_selected",
        STAFF,
        row_is("monitors.filemonitor", state="active"),
        set_row("monitors.filemonitor", state="paused"),
    ),
    ConsoleAction(
        "monitors.filemonitor",
        "acknowledge_selected",
        STAFF,
        row_is("monitors.filemonitor", state="active"),
        set_row("monitors.filemonitor", state="error", last_error="[E5003] authentication failed"),
    ),
    ConsoleAction("monitors.filemonitor", "disable_selected", STAFF, row_is("monitors.filemonitor", state="disabled")),
    ConsoleAction(
        "monitors.filemonitor",
        "enable_selected",
        STAFF,
        row_is("monitors.filemonitor", state="active"),
        set_row("monitors.filemonitor", state="disabled"),
    ),
    ConsoleAction("keystore.pgpkey", "retire_keys", ADMINS, row_is("keystore.pgpkey", status="retired")),
    ConsoleAction("keystore.pgpkey", "revoke_keys", ADMINS, row_is("keystore.pgpkey", status="revoked")),
    ConsoleAction(
        "keystore.publickeysharetoken",
        "revoke_links",
        ADMINS,
        lambda console, response: console.fresh("keystore.publickeysharetoken").revoked_at is not None,
    ),
    ConsoleAction(
        "connections.knownhost",
        "approve_keys",
        ADMINS,
        lambda console, response: console.fresh("connections.knownhost").approved_by != hostkeys.PENDING,
        set_row("connections.knownhost", approved_by=hostkeys.PENDING),
        refusal="host_key_approval_refused",
    ),
    ConsoleAction(
        "notifications.channel",
        "send_test_selected",
        ADMINS,
        lambda console, response: Delivery.objects.filter(
            channel=console.row("notifications.channel"), event_kind="test"
        ).exists(),
    ),
    ConsoleAction(
        "notifications.delivery",
        "send_again",
        ADMINS,
        row_is("notifications.delivery", state="pending"),
        set_row("notifications.delivery", state="failed"),
    ),
    ConsoleAction(
        "audit.domainevent",
        "relay_again",
        ADMINS,
        row_is("audit.domainevent", relay_failed_at=None),
        set_row("audit.domainevent", relay_failed_at=timezone.now(), processed_at=timezone.now(), relay_attempts=5),
    ),
]


def action_name(action: Any) -> str:
    return action if isinstance(action, str) else action.__name__


# ----------------------------------------------------------------- custom console URLs (get_urls of each admin)


@dataclass(frozen=True)
class CustomView:
    """A URL of a ModelAdmin's get_urls (or the dashboard), who may use it, and what a refusal audits."""

    url_name: str
    roles: frozenset[str]
    row: str | None = None  # the model whose world row the URL names
    verb: str = ""  # the URL's action word (pause, cancel …), when it takes one
    refusal: str | None = None  # audit operation the view writes when it refuses a role
    query: str = ""

    def url(self, console: Console) -> str:
        args = [console.row(self.row).pk, *([self.verb] if self.verb else [])] if self.row else []
        return reverse(self.url_name, args=args) + self.query

    def __str__(self) -> str:
        return self.url_name.removeprefix("admin:") + (f"-{self.verb}" if self.verb else "")


CUSTOM_VIEWS = [
    CustomView("admin:jobs_job_run", STAFF, "jobs.job", refusal="run_refused"),
    CustomView("admin:jobs_job_diff", ALL_ROLES, "jobs.job"),
    CustomView("admin:jobs_jobchain_run", STAFF, "jobs.jobchain", refusal="run_refused"),
    CustomView("admin:jobs_chainexecution_cancel", STAFF, "jobs.chainexecution", refusal="cancel_refused"),
    *(
        CustomView("admin:jobs_jobexecution_control", STAFF, "jobs.jobexecution", verb, refusal=f"{verb}_refused")
        for verb in ("pause", "resume", "cancel", "retry")
    ),
    CustomView("admin:jobs_jobexecution_timeline", ALL_ROLES, "jobs.jobexecution"),
    CustomView("admin:jobs_chainexecution_live", ALL_ROLES, "jobs.chainexecution"),
    *(
        CustomView("admin:monitors_filemonitor_state", STAFF, "monitors.filemonitor", verb, refusal=f"{verb}_refused")
        for verb in ("pause", "resume", "acknowledge", "disable", "enable")
    ),
    CustomView("admin:connections_connection_test", STAFF, "connections.connection", refusal="test_refused"),
    CustomView("admin:keystore_pgpkey_public", ALL_ROLES, "keystore.pgpkey"),
    CustomView("admin:keystore_pgpkey_private", ADMINS, "keystore.pgpkey", refusal="private_export_refused"),
    CustomView("admin:keystore_sshkey_public", ALL_ROLES, "keystore.sshkey"),
    CustomView("admin:audit_auditlogentry_export", ALL_ROLES),
    CustomView("admin:notifications_channel_test", ADMINS, "notifications.channel", refusal="test_refused"),
    CustomView("admin:auth_user_password_change", ADMINS, "auth.user"),  # Django's own view: refusals not audited
    CustomView("admin:search", ALL_ROLES, query="?s=ACME"),
    CustomView("dashboard", ALL_ROLES),
]

# Django's own site pages (sign-in, password, JavaScript catalogue …) and the views every ModelAdmin has.
SITE_VIEWS = {
    "index",
    "login",
    "logout",
    "password_change",
    "password_change_done",
    "autocomplete",
    "jsi18n",
    "view_on_site",
    "app_list",
}
MODEL_VIEWS = ("changelist", "add", "change", "delete", "history")


def console_url_names() -> set[str]:
    """Every named URL of the console: the admin namespace, and the dashboard that replaces its index."""
    names = set()

    def walk(patterns: list[Any], namespace: str | None) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, pattern.namespace or namespace)
            elif isinstance(pattern, URLPattern) and pattern.name:
                if namespace == "admin":
                    names.add(f"admin:{pattern.name}")
                elif pattern.name == "dashboard":
                    names.add(pattern.name)

    walk(get_resolver().url_patterns, None)
    return names


def body(response: Any) -> str:
    content = b"".join(response.streaming_content) if response.streaming else response.content
    return content.decode(errors="replace")


def activity(console: Console) -> tuple[Any, ...]:
    """What a refused custom view must leave as it was: runs, states, tests and exports."""
    return (
        JobExecution.objects.count(),
        ChainExecution.objects.count(),
        console.fresh("jobs.jobexecution").state,
        console.fresh("jobs.jobexecution").control_request,
        console.fresh("jobs.chainexecution").state,
        console.fresh("monitors.filemonitor").state,
        AuditLogEntry.objects.filter(operation__in=("tested", "private_key_exported")).count(),
    )


# ----------------------------------------------------------------- the tables cover the whole console


def test_every_console_model_has_rights_and_a_row(console: Console) -> None:
    registered = {label(model) for model in console_models()}
    assert registered == set(MODEL_RIGHTS)
    assert set(console.world.rows) == registered
    assert all(row is not None and row.pk is not None for row in console.world.rows.values())


def test_every_editable_model_has_a_harmless_edit_and_an_add_form() -> None:
    assert {model_label for model_label, rights in MODEL_RIGHTS.items() if rights.change} <= set(EDITS)
    # Every known setting is seeded, so system settings are changed, never added (checked below).
    addable = {model_label for model_label, rights in MODEL_RIGHTS.items() if rights.add}
    assert addable - {"system.systemsetting"} == set(ADDS)


def test_every_console_action_is_in_the_action_table() -> None:
    offered = {
        f"{label(model)}.{action_name(action)}"
        for model, model_admin in admin.site._registry.items()
        for action in model_admin.actions or ()
    }
    assert offered == {str(action) for action in ACTIONS}


def test_every_custom_console_url_is_in_the_url_table() -> None:
    standard = {f"admin:{view}" for view in SITE_VIEWS} | {
        url_name(model_label, view) for model_label in MODEL_RIGHTS for view in MODEL_VIEWS
    }
    assert console_url_names() - standard == {view.url_name for view in CUSTOM_VIEWS}


# ----------------------------------------------------------------- pages, saves, adds and deletes per model and role


@pytest.mark.parametrize("model_label", list(MODEL_RIGHTS))
def test_list_and_change_page_open_only_for_roles_that_read_them(console: Console, model_label: str) -> None:
    urls = [reverse(url_name(model_label, "changelist")), console.change_url(model_label)]
    seen = {(role, url): console.sign_in(role).get(url).status_code for role in ROLES for url in urls}
    expected = {(role, url): 200 if role in MODEL_RIGHTS[model_label].view else 403 for role in ROLES for url in urls}
    assert seen == expected


@pytest.mark.parametrize("model_label", list(MODEL_RIGHTS))
def test_add_page_opens_only_for_roles_that_may_add(console: Console, model_label: str) -> None:
    url = reverse(url_name(model_label, "add"))
    seen = {role: console.sign_in(role).get(url).status_code for role in ROLES}
    opens = 302 if model_label == "system.systemsetting" else 200  # every setting exists: change one instead
    assert seen == {role: opens if role in MODEL_RIGHTS[model_label].add else 403 for role in ROLES}


@pytest.mark.parametrize(("model_label", "role"), per_role(list(MODEL_RIGHTS)))
def test_a_change_is_saved_only_by_roles_that_may_change(console: Console, model_label: str, role: str) -> None:
    url = console.change_url(model_label)
    data = admin_form(console, url, model_label)
    row = console.row(model_label)
    form_field, value, attribute = EDITS.get(model_label) or (None, None, None)
    before = saved_value(row, attribute) if attribute else None
    if form_field:
        data[form_field] = value

    response = console.sign_in(role).post(url, data)

    if role in MODEL_RIGHTS[model_label].change:
        assert response.status_code == 302, response.content.decode()[:3000]
        assert attribute is None or saved_value(row, attribute) not in (before, None, "")
    else:
        assert response.status_code == 403
        assert attribute is None or saved_value(row, attribute) == before


@pytest.mark.parametrize(("model_label", "role"), per_role(list(ADDS)))
def test_a_row_is_added_only_by_roles_that_may_add(console: Console, model_label: str, role: str) -> None:
    query, values = ADDS[model_label]
    url = reverse(url_name(model_label, "add")) + query
    data = {**admin_form(console, url, model_label), **values(console)}
    model = type(console.row(model_label))
    before = model._default_manager.count()

    response = console.sign_in(role).post(url, data)

    if role in MODEL_RIGHTS[model_label].add:
        assert response.status_code == 302, response.content.decode()[:3000]
        assert model._default_manager.count() == before + 1
    else:
        assert response.status_code == 403
        assert model._default_manager.count() == before


@pytest.mark.parametrize("model_label", AUDITED_REFUSALS)
def test_refused_saves_adds_and_deletes_are_audited(console: Console, model_label: str) -> None:
    viewer = console.users[VIEWER]
    row = console.row(model_label)
    client = console.sign_in(VIEWER)

    assert client.post(console.change_url(model_label), {"name": "x"}).status_code == 403
    assert client.post(reverse(url_name(model_label, "add")), {"name": "x"}).status_code == 403
    assert client.post(reverse(url_name(model_label, "delete"), args=[row.pk]), {"post": "yes"}).status_code == 403

    assert was_audited(viewer, "change_refused", row.pk)
    assert was_audited(viewer, "add_refused")
    assert was_audited(viewer, "delete_refused", row.pk)


@pytest.mark.parametrize("model_label", list(MODEL_RIGHTS))
def test_delete_is_refused_to_roles_that_may_not_delete(console: Console, model_label: str) -> None:
    row = console.row(model_label)
    url = reverse(url_name(model_label, "delete"), args=[row.pk])
    bulk = {"action": "delete_selected", "_selected_action": [str(row.pk)], "index": "0", "post": "yes"}
    for role in ROLES:
        client = console.sign_in(role)
        if role in MODEL_RIGHTS[model_label].delete:
            assert client.get(url).status_code == 200, role  # the confirmation page; nothing is deleted
            continue
        assert client.post(url, {"post": "yes"}).status_code == 403, role
        client.post(reverse(url_name(model_label, "changelist")), bulk)
        assert type(row)._default_manager.filter(pk=row.pk).exists(), role


# ----------------------------------------------------------------- actions and custom URLs per role


@pytest.mark.parametrize(
    ("action", "role"), [pytest.param(action, role, id=f"{action}-{role}") for action in ACTIONS for role in ROLES]
)
def test_console_action_works_only_for_its_roles(console: Console, action: ConsoleAction, role: str) -> None:
    action.prepare(console)
    row = console.row(action.model_label)
    data = {"action": action.name, "_selected_action": [str(row.pk)], "index": "0"}

    response = console.sign_in(role).post(reverse(url_name(action.model_label, "changelist")), data, follow=True)

    assert response.status_code == 200
    if role in action.roles:
        assert action.done(console, response), response.content.decode()[-3000:]
    else:
        assert not action.done(console, response)
        assert action.refusal is None or was_audited(console.users[role], action.refusal)


@pytest.mark.parametrize("view", CUSTOM_VIEWS, ids=str)
def test_custom_url_opens_for_its_roles_and_refuses_the_others(console: Console, view: CustomView) -> None:
    url = view.url(console)
    for role in ROLES:
        client = console.sign_in(role)
        if role in view.roles:
            response = client.get(url)
            assert response.status_code == 200, (role, body(response)[:2000])
            continue
        before = activity(console)
        # Posted with the private export's confirmation: the refusal must not hang on a missing one.
        response = client.post(url, {"confirm": console.row("keystore.pgpkey").short_key_id})
        assert response.status_code == 403, role
        assert activity(console) == before, role
        assert view.refusal is None or was_audited(console.users[role], view.refusal), role


# ----------------------------------------------------------------- Admin-only settings, share links, private keys

ADMIN_ONLY_CONNECTION_SETTINGS = [
    pytest.param({"host_key_policy": "always_trust"}, "host_key_policy", "always_trust", id="always_trust"),
    pytest.param(
        {"protocol": "ftps", "auth_method": "password", "ssh_key": "", "tls_cert_policy": "insecure"},
        "tls_cert_policy",
        "insecure",
        id="insecure-tls",
    ),
    pytest.param({"fips_override": "on"}, "fips_override", True, id="fips_override"),
]


def connection_form(console: Console, **changes: Any) -> dict[str, Any]:
    data = admin_form(console, console.change_url("connections.connection"), "connections.connection")
    data.update(changes)
    return data


@pytest.mark.parametrize(("changes", "attribute", "value"), ADMIN_ONLY_CONNECTION_SETTINGS)
def test_operator_may_not_set_an_admin_only_connection_setting_and_the_refusal_is_audited(
    console: Console, changes: dict[str, Any], attribute: str, value: Any
) -> None:
    connection = console.row("connections.connection")
    data = connection_form(console, **changes)
    operator = console.users[OPERATOR]

    response = console.sign_in(OPERATOR).post(console.change_url("connections.connection"), data)

    assert response.status_code == 403
    assert saved_value(connection, attribute) != value
    entry = AuditLogEntry.objects.get(
        performed_by=operator.get_username(), operation="change_refused", entity_id=connection.pk
    )
    assert entry.details["admin_only_settings"] == {attribute: value}
    assert CONNECTION_PASSWORD not in json.dumps(entry.details)


@pytest.mark.parametrize(("changes", "attribute", "value"), ADMIN_ONLY_CONNECTION_SETTINGS)
def test_admin_sets_an_admin_only_connection_setting_outside_production(
    console: Console, changes: dict[str, Any], attribute: str, value: Any
) -> None:
    connection = console.row("connections.connection")
    data = connection_form(console, **changes)

    response = console.sign_in(ADMIN).post(console.change_url("connections.connection"), data)

    assert response.status_code == 302, response.content.decode()[:3000]
    assert saved_value(connection, attribute) == value
    assert AuditLogEntry.objects.filter(
        entity_id=connection.pk, operation="changed", details__fields__contains=[attribute]
    ).exists()


def test_operator_may_not_add_a_connection_with_insecure_tls_and_the_refusal_is_audited(console: Console) -> None:
    url = reverse("admin:connections_connection_add")
    data = admin_form(console, url, "connections.connection")
    data.update(
        name="Sneaky FTPS",
        protocol="ftps",
        host="127.0.0.1",
        auth_method="password",
        username="partner",
        new_password="typed-by-operator",
        tls_cert_policy="insecure",
    )

    response = console.sign_in(OPERATOR).post(url, data)

    assert response.status_code == 403
    assert not Connection.all_objects.filter(name="Sneaky FTPS").exists()
    entry = AuditLogEntry.objects.get(performed_by=console.users[OPERATOR].get_username(), operation="add_refused")
    assert entry.entity_type == "connection"
    assert entry.details["admin_only_settings"] == {"tls_cert_policy": "insecure"}
    assert "typed-by-operator" not in json.dumps(entry.details)


def test_operator_may_not_create_a_share_link_and_the_refusal_is_audited(console: Console) -> None:
    url = reverse("admin:keystore_publickeysharetoken_add")
    data = {
        **admin_form(console, url, "keystore.publickeysharetoken"),
        **ADDS["keystore.publickeysharetoken"][1](console),
    }

    response = console.sign_in(OPERATOR).post(url, data)

    assert response.status_code == 403
    assert PublicKeyShareToken.objects.count() == 1
    assert was_audited(console.users[OPERATOR], "add_refused")
    assert AuditLogEntry.objects.filter(operation="add_refused", entity_type="share_token").exists()


def test_admin_creates_a_share_link_and_sees_its_address_once(console: Console) -> None:
    url = reverse("admin:keystore_publickeysharetoken_add")
    data = {
        **admin_form(console, url, "keystore.publickeysharetoken"),
        **ADDS["keystore.publickeysharetoken"][1](console),
    }

    response = console.sign_in(ADMIN).post(url, data, follow=True)

    link = PublicKeyShareToken.objects.exclude(pk=console.row("keystore.publickeysharetoken").pk).get()
    assert "Share link (shown once, copy it now)" in response.content.decode()
    assert AuditLogEntry.objects.filter(entity_id=link.pk, operation="created").exists()
    again = console.client.get(reverse("admin:keystore_publickeysharetoken_changelist")).content.decode()
    assert "/share/" not in again


def test_only_an_admin_exports_a_private_key_and_only_after_confirming(console: Console) -> None:
    key = console.row("keystore.pgpkey")
    url = reverse("admin:keystore_pgpkey_private", args=[key.pk])
    client = console.sign_in(ADMIN)
    pgp_private_line = known_secrets()["PGP private key"]

    confirmation = client.get(url)
    assert confirmation.status_code == 200 and pgp_private_line not in confirmation.content.decode()
    assert client.post(url, {"confirm": "not-the-key-id"}).status_code == 200  # asked again, nothing exported

    exported = client.post(url, {"confirm": key.short_key_id})

    assert pgp_private_line in exported.content.decode()
    assert was_audited(console.users[ADMIN], "private_key_exported", key.pk)
    assert AuditLogEntry.objects.filter(operation="private_key_exported").count() == 1


def test_operator_resaving_a_step_keeps_its_sealed_zip_password(console: Console) -> None:
    step = console.row("jobs.jobstep")
    url = console.change_url("jobs.jobstep")
    data = admin_form(console, url, "jobs.jobstep")
    assert data.get("config__password", "") == ""  # write-only: the page never carries it back

    assert console.sign_in(OPERATOR).post(url, {**data, "name": "zip, saved again"}).status_code == 302

    stored = JobStep.objects.get(pk=step.pk).configuration["password"]
    assert set(stored) == {"sealed"} and ZIP_PASSWORD not in json.dumps(stored)
    assert unseal_config({"password": stored})["password"] == ZIP_PASSWORD


# ----------------------------------------------------------------- no page shows a secret


def console_pages(console: Console, role: str) -> Iterator[str]:
    """Every page the role may open: lists, add, change and history pages, custom views."""
    for model_label, rights in MODEL_RIGHTS.items():
        if role not in rights.view:
            continue
        yield reverse(url_name(model_label, "changelist"))
        yield console.change_url(model_label)
        yield reverse(url_name(model_label, "history"), args=[console.row(model_label).pk])
        if role in rights.add and model_label in ADDS:
            yield reverse(url_name(model_label, "add")) + ADDS[model_label][0]
    if role in MODEL_RIGHTS["jobs.jobstep"].add:
        yield reverse("admin:jobs_jobstep_add") + "?type_key=file.zip"  # the form with the write-only password
    for view in CUSTOM_VIEWS:
        if role in view.roles:
            yield view.url(console)


def history_pages() -> Iterator[str]:
    """Every audit record and domain event (what the set-up and the engine wrote)."""
    for entry_id in AuditLogEntry.objects.values_list("pk", flat=True):
        yield reverse("admin:audit_auditlogentry_change", args=[entry_id])
    for event_id in DomainEvent.objects.values_list("pk", flat=True):
        yield reverse("admin:audit_domainevent_change", args=[event_id])


def leaks_on(client: Client, urls: Iterator[str]) -> list[tuple[str, str]]:
    """(page, secret) for every known secret found on one of the pages; each page must open."""
    secrets = known_secrets()
    leaks = []
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        text = body(response)
        leaks += [(url, name) for name, secret in secrets.items() if secret in text]
    return leaks


def test_the_world_holds_every_secret_the_pages_are_searched_for(console: Console) -> None:
    secrets = known_secrets()
    connection, step = console.row("connections.connection"), console.row("jobs.jobstep")
    ssh_key, pgp_key = console.row("keystore.sshkey"), console.row("keystore.pgpkey")
    pgp_bundle = json.loads(keyring().open_text(pgp_key.private_key_data))

    assert keyring().open_text(connection.password_encrypted) == CONNECTION_PASSWORD
    assert secrets["SSH private key"] in keyring().open_text(ssh_key.private_key_data)
    assert pgp_bundle["passphrase"] == PGP_PASSPHRASE and secrets["PGP private key"] in pgp_bundle["armored"]
    assert unseal_config(step.configuration)["password"] == ZIP_PASSWORD
    assert console.row("jobs.jobexecution").context_snapshot["values"]["trigger.password"] == TRIGGER_SECRET
    assert keyring().open_text(console.row("notifications.channel").secret_encrypted) == WEBHOOK_SECRET
    assert keyring().open_text(Channel.objects.get(name="ACME ops mail").secret_encrypted) == SMTP_PASSWORD


@pytest.mark.parametrize("role", ROLES)
def test_no_console_page_shows_a_secret(console: Console, role: str) -> None:
    assert leaks_on(console.sign_in(role), console_pages(console, role)) == []


def test_no_audit_record_or_domain_event_shows_a_secret(console: Console) -> None:
    # Read-only for every role, and rendered alike for each: one role's look is enough.
    assert leaks_on(console.sign_in(VIEWER), history_pages()) == []


def test_a_connection_form_shown_again_with_errors_does_not_echo_the_typed_password(console: Console) -> None:
    data = connection_form(console, new_password="Typed-Password-Not-Echoed-2290", port="not a port")

    response = console.sign_in(ADMIN).post(console.change_url("connections.connection"), data)

    assert response.status_code == 200 and response.context["adminform"].form.errors
    assert "Typed-Password-Not-Echoed-2290" not in response.content.decode()
    assert CONNECTION_PASSWORD not in response.content.decode()
