"""Every add and change page of the console, fed bad, empty and garbage input by an Admin, answers without a 5xx.

The pages are walked from admin.site._registry, so a model registered later is covered (or
fails here until it gets a sample row). A page that refuses the input must leave every
table as it was: nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from psycopg import sql

from audit.models import AuditLogEntry, DomainEvent
from connections.models import Connection, KnownHost
from courier_site.models import ProcessHeartbeat, SchemaVersion
from courier_site.roles import ADMIN
from jobs.models import (
    ChainExecution,
    ChainExecutionMember,
    ChainSchedule,
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
from notifications.models import Channel, Delivery, Rule
from system.models import SystemSetting
from tags.models import EntityTag, Tag
from tests.engine_support import make_job

pytestmark = pytest.mark.django_db

REGISTERED = sorted(admin.site._registry.items(), key=lambda item: item[0]._meta.label_lower)

# Written on a refused save on purpose (refusals are audited); sessions by the sign-in.
UNFINGERPRINTED = {"audit_log_entries", "domain_events", "django_session", "django_admin_log"}

GARBAGE = "garbage ☃ <b>x</b> '; drop table jobs; --"
HUGE = "9" * 30
# PostgreSQL stores no NUL character, neither in text nor inside jsonb.
NUL_TEXT = "bad\x00value"
NUL_JSON = '{"key": "a\\u0000b", "list": ["\\u0000"]}'


def is_json_container(value: str) -> bool:
    try:
        return isinstance(json.loads(value), (dict, list))
    except ValueError:
        return False


def single_field_values(current: str, kind: str) -> list[str | None]:
    """Bad values tried on one field while the rest of the form keeps the page's own values (None: left out)."""
    if kind == "check":
        return [None if current else "on"]
    if kind == "choice":
        return [GARBAGE, ""]
    values: list[str | None] = [GARBAGE, "-1", HUGE, NUL_TEXT, ""]
    if is_json_container(current):
        values += [NUL_JSON, "[]", "null"]
    return values


# Every field of the form at once: empty, text, negative, huge, NUL, JSON of the wrong shape.
WHOLE_FORM_VALUES = ["", GARBAGE, "-1", HUGE, NUL_TEXT, NUL_JSON, '[1, {"nested": [null, true]}, "x"]', "null"]


class FormReader(HTMLParser):
    """The fields of one <form> as a browser would submit them, and which of them a user can type into."""

    def __init__(self, form_id: str) -> None:
        super().__init__(convert_charrefs=True)
        self.form_id = form_id
        self.inside = False
        self.values: list[tuple[str, str]] = []
        self.editable: dict[str, str] = {}  # name -> "text", "choice" or "check"
        self._select: str | None = None
        self._select_multiple = False
        self._options: list[tuple[str, bool]] = []
        self._textarea: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        if tag == "form":
            self.inside = attributes.get("id") == self.form_id
            return
        name = attributes.get("name", "")
        if not self.inside or (not name and tag != "option") or "__prefix__" in name:
            return
        if tag == "input":
            kind = attributes.get("type", "text").lower()
            if kind in ("submit", "button", "file", "image", "reset"):
                return
            if kind in ("checkbox", "radio"):
                if "checked" in attributes:
                    self.values.append((name, attributes.get("value", "on")))
                self.editable[name] = "check"
                return
            self.values.append((name, attributes.get("value", "")))
            if kind != "hidden" and "readonly" not in attributes and "disabled" not in attributes:
                self.editable[name] = "text"
        elif tag == "select":
            self._select, self._select_multiple, self._options = name, "multiple" in attributes, []
            self.editable[name] = "choice"
        elif tag == "option" and self._select is not None:
            self._options.append((attributes.get("value", ""), "selected" in attributes))
        elif tag == "textarea":
            self._textarea, self._text = name, []
            if "readonly" not in attributes:
                self.editable[name] = "text"

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select" and self._select is not None:
            chosen = [value for value, selected in self._options if selected]
            if not chosen and not self._select_multiple and self._options:
                chosen = [self._options[0][0]]
            self.values += [(self._select, value) for value in chosen]
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            self.values.append((self._textarea, "".join(self._text).removeprefix("\n")))
            self._textarea = None


def read_form(html: str, model: Any) -> FormReader:
    reader = FormReader(f"{model._meta.model_name}_form")
    reader.feed(html)
    return reader


