"""PGP key references in step configurations, written by fingerprint in exported definitions and found
again by fingerprint on import: key store ids differ between environments, fingerprints do not."""

from __future__ import annotations

import uuid
from typing import Any

from jobs.steps.base import as_list, get_step_type, registered_types
from keystore.models import PgpKey

KEY_REFERENCE = "pgp_key:"


def key_fields(type_key: str) -> list[str]:
    """The configuration keys of a step type that name PGP keys by id."""
    if type_key not in registered_types():
        return []
    return [field.name for field in get_step_type(type_key).fields if field.references == "pgp_key"]


def _each(value: Any, change: Any) -> Any:
    return [change(item) for item in value] if isinstance(value, list) else change(value)


def portable(type_key: str, configuration: dict[str, Any]) -> dict[str, Any]:
    """configuration with each key store id of a key field written as "pgp_key:<fingerprint>"."""
    fields = [name for name in key_fields(type_key) if configuration.get(name)]
    if not fields:
        return configuration
    ids = {str(item) for name in fields for item in as_list(configuration[name]) if _is_uuid(item)}
    known = {str(pk): fp for pk, fp in PgpKey.all_objects.filter(pk__in=ids).values_list("pk", "fingerprint")}
    result = dict(configuration)

    def by_fingerprint(value: Any) -> Any:
        return KEY_REFERENCE + known[value] if value in known else value

    for name in fields:
        result[name] = _each(configuration[name], by_fingerprint)
    return result


def resolve(type_key: str, configuration: dict[str, Any], label: str) -> list[str]:
    """Replace "pgp_key:<fingerprint>" references in configuration (in place) by this key store's ids;
    the problems name each fingerprint this key store does not hold."""
    problems: list[str] = []

    def local(value: Any) -> Any:
        if not isinstance(value, str) or not value.startswith(KEY_REFERENCE):
            return value
        fingerprint = value[len(KEY_REFERENCE) :].strip().upper()
        key = PgpKey.objects.filter(fingerprint__iexact=fingerprint).exclude(status="deleted").first()
        if key is None:
            problems.append(f"{label}: no PGP key with fingerprint {fingerprint} in the key store; import it first")
            return value
        return str(key.pk)

    for name in key_fields(type_key):
        if configuration.get(name):
            configuration[name] = _each(configuration[name], local)
    return problems


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True
