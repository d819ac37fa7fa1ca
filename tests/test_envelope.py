"""Envelope encryption of stored secrets and master key rotation."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from courier_site.envelope import Keyring, MasterKey, SecretDecryptionError
from courier_site.errors import ConfigurationError


def new_key() -> MasterKey:
    return MasterKey(os.urandom(32))


def test_seal_and_open_round_trip_with_a_fresh_data_key_each_time() -> None:
    ring = Keyring(new_key())
    first, second = ring.seal("partner-password"), ring.seal("partner-password")
    assert first != second  # fresh data key and nonces
    assert b"partner-password" not in first
    assert ring.open_text(first) == ring.open_text(second) == "partner-password"
    assert first[0] == 1 and first[1:9] == ring.current.key_id


@pytest.mark.parametrize("position", [0, 3, 15, 40, 75, -1])
def test_any_altered_byte_fails_with_a_clear_error(position: int) -> None:
    ring = Keyring(new_key())
    blob = bytearray(ring.seal("s3cret"))
    blob[position] ^= 0x01
    with pytest.raises(SecretDecryptionError, match=r"\[E1010\]") as failure:
        ring.open(bytes(blob))
    assert "s3cret" not in str(failure.value)


def test_truncated_blob_is_refused() -> None:
    ring = Keyring(new_key())
    with pytest.raises(SecretDecryptionError, match="truncated"):
        ring.open(ring.seal("x")[:50])


def test_unknown_master_key_is_named_by_its_id() -> None:
    sealed = Keyring(new_key()).seal("x")
    other = Keyring(new_key())
    with pytest.raises(SecretDecryptionError, match=sealed[1:9].hex()):
        other.open(sealed)


def test_rewrap_moves_a_secret_to_the_new_master_key() -> None:
    old, new = new_key(), new_key()
    sealed = Keyring(old).seal("rotate me")
    rotating = Keyring(new, [old])
    assert rotating.needs_rewrap(sealed)
    fresh = rotating.rewrap(sealed)
    assert Keyring(new).open_text(fresh) == "rotate me"
    assert fresh[-30:] == sealed[-30:]  # the secret's ciphertext itself is untouched


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "not set"), ("%%%", "not valid base64"), (base64.b64encode(b"short").decode(), "32 bytes, not 5")],
)
def test_invalid_master_keys_are_configuration_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=r"\[E1005\].*" + message):
        MasterKey.from_base64(text)


def test_manage_py_refuses_to_start_without_a_master_key() -> None:
    env = {key: value for key, value in os.environ.items() if key != "COURIER_MASTER_KEY"}
    env["COURIER_MASTER_KEY"] = ""
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env=env,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
        timeout=60,
    )
    assert result.returncode != 0
    assert "[E1005] COURIER_MASTER_KEY is not set" in result.stderr


@pytest.mark.django_db
def test_rotate_master_key_rewraps_every_stored_secret(settings, capsys: pytest.CaptureFixture[str]) -> None:
    from connections.models import Connection

    old = settings.COURIER_MASTER_KEY
    old_ring = Keyring(MasterKey.from_base64(old))
    conn = Connection.objects.create(
        name="c",
        protocol="ftp",
        host="h",
        port=21,
        auth_method="password",
        username="u",
        password_encrypted=old_ring.seal("pw-one"),
    )
    settings.COURIER_MASTER_KEY = base64.b64encode(os.urandom(32)).decode()
    settings.COURIER_PREVIOUS_MASTER_KEYS = [old]

    call_command("rotate_master_key")

    assert "Re-wrapped 1 of 1 stored secrets" in capsys.readouterr().out
    conn.refresh_from_db()
    assert Keyring(MasterKey.from_base64(settings.COURIER_MASTER_KEY)).open_text(conn.password_encrypted) == "pw-one"


@pytest.mark.django_db
def test_rotation_without_the_old_key_changes_nothing(settings) -> None:
    from connections.models import Connection

    sealed = Keyring(new_key()).seal("orphan")
    conn = Connection.objects.create(
        name="c", protocol="ftp", host="h", port=21, auth_method="password", username="u", password_encrypted=sealed
    )
    with pytest.raises(CommandError, match=r"\[E1010\].*nothing was changed"):
        call_command("rotate_master_key")
    with connection.cursor() as cursor:
        cursor.execute("SELECT password_encrypted FROM connections WHERE id = %s", [conn.pk])
        assert bytes(cursor.fetchone()[0]) == sealed


def zip_job_with_sealed_password(password: str) -> object:
    """A job whose file.zip step holds a sealed password, with two saved versions."""
    from jobs.definitions import record_version
    from jobs.secrets import seal_config
    from tests.engine_support import make_job

    configuration = {"source_path": "*.csv", "output_path": "out.zip", "password": password}
    job = make_job(
        [("test.write", {"name": "a.csv", "text": "x"}), ("file.zip", seal_config("file.zip", configuration))]
    )
    record_version(job, created_by="tester")
    return job


def sealed_step_passwords(job: object) -> list[dict[str, str]]:
    """The sealed password of the job's file.zip step and of each of its versions' snapshots."""
    from jobs.models import JobStep, JobVersion

    values = [JobStep.objects.get(job=job, type_key="file.zip").configuration["password"]]
    for version in JobVersion.objects.filter(job=job).order_by("version_number"):
        values.extend(
            step["configuration"]["password"]
            for step in version.config_snapshot["steps"]
            if step["type_key"] == "file.zip"
        )
    return values


@pytest.mark.django_db
def test_rotate_master_key_rewraps_sealed_step_secrets_in_steps_and_versions(
    settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.secrets import is_sealed, unseal_config

    old = settings.COURIER_MASTER_KEY
    job = zip_job_with_sealed_password("Zip-Secret-31")
    before = sealed_step_passwords(job)
    assert len(before) == 3 and all(is_sealed(value) for value in before)
    new = base64.b64encode(os.urandom(32)).decode()
    settings.COURIER_MASTER_KEY, settings.COURIER_PREVIOUS_MASTER_KEYS = new, [old]

    call_command("rotate_master_key")

    output = capsys.readouterr().out
    assert "job_steps.configuration: re-wrapped 1 of 1" in output
    assert "job_versions.config_snapshot: re-wrapped 2 of 2" in output
    assert "Re-wrapped 3 of 3 stored secrets" in output
    after = sealed_step_passwords(job)
    assert all(is_sealed(value) for value in after) and not set(map(str, after)) & set(map(str, before))
    settings.COURIER_PREVIOUS_MASTER_KEYS = []  # the new key alone opens every one of them
    assert [unseal_config({"password": value})["password"] for value in after] == ["Zip-Secret-31"] * 3
    settings.COURIER_MASTER_KEY = old  # and the old key alone opens none
    for value in after:
        with pytest.raises(SecretDecryptionError, match=r"\[E1010\]"):
            unseal_config({"password": value})


@pytest.mark.django_db
def test_dry_run_counts_step_secrets_and_changes_nothing(settings, capsys: pytest.CaptureFixture[str]) -> None:
    old = settings.COURIER_MASTER_KEY
    job = zip_job_with_sealed_password("Zip-Secret-32")
    before = sealed_step_passwords(job)
    settings.COURIER_MASTER_KEY = base64.b64encode(os.urandom(32)).decode()
    settings.COURIER_PREVIOUS_MASTER_KEYS = [old]

    call_command("rotate_master_key", "--dry-run")

    assert "Would re-wrap 3 of 3 stored secrets" in capsys.readouterr().out
    assert sealed_step_passwords(job) == before


@pytest.mark.django_db
def test_a_step_secret_under_an_unknown_key_leaves_every_table_untouched(settings) -> None:
    from connections.models import Connection

    old = settings.COURIER_MASTER_KEY
    conn = Connection.objects.create(
        name="c",
        protocol="ftp",
        host="h",
        port=21,
        auth_method="password",
        username="u",
        password_encrypted=Keyring(MasterKey.from_base64(old)).seal("pw-two"),
    )
    settings.COURIER_MASTER_KEY = base64.b64encode(os.urandom(32)).decode()
    job = zip_job_with_sealed_password("Zip-Secret-33")  # sealed under a key rotation will not know
    settings.COURIER_MASTER_KEY = base64.b64encode(os.urandom(32)).decode()
    settings.COURIER_PREVIOUS_MASTER_KEYS = [old]
    before = sealed_step_passwords(job)

    with pytest.raises(CommandError, match=r"job_steps\.configuration .*\[E1010\].*nothing was changed"):
        call_command("rotate_master_key")

    with connection.cursor() as cursor:
        cursor.execute("SELECT password_encrypted FROM connections WHERE id = %s", [conn.pk])
        assert Keyring(MasterKey.from_base64(old)).needs_rewrap(bytes(cursor.fetchone()[0])) is False
    assert sealed_step_passwords(job) == before
