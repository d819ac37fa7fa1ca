"""PGP key references in steps: checked when the step is saved (the key exists and its state allows the use),
and carried between environments by fingerprint, not by key store id."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from courier_site.roles import OPERATOR
from jobs.errors import StepConfigurationError
from jobs.models import Job
from jobs.portability import ImportRefused, export_jobs, import_jobs
from jobs.steps.base import validate_step
from keystore.models import PgpKey
from tests.engine_support import make_job

pytestmark = pytest.mark.django_db


def key(name: str, *, pair: bool = True, status: str = "active", successor: PgpKey | None = None) -> PgpKey:
    return PgpKey.objects.create(
        name=name,
        fingerprint=uuid.uuid4().hex.upper() + "0BADF00D",
        short_key_id=uuid.uuid4().hex[:16].upper(),
        algorithm="rsa_4096",
        key_type="key_pair" if pair else "public_only",
        status=status,
        public_key_data="-----BEGIN PGP PUBLIC KEY BLOCK-----",
        private_key_data=b"sealed" if pair else None,
        successor_key=successor,
        created_by="tester",
    )


def problems_of(type_key: str, configuration: dict[str, object]) -> str:
    with pytest.raises(StepConfigurationError) as refused:
        validate_step(type_key, configuration, "step 2 (encrypt invoices)")
    return str(refused.value)


def test_encrypting_to_an_unknown_or_revoked_recipient_is_refused_naming_the_step_and_key() -> None:
    revoked = key("Old partner key", status="revoked")
    missing = str(uuid.uuid4())

    message = problems_of("pgp.encrypt", {"input_path": "out/*.csv", "recipient_key_ids": [missing, str(revoked.pk)]})

    assert message.startswith("[E2002]") and "step 2 (encrypt invoices)" in message
    assert f"key 'recipient_key_ids' names no PGP key in the key store ({missing}; deleted?)" in message
    assert "[E4003] key 'Old partner key'" in message and "is revoked and cannot encrypt" in message


def test_a_retired_recipient_with_an_active_successor_and_a_context_reference_are_accepted() -> None:
    retired = key("2025 key", status="retired", successor=key("2026 key"))

    validate_step(
        "pgp.encrypt", {"input_path": "a.csv", "recipient_key_ids": [str(retired.pk), "context:trigger.key"]}, "s"
    )


@pytest.mark.parametrize(
    ("type_key", "field", "extra"),
    [
        ("pgp.sign", "signing_key_id", {"input_path": "a.csv"}),
        ("pgp.decrypt", "private_key_id", {"input_path": "a.csv.pgp"}),
        ("pgp.encrypt", "signing_key_id", {"input_path": "a.csv", "recipient_key_ids": "context:trigger.key"}),
    ],
)
def test_signing_or_decrypting_needs_a_key_pair(type_key: str, field: str, extra: dict[str, object]) -> None:
    public = key("Partner public key", pair=False)

    message = problems_of(type_key, {**extra, field: str(public.pk)})

    assert f"key '{field}': 'Partner public key' is a public key and cannot" in message


def test_the_step_page_refuses_a_revoked_signing_key_next_to_the_field(client, django_user_model) -> None:
    user = django_user_model.objects.create_user(username="olivia", password="pw-long-enough-1", is_staff=True)
    user.groups.add(Group.objects.get(name=OPERATOR))
    client.force_login(user)
    job = make_job([("test.write", {"name": "a.txt"})])
    revoked = key("Compromised signer", status="revoked")

    response = client.post(
        reverse("admin:jobs_jobstep_add"),
        {
            "job": job.pk,
            "step_order": 1,
            "name": "sign the report",
            "type_key": "pgp.sign",
            "alias": "",
            "timeout_seconds": 300,
            "config__input_path": "report.csv",
            "config__signing_key_id": str(revoked.pk),
            "config__mode": "detached",
        },
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["config__signing_key_id"]
    assert "[E2002]" in errors[0] and "is revoked and cannot sign" in errors[0]
    assert not job.steps.filter(step_order=1).exists()


def test_keys_travel_by_fingerprint_and_are_found_again_under_this_key_stores_ids() -> None:
    recipient, signer = key("ACME 2026", pair=False), key("Our signing key")
    make_job(
        [
            (
                "pgp.encrypt",
                {
                    "input_path": "out/*.csv",
                    "recipient_key_ids": [str(recipient.pk)],
                    "signing_key_id": str(signer.pk),
                },
            )
        ],
        name="Encrypt for ACME",
    )
    document = export_jobs(Job.objects.filter(name="Encrypt for ACME"))
    exported = document["jobs"][0]["steps"][0]["configuration"]
    assert exported["recipient_key_ids"] == [f"pgp_key:{recipient.fingerprint}"]
    assert exported["signing_key_id"] == f"pgp_key:{signer.fingerprint}"

    # Another environment: the same keys were imported there under ids of its own.
    Job.all_objects.filter(name="Encrypt for ACME").delete()
    for original in (recipient, signer):
        original.hard_delete()
    there_recipient = key("ACME 2026 (prod)", pair=False)
    PgpKey.objects.filter(pk=there_recipient.pk).update(fingerprint=recipient.fingerprint)
    there_signer = key("Our signing key (prod)")
    PgpKey.objects.filter(pk=there_signer.pk).update(fingerprint=signer.fingerprint)

    assert import_jobs(document, by="deployer")["created"] == ["Encrypt for ACME"]

    configuration = Job.objects.get(name="Encrypt for ACME").steps.get().configuration
    assert configuration["recipient_key_ids"] == [str(there_recipient.pk)]
    assert configuration["signing_key_id"] == str(there_signer.pk)


def test_an_import_naming_a_key_this_key_store_lacks_is_refused_and_writes_nothing() -> None:
    fingerprint = "F" * 40
    document = {
        "format": "courier-definitions",
        "format_version": 1,
        "jobs": [
            {
                "name": "Needs a key",
                "steps": [
                    {
                        "step_order": 0,
                        "type_key": "pgp.encrypt",
                        "configuration": {"input_path": "a.csv", "recipient_key_ids": f"pgp_key:{fingerprint}"},
                    }
                ],
            }
        ],
    }

    with pytest.raises(ImportRefused, match=f"step 0: no PGP key with fingerprint {fingerprint} in the key store"):
        import_jobs(document, by="deployer")
    assert not Job.all_objects.filter(name="Needs a key").exists()
