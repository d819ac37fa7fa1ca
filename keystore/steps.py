"""PGP steps: encrypt, decrypt, sign and verify files with keys from the key store (real gpg, streamed)."""

from __future__ import annotations

import glob
import json
import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from audit.models import AuditLogEntry
from courier_site.envelope import keyring
from courier_site.errors import CourierError
from jobs.errors import StepFailed
from jobs.paths import resolve_path
from jobs.steps.base import CancelToken, ConfigField, StepContext, StepResult, StepType, as_list, register
from jobs.steps.files import select_sources
from keystore import lifecycle
from keystore.models import PgpKey
from keystore.pgp import (
    decrypt_file,
    decryption_key,
    encrypt_file,
    fips_message_problem,
    gnupg_home,
    run_problem,
    sign_file,
    signature_problem,
    unlock,
    verify_file,
)
from system.values import setting_bool


def _key(key_id: Any, use: str, step_label: str) -> Any:
    try:
        key = PgpKey.objects.select_related("successor_key").filter(pk=uuid.UUID(str(key_id))).first()
    except ValueError:
        key = None
    if key is None:
        raise StepFailed(f"{step_label}: no PGP key {key_id!r} in the key store")
    return key


def key_problems(key_id: Any, field: str, use: str, step_label: str) -> list[str]:
    """Why a step's key reference cannot serve: no such key, no private half to sign or decrypt with,
    or a state that forbids the use [E4003]; a context: reference is checked when the step runs."""
    if not isinstance(key_id, str) or key_id.startswith("context:"):
        return []
    try:
        key = PgpKey.objects.select_related("successor_key").filter(pk=uuid.UUID(key_id)).first()
    except ValueError:
        return [f"{step_label}: key '{field}' is not a key store id: {key_id!r}"]
    if key is None:
        return [f"{step_label}: key '{field}' names no PGP key in the key store ({key_id}; deleted?)"]
    if use in ("sign", "decrypt") and not key.private_key_data:
        return [f"{step_label}: key '{field}': '{key.name}' is a public key and cannot {use}; choose a key pair"]
    try:
        if use == "encrypt":
            lifecycle.encryption_key(key)
        else:
            lifecycle.check_use(key, use)
    except CourierError as error:
        return [f"{step_label}: key '{field}': {error}"]
    return []


def _material(key: Any) -> dict[str, Any]:
    bundle = json.loads(keyring().open_text(key.private_key_data)) if key.private_key_data else None
    return {
        "id": str(key.pk),
        "name": key.name,
        "fingerprint": key.fingerprint,
        "public": key.public_key_data,
        "secret": bundle["armored"] if bundle else None,
        "passphrase": bundle["passphrase"] if bundle else None,
    }


# FIPS mode (SPEC 5): RSA >= 2048 and NIST curves, AES and SHA-2 only.
FIPS_ALGORITHMS = {"rsa_2048", "rsa_3072", "rsa_4096", "ecc_p256", "ecc_p384"}
FIPS_GPG_ARGS = ["--cipher-algo", "AES256", "--digest-algo", "SHA256"]


def _fips() -> bool:
    return setting_bool("security.fips_mode_enabled", True)


def _check_fips(key: Any) -> None:
    if _fips() and key.algorithm not in FIPS_ALGORITHMS:
        raise StepFailed(
            f"key '{key.name}' ({key.algorithm}) is not allowed in FIPS mode: "
            "use RSA 2048+ or NIST P-256/P-384, or turn security.fips_mode_enabled off"
        )


def _check_message_fips(result: Any, name: str, fips: bool | None) -> None:
    """In FIPS mode, refuse a message encrypted or signed with an algorithm outside AES and SHA-2."""
    problem = fips_message_problem(result) if fips else None
    if problem:
        raise StepFailed(
            f"{name} is {problem}, not allowed in FIPS mode: ask the partner for AES and SHA-2, "
            "or turn security.fips_mode_enabled off"
        )


def _audit_use(key: Any, use: str) -> None:
    AuditLogEntry.objects.record(
        entity_type="pgp_key",
        entity_id=key.pk,
        operation=f"used_to_{use}",
        performed_by="system",
        details={"fingerprint": key.fingerprint},
    )