def as_post(values: list[tuple[str, str]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, value in values:
        data.setdefault(name, []).append(value)
    return data


def sample_rows() -> dict[str, Any]:
    """One row of every registered model, for its change page."""
    now = timezone.now()
    job = make_job([("flow.foreach", {"source": ["a"]}), ("flow.end", {})], name="Bad input job")
    other_job = make_job([("flow.foreach", {"source": ["b"]}), ("flow.end", {})], name="Bad input upstream")
    chain = JobChain.objects.create(name="Bad input chain")
    member = JobChainMember.objects.create(chain=chain, job=job, execution_order=0)
    chain_execution = ChainExecution.objects.create(chain=chain, triggered_by="manual:tester", state="running")
    execution = JobExecution.objects.create(
        job=job, job_version_number=1, triggered_by="manual:tester", state="failed", error_message="[E2050] boom"
    )
    ssh_key = SshKey.objects.create(
        name="bad-input-ssh",
        key_type="ed25519",
        public_key_data="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBadInputBadInputBadInputBadInputBadInputBad x",
        private_key_data=b"sealed",
        fingerprint="SHA256:badinput",
        created_by="tester",
    )
    pgp_key = PgpKey.objects.create(
        name="bad-input-pgp",
        fingerprint="A" * 40,
        short_key_id="A" * 16,
        algorithm=PgpKey.Algorithm.choices[0][0],
        key_type=PgpKey.KeyType.choices[0][0],
        public_key_data="-----BEGIN PGP PUBLIC KEY BLOCK-----\n-----END PGP PUBLIC KEY BLOCK-----",
        created_by="tester",
    )
    connection_row = Connection.objects.create(
        name="bad-input-sftp",
        protocol="sftp",
        host="127.0.0.1",
        port=2222,
        auth_method="password",
        username="courier",
    )
    monitor = FileMonitor.objects.create(name="bad-input-monitor", watch_target={"path": "/tmp"}, trigger_events=1)
    tag = Tag.objects.create(name="bad-input")
    heartbeat = ProcessHeartbeat.objects.create(
        process_name="worker@bad-input", kind="worker", hostname="h", pid=1, started_at=now, last_seen_at=now
    )
    admin_group = Group.objects.get(name=ADMIN)
    audit_id = AuditLogEntry.objects.record(
        entity_type="job", entity_id=job.pk, operation="sampled", performed_by="tester", event_type="BadInputSample"
    )
    user = User.objects.create_user(username="someone", password="pw-long-enough-2")
    channel = Channel.objects.create(
        name="bad-input-hook", kind="webhook", settings={"url": "https://hooks.example.com/c", "timeout_seconds": 5}
    )
    rule = Rule.objects.create(name="bad-input-rule", events=["job_failed"])
    rule.channels.add(channel)
    return {
        "notifications.channel": channel,
        "notifications.rule": rule,
        "notifications.delivery": Delivery.objects.create(
            event_type="JobFailed", event_kind="job_failed", channel=channel, rule=rule, subject="s", body="b"
        ),
        "auth.group": admin_group,
        "auth.user": user,
        "courier_site.schemaversion": SchemaVersion.objects.order_by("script_name").first(),
        "courier_site.processheartbeat": heartbeat,
        "system.systemsetting": SystemSetting.objects.order_by("key").first(),
        "tags.tag": tag,
        "tags.entitytag": EntityTag.objects.create(tag=tag, entity_type="job", entity_id=job.pk),
        "audit.auditlogentry": AuditLogEntry.objects.get(pk=audit_id),
        "audit.domainevent": DomainEvent.objects.get(entity_id=job.pk, event_type="BadInputSample"),
        "keystore.pgpkey": pgp_key,
        "keystore.sshkey": ssh_key,
        "keystore.publickeysharetoken": PublicKeyShareToken.objects.create(
            token_hash=hashlib.sha256(b"bad-input").hexdigest(),
            key_type="pgp",
            key_id=pgp_key.pk,
            expires_at=now + timedelta(days=1),
            created_by="tester",
        ),
        "connections.connection": connection_row,
        "connections.knownhost": KnownHost.objects.create(
            connection=connection_row, fingerprint="SHA256:bad", key_type="ssh-ed25519", approved_by="system"
        ),
        "jobs.job": job,
        "jobs.jobstep": JobStep.objects.filter(job=job).order_by("step_order").first(),
        "jobs.jobversion": JobVersion.objects.filter(job=job).first(),
        "jobs.jobschedule": JobSchedule.objects.create(job=job, cron_expression="0 2 * * *"),
        "jobs.chainschedule": ChainSchedule.objects.create(chain=chain, cron_expression="0 3 * * *"),
        "jobs.jobdependency": JobDependency.objects.create(upstream_job=other_job, downstream_job=job),
        "jobs.jobchain": chain,
        "jobs.jobchainmember": member,
        "jobs.chainexecution": chain_execution,
        "jobs.chainexecutionmember": ChainExecutionMember.objects.create(
            chain_execution=chain_execution, member=member, job=job, execution_order=0
        ),
        "jobs.jobexecution": execution,
        "jobs.stepexecution": StepExecution.objects.create(
            job_execution=execution,
            job_step=JobStep.objects.filter(job=job).first(),
            step_order=0,
            state="failed",
            error_message="[E2050] boom",
        ),
        "monitors.filemonitor": monitor,
        "monitors.monitorjobbinding": MonitorJobBinding.objects.create(monitor=monitor, job=job),
        "monitors.monitordirectorystate": MonitorDirectoryState.objects.create(monitor=monitor, directory_listing={}),
        "monitors.monitorfilelog": MonitorFileLog.objects.create(
            monitor=monitor, file_path="/tmp/a", file_size=1, last_modified=now, execution_id=uuid.uuid4()
        ),
    }


# Pages that answer a successful save with 200: the secret made by the save, shown this once.
SHOWN_ONCE_TEMPLATES = {"admin/notifications/channel_secret.html"}


def shows_a_secret_once(response: Any) -> bool:
    return response.status_code == 200 and any(t.name in SHOWN_ONCE_TEMPLATES for t in response.templates)


@pytest.fixture
def admin_client(client: Client, django_user_model: Any) -> Client:
    user = django_user_model.objects.create_user(username="admin1", password="pw-long-enough-1", is_staff=True)
    user.groups.add(Group.objects.get(name=ADMIN))
    client.force_login(user)
    return client


def fingerprint() -> dict[str, str]:
    """A digest of every table's rows, to prove a refused save wrote nothing."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        )
        tables = sorted(row[0] for row in cursor.fetchall() if row[0] not in UNFINGERPRINTED)
        digest = sql.SQL("SELECT {}, md5(coalesce(string_agg(md5(t::text), '' ORDER BY md5(t::text)), '')) FROM {} t")
        cursor.execute(
            sql.SQL(" UNION ALL ").join(digest.format(sql.Literal(table), sql.Identifier(table)) for table in tables)
        )
        return dict(cursor.fetchall())


def bad_posts(page: FormReader, template: FormReader | None) -> list[tuple[str, dict[str, Any]]]:
    """(what was sent, POST data) for one page: nothing, each whole-form value, then each field on its own.

    An add page starts from the values of an existing row's change page (template), so a copy of
    a row (a step order or a name already taken) is among the inputs.
    """
    baseline = list(page.values)
    if template is not None:
        # The existing row's values, as new rows: its inline rows keep neither their ids nor their parent.
        own = dict(page.values)
        baseline = [
            (name, own[name] if name.endswith("-INITIAL_FORMS") else value)
            for name, value in template.values
            if name in own or template.editable.get(name)
        ]
        baseline += [(name, value) for name, value in page.values if name not in dict(template.values)]
    editable = {**(template.editable if template else {}), **page.editable}
    posts: list[tuple[str, dict[str, Any]]] = [("nothing", {}), ("the values as shown", as_post(baseline))]
    for bad in WHOLE_FORM_VALUES:
        posts.append((f"every field {bad!r}", as_post([(n, bad if n in editable else v) for n, v in baseline])))
    # On an add page, fields its change page has were tried there already, one by one.
    single = {name: kind for name, kind in editable.items() if template is None or name not in template.editable}
    for field, kind in sorted(single.items()):
        current = next((value for name, value in baseline if name == field), "")
        for bad in single_field_values(current, kind):
            values = [(name, value) for name, value in baseline if name != field]
            values += [(field, bad)] if bad is not None else []
            posts.append((f"{field}={bad!r}", as_post(values)))
    return posts


@pytest.mark.parametrize(("model", "model_admin"), REGISTERED, ids=[m._meta.label_lower for m, _ in REGISTERED])
def test_bad_input_on_every_add_and_change_page_is_refused_without_a_server_error(
    admin_client: Client, model: Any, model_admin: Any
) -> None:
    samples = sample_rows()
    label = model._meta.label_lower
    assert label in samples, f"{label} is registered in the console but has no sample row in sample_rows()"
    info = (model._meta.app_label, model._meta.model_name)
    change_url = reverse("admin:{}_{}_change".format(*info), args=[samples[label].pk])
    add_url = reverse("admin:{}_{}_add".format(*info))
    change_page = admin_client.get(change_url)
    assert change_page.status_code == 200, f"GET {change_url} answered {change_page.status_code}"
    change_form = read_form(change_page.content.decode(), model)
    pages = [(change_url, change_form, None)]
    add_page = admin_client.get(add_url)
    # 403: the model is not added from the console; 302: nothing is left to add (every setting is listed).
    assert add_page.status_code in (200, 302, 403), f"GET {add_url} answered {add_page.status_code}"
    if add_page.status_code == 200:
        pages.append((add_url, read_form(add_page.content.decode(), model), change_form))
    state = fingerprint()
    for url, page, template in pages:
        for sent, data in bad_posts(page, template):
            response = admin_client.post(url, data)
            assert response.status_code < 500, f"POST {sent} to {url} answered {response.status_code}"
            after = fingerprint()
            if response.status_code != 302 and not shows_a_secret_once(response):
                changed = [table for table, digest in after.items() if state.get(table) != digest]
                assert not changed, f"POST {sent} to {url} was refused but wrote to {changed}"
            state = after
