"""System settings edited per key with validation and audit; tags unique by name, assigned and filtered per entity."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django import forms
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from audit.models import AuditLogEntry
from connections.models import Connection
from courier_site.roles import ADMIN, OPERATOR, VIEWER
from jobs.models import JobChain
from keystore.models import PgpKey, SshKey
from monitors.models import FileMonitor
from system import registry
from system.models import SystemSetting
from system.values import setting_bool, setting_int
from tags.models import EntityTag, Tag
from tests.engine_support import make_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def as_role(client: Client, django_user_model) -> Callable[[str], Client]:
    def login(role: str) -> Client:
        user = django_user_model.objects.create_user(
            username=f"{role.lower()}1", password="pw-long-enough-1", is_staff=True
        )
        user.groups.add(Group.objects.get(name=role))
        client.force_login(user)
        return client

    return login


def setting_url(key: str) -> str:
    return reverse("admin:system_systemsetting_change", args=[key])


def value_of(key: str) -> str:
    return SystemSetting.objects.get(key=key).value


def setting_audit(key: str) -> list[AuditLogEntry]:
    return list(AuditLogEntry.objects.for_entity("system_setting", key))


# ----------------------------------------------------------------- the registry


def test_every_seeded_setting_is_known_and_its_seeded_value_is_valid() -> None:
    for setting in SystemSetting.objects.all():
        spec = registry.spec_for(setting.key)
        assert spec.normalize(setting.value) == setting.value, setting.key


def test_a_choice_setting_accepts_its_choices_in_any_case_and_refuses_others() -> None:
    spec = registry.ChoiceSetting(
        key="archive.storage", help="Where archives go.", default="local", choices=("local", "s3")
    )

    assert spec.normalize(" S3 ") == "s3"
    with pytest.raises(registry.SettingValueInvalid, match=r"\[E1006\] archive.storage must be one of local, s3"):
        spec.normalize("ftp")


def test_unknown_keys_are_refused_by_the_writer() -> None:
    with pytest.raises(registry.UnknownSetting, match=r"\[E1007\] 'made.up' is not a setting Courier knows"):
        SystemSetting.objects.put("made.up", "1", by="alice")
    assert not SystemSetting.objects.filter(key="made.up").exists()


# ----------------------------------------------------------------- changing settings in the console


def test_admin_changes_an_integer_setting_and_the_change_is_audited_with_old_and_new_value(as_role) -> None:
    client = as_role(ADMIN)

    response = client.post(setting_url("job.concurrency_limit"), {"value": " 08 "})

    assert response.status_code == 302
    assert value_of("job.concurrency_limit") == "8"
    assert setting_int("job.concurrency_limit", 5) == 8
    [entry] = setting_audit("job.concurrency_limit")
    assert entry.operation == "changed"
    assert entry.performed_by == "admin1"
    assert entry.details == {"key": "job.concurrency_limit", "old_value": "5", "new_value": "8"}
    assert SystemSetting.objects.get(key="job.concurrency_limit").updated_by == "admin1"


def test_a_boolean_setting_is_stored_as_true_or_false(as_role) -> None:
    client = as_role(ADMIN)

    client.post(setting_url("security.public_key_share_links_enabled"), {"value": "Yes"})

    assert value_of("security.public_key_share_links_enabled") == "true"
    assert setting_bool("security.public_key_share_links_enabled", False) is True


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("job.concurrency_limit", "five", "a whole number from 1 to 1000 executions"),
        ("job.concurrency_limit", "2.5", "a whole number from 1 to 1000 executions"),
        ("job.concurrency_limit", "0", "a whole number from 1 to 1000 executions"),
        ("security.max_share_link_days", "366", "a whole number from 1 to 365 days"),
        ("partition.months_ahead", "1", "a whole number from 2 to 24 months"),
        ("security.fips_mode_enabled", "maybe", "true or false"),
    ],
)
def test_an_invalid_value_is_refused_next_to_the_field_with_its_code_and_nothing_is_saved(
    as_role, key: str, value: str, allowed: str
) -> None:
    client = as_role(ADMIN)
    before = value_of(key)

    response = client.post(setting_url(key), {"value": value})

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors["value"] == [f"[E1006] {key} must be {allowed}, not {value!r}"]
    assert "[E1006]" in response.content.decode()
    assert value_of(key) == before
    assert setting_audit(key) == []


def test_saving_the_current_value_again_writes_no_audit_record(as_role) -> None:
    client = as_role(ADMIN)

    response = client.post(setting_url("job.temp_cleanup_days"), {"value": "7"})

    assert response.status_code == 302
    assert setting_audit("job.temp_cleanup_days") == []


def test_the_change_page_explains_the_key_and_offers_true_or_false_for_a_boolean(as_role) -> None:
    client = as_role(ADMIN)

    response = client.get(setting_url("security.fips_mode_enabled"))

    field = response.context["adminform"].form.fields["value"]
    assert [value for value, _ in field.widget.choices] == ["true", "false"]
    assert "Allowed: true or false; default true." in field.help_text


@pytest.mark.parametrize("role", [OPERATOR, VIEWER])
def test_operators_and_viewers_read_settings_but_cannot_change_them(as_role, role: str) -> None:
    client = as_role(role)

    assert client.get(setting_url("job.concurrency_limit")).status_code == 200
    response = client.post(setting_url("job.concurrency_limit"), {"value": "9"})

    assert response.status_code == 403
    assert value_of("job.concurrency_limit") == "5"
    [refusal] = setting_audit("job.concurrency_limit")
    assert (refusal.operation, refusal.performed_by) == ("change_refused", f"{role.lower()}1")


def test_a_setting_courier_does_not_know_is_read_only_even_for_admins(as_role) -> None:
    SystemSetting.objects.create(key="legacy.switch", value="on", updated_by="psql")
    client = as_role(ADMIN)

    page = client.get(setting_url("legacy.switch"), follow=True)
    response = client.post(setting_url("legacy.switch"), {"value": "off"})

    assert "[E1007]" in page.content.decode()
    assert response.status_code == 403
    assert value_of("legacy.switch") == "on"


def test_admin_adds_back_a_known_setting_that_was_missing_and_cannot_add_an_unknown_one(as_role) -> None:
    SystemSetting.objects.filter(key="key.expiration_warning_days").delete()
    client = as_role(ADMIN)
    add_url = reverse("admin:system_systemsetting_add")

    refused = client.post(add_url, {"key": "made.up", "value": "1"})
    added = client.post(add_url, {"key": "key.expiration_warning_days", "value": "45"})

    assert refused.status_code == 200 and "key" in refused.context["adminform"].form.errors
    assert not SystemSetting.objects.filter(key="made.up").exists()
    assert added.status_code == 302
    assert value_of("key.expiration_warning_days") == "45"
    [entry] = setting_audit("key.expiration_warning_days")
    assert entry.operation == "created"
    assert entry.details["new_value"] == "45"


def test_settings_are_never_deleted_from_the_console(as_role) -> None:
    client = as_role(ADMIN)

    response = client.post(
        reverse("admin:system_systemsetting_delete", args=["job.concurrency_limit"]), {"post": "yes"}
    )

    assert response.status_code == 403
    assert SystemSetting.objects.filter(key="job.concurrency_limit").exists()


# ----------------------------------------------------------------- tag names


def test_tag_names_are_unique_regardless_of_letter_case(as_role) -> None:
    Tag.objects.create(name="Finance")
    client = as_role(OPERATOR)

    response = client.post(reverse("admin:tags_tag_add"), {"name": "FINANCE", "category": "", "color": ""})

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["name"] == [
        "[E1008] A tag named 'Finance' already exists; tag names are unique regardless of letter case."
    ]
    assert Tag.objects.filter(name__iexact="finance").count() == 1


def test_a_tag_may_change_the_case_of_its_own_name_and_creating_one_is_audited(as_role) -> None:
    client = as_role(OPERATOR)
    client.post(reverse("admin:tags_tag_add"), {"name": "finance", "category": "team", "color": ""})
    tag = Tag.objects.get(name="finance")

    response = client.post(
        reverse("admin:tags_tag_change", args=[tag.pk]), {"name": "Finance", "category": "team", "color": ""}
    )

    assert response.status_code == 302
    assert Tag.objects.get(pk=tag.pk).name == "Finance"
    operations = [entry.operation for entry in AuditLogEntry.objects.for_entity("tag", tag.pk)]
    assert sorted(operations) == ["changed", "created"]


def test_the_name_of_a_deleted_tag_is_free_again(as_role) -> None:
    Tag.objects.create(name="Legacy").delete()
    client = as_role(OPERATOR)

    response = client.post(reverse("admin:tags_tag_add"), {"name": "legacy", "category": "", "color": ""})

    assert response.status_code == 302
    assert Tag.objects.filter(name="legacy").exists()


# ----------------------------------------------------------------- tagging entities


@pytest.fixture
def monitor_root(settings, tmp_path: Path) -> Path:
    settings.COURIER_DATA_DIR = tmp_path
    settings.COURIER_ALLOWED_ROOTS = [tmp_path]
    return tmp_path


def a_job() -> Any:
    steps = [("flow.foreach", {"source": ["a"]}), ("flow.end", {})]
    return make_job(steps, name=f"job-{uuid.uuid4().hex[:6]}")


def a_chain() -> Any:
    return JobChain.objects.create(name=f"chain-{uuid.uuid4().hex[:6]}")


def a_monitor() -> Any:
    from django.conf import settings

    return FileMonitor.objects.create(
        name=f"monitor-{uuid.uuid4().hex[:6]}",
        watch_target={"type": "local", "path": str(settings.COURIER_DATA_DIR)},
        trigger_events=1,
    )


def a_connection() -> Any:
    return Connection.objects.create(
        name=f"conn-{uuid.uuid4().hex[:6]}", protocol="ftp", host="h", port=21, auth_method="password", username="u"
    )


def a_pgp_key() -> Any:
    return PgpKey.objects.create(
        name=f"pgp-{uuid.uuid4().hex[:6]}",
        fingerprint=uuid.uuid4().hex + "00000000",
        short_key_id=uuid.uuid4().hex[:16],
        algorithm="ecc_curve25519",
        key_type="public_only",
        status="active",
        public_key_data="-----BEGIN PGP PUBLIC KEY BLOCK-----",
        created_by="admin",
    )


def a_ssh_key() -> Any:
    return SshKey.objects.create(
        name=f"ssh-{uuid.uuid4().hex[:6]}",
        key_type="ed25519",
        public_key_data="ssh-ed25519 AAAA",
        fingerprint=f"SHA256:{uuid.uuid4().hex}",
        created_by="admin",
    )


# (entity_type, admin url name, audit entity type, factory)
OPERATOR_TAGGABLE = [
    ("job", "jobs_job", "job", a_job),
    ("job_chain", "jobs_jobchain", "chain", a_chain),
    ("file_monitor", "monitors_filemonitor", "file_monitor", a_monitor),
]
EVERY_TAGGABLE = [
    *OPERATOR_TAGGABLE,
    ("connection", "connections_connection", "connection", a_connection),
    ("pgp_key", "keystore_pgpkey", "pgp_key", a_pgp_key),
    ("ssh_key", "keystore_sshkey", "ssh_key", a_ssh_key),
]


def unchanged_post_data(client: Client, url: str) -> dict[str, Any]:
    """What the change page posts when saved as it is: every field's current value and the inline forms."""
    response = client.get(url)
    assert response.status_code == 200, url
    data: dict[str, Any] = {}
    page_forms = [response.context["adminform"].form]
    for inline in response.context["inline_admin_formsets"]:
        management = inline.formset.management_form
        data.update({management.add_prefix(name): management[name].value() for name in management.fields})
        page_forms.extend(inline.formset.initial_forms)
    for form in page_forms:
        for name, field in form.fields.items():
            value = form[name].value()
            if field.disabled or value is None:
                continue
            if isinstance(field.widget, forms.CheckboxInput):
                if value:
                    data[form.add_prefix(name)] = "on"
            elif isinstance(value, list | tuple):
                data[form.add_prefix(name)] = [str(item) for item in value]
            else:
                data[form.add_prefix(name)] = str(value)
    return data