def _output_for(source: Path, output: str | None, suffix: str, single: bool, context: StepContext) -> Path:
    if not output:
        return source.with_name(source.name + suffix)
    target = resolve_path(output, context.work_dir, context.allowed_roots)
    if output.endswith("/") or target.is_dir() or not single:
        target.mkdir(parents=True, exist_ok=True)
        return resolve_path(target / (source.name + suffix), context.work_dir, context.allowed_roots)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


# The suffix every Courier step gives a file it has not finished writing.
TEMP_SUFFIX = ".courier-tmp"


@contextmanager
def _published(target: Path) -> Iterator[Path]:
    """An unused name beside target for gpg to write, renamed to target when the block succeeds and
    removed when it raises (failure, cancel, bad signature): target is never seen half written."""
    # gpg creates the file itself (mode 0o666 less the umask) and refuses a name that exists. Not
    # created here: ext4 flushes a file truncated to empty when it is closed (auto_da_alloc), so gpg
    # reopening an empty file would wait at the end for the disk to take the whole output.
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")
    try:
        yield temporary
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, target)


def _remove_partials(targets: list[Path]) -> None:
    """Remove what gpg half wrote beside each target in a try that never finished (a killed worker)."""
    for target in targets:
        for leftover in target.parent.glob(f".{glob.escape(target.name)}.{'?' * 16}{TEMP_SUFFIX}"):
            leftover.unlink(missing_ok=True)


def _sources_if_any(raw: Any, context: StepContext) -> list[Path]:
    try:
        return select_sources(raw, context)
    except StepFailed:  # nothing to clean up after: the inputs are gone
        return []


def _check_run(result: Any, what: str) -> None:
    problem = run_problem(result)
    if problem is not None:
        raise StepFailed(f"{what} failed: {problem}")


