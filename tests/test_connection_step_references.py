"""A transfer step's connection is checked when the step is saved: it exists, is active and speaks the step's
protocol [E2002]; a context: reference waits for the run."""

from __future__ import annotations

import uuid

import pytest

from connections.models import Connection
from jobs.errors import StepConfigurationError
from jobs.steps.base import validate_step

pytestmark = pytest.mark.django_db


def connection(name: str, protocol: str = "sftp", status: str = "active") -> Connection:
    return Connection.objects.create(
        name=name, protocol=protocol, host="127.0.0.1", port=22, auth_method="password", username="u", status=status
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: str(uuid.uuid4()), "key 'connection_id' names no connection (deleted?)"),
        (lambda: "not-an-id", "key 'connection_id' is not a connection id: 'not-an-id'"),
        (
            lambda: str(connection("ACME FTPS", protocol="ftps").pk),
            "connection 'ACME FTPS' is ftps, this step needs sftp",
        ),
        (lambda: str(connection("Old ACME", status="disabled").pk), "connection 'Old ACME' is disabled"),
    ],
    ids=["missing", "malformed", "other-protocol", "disabled"],
)
def test_a_download_naming_an_unusable_connection_is_refused(make, message: str) -> None:
    config = {"connection_id": make(), "remote_path": "/out/*.csv"}

    with pytest.raises(StepConfigurationError) as refused:
        validate_step("sftp.download", config, "step 0 (fetch invoices)")

    assert str(refused.value).startswith("[E2002]") and f"step 0 (fetch invoices): {message}" in str(refused.value)


def test_an_active_connection_of_the_right_protocol_and_a_context_reference_are_accepted() -> None:
    validate_step("sftp.download", {"connection_id": str(connection("ACME").pk), "remote_path": "/out/"}, "s")
    validate_step("sftp.download", {"connection_id": "context:trigger.connection", "remote_path": "/out/"}, "s")