@pytest.mark.parametrize(("entity_type", "url_name", "audit_type", "factory"), OPERATOR_TAGGABLE)
def test_operator_tags_an_entity_from_its_page_and_the_assignment_is_audited(
    as_role, monitor_root: Path, entity_type: str, url_name: str, audit_type: str, factory: Callable[[], Any]
) -> None:
    entity = factory()
    finance, acme = Tag.objects.create(name="finance"), Tag.objects.create(name="partner:acme")
    client = as_role(OPERATOR)
    url = reverse(f"admin:{url_name}_change", args=[entity.pk])
    data = unchanged_post_data(client, url)
    data["tags"] = [str(finance.pk), str(acme.pk)]

    response = client.post(url, data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert set(
        EntityTag.objects.filter(entity_type=entity_type, entity_id=entity.pk).values_list("tag_id", flat=True)
    ) == {
        finance.pk,
        acme.pk,
    }
    [entry] = AuditLogEntry.objects.for_entity(audit_type, entity.pk).filter(operation="tags_changed")
    assert entry.details == {"added": ["finance", "partner:acme"], "removed": []}
    assert entry.performed_by == "operator1"


def test_removing_a_tag_on_the_page_deletes_the_assignment_and_audits_it(as_role) -> None:
    job = a_job()
    finance, acme = Tag.objects.create(name="finance"), Tag.objects.create(name="partner:acme")
    EntityTag.objects.set_tags("job", job.pk, [finance, acme], by="setup")
    client = as_role(OPERATOR)
    url = reverse("admin:jobs_job_change", args=[job.pk])
    data = unchanged_post_data(client, url)
    assert sorted(data["tags"]) == sorted([str(finance.pk), str(acme.pk)])
    data["tags"] = [str(acme.pk)]

    client.post(url, data)

    assert list(EntityTag.objects.filter(entity_id=job.pk).values_list("tag__name", flat=True)) == ["partner:acme"]
    [entry] = AuditLogEntry.objects.for_entity("job", job.pk).filter(operation="tags_changed", performed_by="operator1")
    assert entry.details == {"added": [], "removed": ["finance"]}


@pytest.mark.parametrize(("entity_type", "url_name", "audit_type", "factory"), EVERY_TAGGABLE)
def test_every_taggable_list_filters_by_tag_and_shows_a_tags_column(
    as_role, monitor_root: Path, entity_type: str, url_name: str, audit_type: str, factory: Callable[[], Any]
) -> None:
    tagged, other = factory(), factory()
    finance = Tag.objects.create(name="finance")
    EntityTag.objects.set_tags(entity_type, tagged.pk, [finance], by="setup")
    client = as_role(ADMIN)
    url = reverse(f"admin:{url_name}_changelist")

    everything = client.get(url)
    filtered = client.get(url, {"tag": str(finance.pk)})

    assert {row.pk for row in everything.context["cl"].result_list} >= {tagged.pk, other.pk}
    assert [row.pk for row in filtered.context["cl"].result_list] == [tagged.pk]
    assert "tags" in everything.context["cl"].list_display
    assert [row.tag_names for row in filtered.context["cl"].result_list] == [["finance"]]


def test_a_tag_on_another_kind_of_entity_does_not_match(as_role) -> None:
    job = a_job()
    finance = Tag.objects.create(name="finance")
    # Same id under another entity type: the filter must not pick the job up.
    EntityTag.objects.create(tag=finance, entity_type="job_chain", entity_id=job.pk)
    client = as_role(OPERATOR)

    response = client.get(reverse("admin:jobs_job_changelist"), {"tag": str(finance.pk)})

    assert list(response.context["cl"].result_list) == []


def test_viewer_sees_an_entitys_tags_but_cannot_change_them(as_role) -> None:
    job = a_job()
    finance = Tag.objects.create(name="finance")
    EntityTag.objects.set_tags("job", job.pk, [finance], by="setup")
    client = as_role(VIEWER)
    url = reverse("admin:jobs_job_change", args=[job.pk])

    page = client.get(url)
    response = client.post(url, {"tags": []})

    assert page.status_code == 200
    assert "finance" in page.content.decode()
    assert response.status_code == 403
    assert EntityTag.objects.filter(entity_id=job.pk).count() == 1