@register
class EncryptStep(StepType):
    type_key = "pgp.encrypt"
    label = "PGP encrypt"
    description = "Encrypt files to one or more recipients, optionally signed."
    fields = (
        ConfigField("input_path", "string_or_list", required=True, help="File(s) or glob to encrypt."),
        ConfigField(
            "recipient_key_ids",
            "string_or_list",
            required=True,
            help="Key store ids of the recipients.",
            references="pgp_key",
        ),
        ConfigField("output_path", "string", help="Directory (ends with /) or file; default: <input>.pgp beside it."),
        ConfigField("armor", "boolean", default=False, help="ASCII armor (.asc) instead of binary."),
        ConfigField(
            "compress", "boolean", default=False, help="Compress before encrypting (slow; useless on zip/gz files)."
        ),
        ConfigField("signing_key_id", "string", help="Also sign with this key pair.", references="pgp_key"),
    )
    outputs = ("encrypted_files", "notes")

    def validate(self, config: dict[str, Any], step_label: str = "step") -> list[str]:
        problems = super().validate(config, step_label)
        for key_id in as_list(config.get("recipient_key_ids")):
            problems += key_problems(key_id, "recipient_key_ids", "encrypt", step_label)
        if config.get("signing_key_id"):
            problems += key_problems(config["signing_key_id"], "signing_key_id", "sign", step_label)
        return problems

    def prepare(self, config: dict[str, Any]) -> dict[str, Any]:
        recipients, notes = [], []
        for key_id in as_list(config["recipient_key_ids"]):
            key, note = lifecycle.encryption_key(_key(key_id, "encrypt", "pgp.encrypt"))
            if note:
                notes.append(note)
            _check_fips(key)
            _audit_use(key, "encrypt")
            recipients.append(_material(key))
        signer = None
        if config.get("signing_key_id"):
            key = _key(config["signing_key_id"], "sign", "pgp.encrypt")
            lifecycle.check_use(key, "sign")
            _check_fips(key)
            if not key.private_key_data:
                raise StepFailed(f"signing key '{key.name}' has no private half")
            _audit_use(key, "sign")
            signer = _material(key)
        return {"recipients": recipients, "signer": signer, "notes": notes, "fips": _fips()}

    def execute(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> StepResult:
        prepared = context.prepared
        sources = select_sources(config["input_path"], context)
        suffix = ".asc" if config.get("armor") else ".pgp"
        outputs, total = [], 0
        context.progress.bytes_total = sum(source.stat().st_size for source in sources)
        extra = [] if config.get("compress") else ["--compress-algo", "none"]
        if prepared.get("fips"):
            extra += FIPS_GPG_ARGS
        with gnupg_home() as gpg:
            for recipient in prepared["recipients"]:
                gpg.import_keys(recipient["public"])
            signer = prepared.get("signer")
            if signer:
                gpg.import_keys(signer["secret"], passphrase=signer["passphrase"])
                if signer["passphrase"]:
                    unlock(gpg, signer["fingerprint"], signer["passphrase"])
            for source in sources:
                target = _output_for(source, config.get("output_path"), suffix, len(sources) == 1, context)
                with _published(target) as partial:
                    result = encrypt_file(
                        gpg,
                        source,
                        partial,
                        [recipient["fingerprint"] for recipient in prepared["recipients"]],
                        armor=bool(config.get("armor")),
                        sign_with=signer["fingerprint"] if signer else None,
                        extra_args=extra,
                        check=cancel.check,
                        on_progress=context.progress.add,
                    )
                    _check_run(result, f"encryption of {source.name}")
                outputs.append(str(target))
                total += source.stat().st_size
        return StepResult(
            outputs={"encrypted_files": outputs, "notes": prepared["notes"]}, bytes_processed=total, files=outputs
        )

    def cleanup_before_retry(self, config: dict[str, Any], context: StepContext) -> None:
        sources = _sources_if_any(config["input_path"], context)
        suffix = ".asc" if config.get("armor") else ".pgp"
        _remove_partials(
            [_output_for(source, config.get("output_path"), suffix, len(sources) == 1, context) for source in sources]
        )


@register
class DecryptStep(StepType):
    type_key = "pgp.decrypt"
    label = "PGP decrypt"
    description = "Decrypt files; optionally require a valid signature from a known key."
    fields = (
        ConfigField("input_path", "string_or_list", required=True, help="Encrypted file(s) or glob."),
        ConfigField(
            "private_key_id", "string", help="Key pair to use; empty = any usable key pair.", references="pgp_key"
        ),
        ConfigField("output_path", "string", help="Directory (ends with /) or file; default: input without .pgp."),
        ConfigField(
            "verify_signature", "boolean", default=False, help="Fail unless a valid known signature is present."
        ),
    )
    outputs = ("decrypted_files", "signature")

    def validate(self, config: dict[str, Any], step_label: str = "step") -> list[str]:
        problems = super().validate(config, step_label)
        if config.get("private_key_id"):
            problems += key_problems(config["private_key_id"], "private_key_id", "decrypt", step_label)
        return problems

    def prepare(self, config: dict[str, Any]) -> dict[str, Any]:
        fips = _fips()
        if config.get("private_key_id"):
            candidates = [_key(config["private_key_id"], "decrypt", "pgp.decrypt")]
            _check_fips(candidates[0])
        else:
            candidates = list(PgpKey.objects.filter(key_type="key_pair", status__in=("active", "expiring", "retired")))
            # FIPS mode leaves key pairs of other algorithms out of "any usable key pair".
            candidates = [key for key in candidates if not fips or key.algorithm in FIPS_ALGORITHMS]
        pairs = []
        for key in candidates:
            lifecycle.check_use(key, "decrypt")
            if key.private_key_data:
                pairs.append(_material(key))
        if not pairs:
            allowed = " allowed in FIPS mode (RSA 2048+, NIST P-256/P-384)" if fips else ""
            raise StepFailed(f"pgp.decrypt: no usable key pair{allowed} in the key store")
        verifiers = [
            {"fingerprint": k.fingerprint, "public": k.public_key_data, "status": k.status}
            for k in PgpKey.objects.filter(status__in=("active", "expiring", "retired"))
        ]
        return {"pairs": pairs, "verifiers": verifiers, "fips": fips}

    def execute(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> StepResult:
        sources = select_sources(config["input_path"], context)
        outputs, signatures, total = [], [], 0
        context.progress.bytes_total = sum(source.stat().st_size for source in sources)
        audit: list[tuple[str, str, str, dict[str, Any]]] = []
        with gnupg_home() as gpg:
            for verifier in context.prepared["verifiers"]:
                gpg.import_keys(verifier["public"])
            pairs = {pair["fingerprint"]: pair for pair in context.prepared["pairs"]}
            for pair in pairs.values():
                gpg.import_keys(pair["secret"], passphrase=pair["passphrase"])
                if pair["passphrase"]:
                    unlock(gpg, pair["fingerprint"], pair["passphrase"])
            for source in sources:
                target = _decrypted_name(source, config, len(sources) == 1, context)
                with _published(target) as partial:
                    result = decrypt_file(gpg, source, partial, check=cancel.check, on_progress=context.progress.add)
                    _check_run(result, f"decryption of {source.name}")
                    _check_message_fips(result, source.name, context.prepared.get("fips"))
                    if config.get("verify_signature") and not result.valid:
                        raise StepFailed(
                            f"{source.name} has no valid signature from a known key ({signature_problem(result)})"
                        )
                signatures.append(
                    {"valid": bool(result.valid), "signer_fingerprint": result.fingerprint, "status": result.status}
                )
                outputs.append(str(target))
                total += source.stat().st_size
                used = pairs.get(decryption_key(result) or "")
                if used is not None:
                    audit.append(("pgp_key", used["id"], "used_to_decrypt", {"file": source.name}))
                else:
                    # Older gpg releases do not send DECRYPTION_KEY: name every key pair offered.
                    for pair in pairs.values():
                        audit.append(
                            ("pgp_key", pair["id"], "used_to_decrypt", {"file": source.name, "key_not_reported": True})
                        )
        return StepResult(
            outputs={"decrypted_files": outputs, "signature": signatures},
            bytes_processed=total,
            files=outputs,
            audit=audit,
        )

    def cleanup_before_retry(self, config: dict[str, Any], context: StepContext) -> None:
        sources = _sources_if_any(config["input_path"], context)
        _remove_partials([_decrypted_name(source, config, len(sources) == 1, context) for source in sources])


def _decrypted_name(source: Path, config: dict[str, Any], single: bool, context: StepContext) -> Path:
    stem = source.name[:-4] if source.suffix.lower() in (".pgp", ".gpg", ".asc") else source.name + ".out"
    if not config.get("output_path"):
        return source.with_name(stem)
    return _output_for(source.with_name(stem), config.get("output_path"), "", single, context)


@register
class SignStep(StepType):
    type_key = "pgp.sign"
    label = "PGP sign"
    description = "Sign a file: detached signature, inline signed message, or clear-text signature."
    fields = (
        ConfigField("input_path", "string", required=True, help="File to sign."),
        ConfigField("signing_key_id", "string", required=True, help="Key pair that signs.", references="pgp_key"),
        ConfigField(
            "mode",
            "string",
            default="detached",
            choices=("detached", "inline", "clear"),
            help="detached: <file>.sig beside the file; inline: signed message; clear: readable text.",
        ),
        ConfigField("armor", "boolean", default=True, help="ASCII armor."),
        ConfigField("output_path", "string", help="Where to write the signature or signed file."),
    )
    outputs = ("signature_file",)

    def validate(self, config: dict[str, Any], step_label: str = "step") -> list[str]:
        problems = super().validate(config, step_label)
        if config.get("signing_key_id"):
            problems += key_problems(config["signing_key_id"], "signing_key_id", "sign", step_label)
        return problems

    def prepare(self, config: dict[str, Any]) -> dict[str, Any]:
        key = _key(config["signing_key_id"], "sign", "pgp.sign")
        lifecycle.check_use(key, "sign")
        _check_fips(key)
        if not key.private_key_data:
            raise StepFailed(f"signing key '{key.name}' has no private half")
        _audit_use(key, "sign")
        return {"signer": _material(key)}

    def execute(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> StepResult:
        source = select_sources(config["input_path"], context)[0]
        target = _signed_name(source, config, context)
        mode = config.get("mode") or "detached"
        signer = context.prepared["signer"]
        context.progress.bytes_total = source.stat().st_size
        with gnupg_home() as gpg:
            gpg.import_keys(signer["secret"], passphrase=signer["passphrase"])
            if signer["passphrase"]:
                unlock(gpg, signer["fingerprint"], signer["passphrase"])
            with _published(target) as partial:
                result = sign_file(
                    gpg,
                    source,
                    partial,
                    signer["fingerprint"],
                    mode=mode,
                    armor=bool(config.get("armor", True)),
                    check=cancel.check,
                    on_progress=context.progress.add,
                )
                _check_run(result, f"signing {source.name}")
        return StepResult(
            outputs={"signature_file": str(target)}, bytes_processed=source.stat().st_size, files=[str(target)]
        )

    def cleanup_before_retry(self, config: dict[str, Any], context: StepContext) -> None:
        _remove_partials(
            [_signed_name(source, config, context) for source in _sources_if_any(config["input_path"], context)[:1]]
        )


def _signed_name(source: Path, config: dict[str, Any], context: StepContext) -> Path:
    mode = config.get("mode") or "detached"
    suffix = {"detached": ".sig" if not config.get("armor", True) else ".asc", "inline": ".gpg", "clear": ".asc"}
    return _output_for(source, config.get("output_path"), suffix[mode], True, context)


@register
class VerifyStep(StepType):
    type_key = "pgp.verify"
    label = "PGP verify"
    description = "Verify a signature; the step fails on an invalid, unknown, expired or revoked signature."
    fields = (
        ConfigField(
            "input_path", "string", required=True, help="The signed file (or the data of a detached signature)."
        ),
        ConfigField("signature_path", "string", help="Detached signature file; empty for inline/clear-signed files."),
        ConfigField("expected_signer", "string", help="Key store id or fingerprint the signature must come from."),
    )
    outputs = ("verify_status", "signer_fingerprint")

    def prepare(self, config: dict[str, Any]) -> dict[str, Any]:
        keys = list(PgpKey.all_objects.exclude(status="deleted"))
        return {
            "keys": [
                {
                    "fingerprint": k.fingerprint,
                    "public": k.public_key_data,
                    "status": k.status,
                    "id": str(k.pk),
                    "name": k.name,
                    "algorithm": k.algorithm,
                }
                for k in keys
            ],
            "fips": _fips(),
        }

    def execute(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> StepResult:
        data = resolve_path(config["input_path"], context.work_dir, context.allowed_roots)
        known = {key["fingerprint"]: key for key in context.prepared["keys"]}
        signature = None
        if config.get("signature_path"):
            signature = resolve_path(config["signature_path"], context.work_dir, context.allowed_roots)
        context.progress.bytes_total = data.stat().st_size
        with gnupg_home() as gpg:
            for key in known.values():
                gpg.import_keys(key["public"])
            result = verify_file(gpg, data, signature, check=cancel.check, on_progress=context.progress.add)
        fingerprint = result.pubkey_fingerprint or result.fingerprint
        if not result.valid:
            raise StepFailed(f"signature on {data.name} is not valid: {signature_problem(result)}")
        signer = known.get(fingerprint) or next(
            (key for key in known.values() if fingerprint and key["fingerprint"].endswith(fingerprint[-16:])), None
        )
        if signer is None:
            raise StepFailed(f"signature on {data.name} comes from a key not in the key store ({fingerprint})")
        if signer["status"] == "revoked":
            raise StepFailed(f"signature on {data.name} was made by revoked key '{signer['name']}'")
        if result.key_status:
            raise StepFailed(f"signature on {data.name} was made by an expired or revoked key ({result.key_status})")
        if context.prepared.get("fips") and signer.get("algorithm") not in FIPS_ALGORITHMS:
            raise StepFailed(
                f"signature on {data.name} was made by key '{signer['name']}' ({signer.get('algorithm')}), "
                "not allowed in FIPS mode: RSA 2048+ or NIST P-256/P-384 only, or turn security.fips_mode_enabled off"
            )
        _check_message_fips(result, data.name, context.prepared.get("fips"))
        expected = config.get("expected_signer")
        if expected and expected not in (signer["id"], signer["fingerprint"]):
            raise StepFailed(f"signature on {data.name} is from '{signer['name']}', not the expected signer")
        return StepResult(
            outputs={"verify_status": "valid", "signer_fingerprint": signer["fingerprint"]},
            audit=[("pgp_key", signer["id"], "used_to_verify", {"file": data.name})],
        )
