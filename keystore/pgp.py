"""PGP keys through python-gnupg, each operation in a throwaway GnuPG home that holds no key afterwards."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gnupg

from keystore.errors import CorruptKey, WrongPassphrase

# Key-Type / Key-Length / curves for gpg's unattended key generation.
ALGORITHMS: dict[str, dict[str, Any]] = {
    "rsa_2048": {"key_type": "RSA", "key_length": 2048, "subkey_type": "RSA", "subkey_length": 2048},
    "rsa_3072": {"key_type": "RSA", "key_length": 3072, "subkey_type": "RSA", "subkey_length": 3072},
    "rsa_4096": {"key_type": "RSA", "key_length": 4096, "subkey_type": "RSA", "subkey_length": 4096},
    "ecc_curve25519": {"key_type": "EDDSA", "key_curve": "ed25519", "subkey_type": "ECDH", "subkey_curve": "cv25519"},
    "ecc_p256": {"key_type": "ECDSA", "key_curve": "nistp256", "subkey_type": "ECDH", "subkey_curve": "nistp256"},
    "ecc_p384": {"key_type": "ECDSA", "key_curve": "nistp384", "subkey_type": "ECDH", "subkey_curve": "nistp384"},
}
# gpg's public-key algorithm numbers and curve names, mapped back to ours on import.
_ALGORITHM_IDS = {"1": "rsa", "22": "ecc_curve25519", "19": "ecdsa"}


@dataclass(frozen=True)
class PgpKeyMaterial:
    fingerprint: str  # 40 hex digits
    short_key_id: str  # 16 hex digits
    algorithm: str
    public_armored: str
    secret_bundle: str | None  # JSON {"armored": …, "passphrase": …}, stored sealed, or None
    expires_at: datetime | None
    user_id: str


@contextmanager
def gnupg_home() -> Iterator[gnupg.GPG]:
    """A private, empty GnuPG home for one operation, removed afterwards with every key in it."""
    home = tempfile.mkdtemp(prefix="courier-gnupg-")
    try:
        Path(home).chmod(0o700)
        gpg = gnupg.GPG(gnupghome=home)
        # python-gnupg feeds gpg's stdin 16 KiB at a time; 1 MiB blocks keep the Python
        # side out of the way on large files.
        gpg.buffer_size = 1024 * 1024
        yield gpg
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _algorithm(info: dict[str, Any]) -> str:
    code = str(info.get("algo"))
    length = int(info.get("length") or 0)
    curve = (info.get("curve") or "").lower()
    if code == "1":
        if length in (2048, 3072, 4096):
            return f"rsa_{length}"
        raise CorruptKey(f"RSA keys of {length} bits are not supported (use 2048, 3072 or 4096)")
    if "25519" in curve or code == "22":
        return "ecc_curve25519"
    if "384" in curve:
        return "ecc_p384"
    if "256" in curve:
        return "ecc_p256"
    raise CorruptKey(f"unsupported PGP key algorithm {code} {curve}".strip())


def _describe(gpg: gnupg.GPG, fingerprint: str, secret_bundle: str | None) -> PgpKeyMaterial:
    keys = {key["fingerprint"]: key for key in gpg.list_keys()}
    info = keys[fingerprint]
    public = gpg.export_keys(fingerprint, armor=True)
    expires = datetime.fromtimestamp(int(info["expires"]), UTC) if info.get("expires") else None
    return PgpKeyMaterial(
        fingerprint=fingerprint,
        short_key_id=fingerprint[-16:],
        algorithm=_algorithm(info),
        public_armored=public,
        secret_bundle=secret_bundle,
        expires_at=expires,
        user_id=(info.get("uids") or [""])[0],
    )


def generate(algorithm: str, name: str, email: str = "", expire_days: int | None = None) -> PgpKeyMaterial:
    """A new key pair; the secret key is returned unprotected (it is stored sealed by the master key)."""
    try:
        parameters = dict(ALGORITHMS[algorithm])
    except KeyError:
        raise CorruptKey(f"cannot generate {algorithm!r}; choose one of {', '.join(ALGORITHMS)}") from None
    with gnupg_home() as gpg:
        request = gpg.gen_key_input(
            name_real=name,
            name_email=email or None,
            no_protection=True,
            expire_date=f"{expire_days}d" if expire_days else 0,
            **parameters,
        )
        result = gpg.gen_key(request)
        if not result.fingerprint:
            raise CorruptKey(f"gpg could not generate the key: {result.stderr.strip().splitlines()[-1:]}")
        armored = gpg.export_keys(result.fingerprint, secret=True, armor=True, expect_passphrase=False)
        return _describe(gpg, result.fingerprint, json.dumps({"armored": armored, "passphrase": None}))


def load(data: str | bytes, passphrase: str | None = None) -> PgpKeyMaterial:
    """Parse armored or binary PGP key data: a public key or a key pair (passphrase checked)."""
    with gnupg_home() as gpg:
        result = gpg.import_keys(data, passphrase=passphrase) if passphrase else gpg.import_keys(data)
        fingerprints = list(dict.fromkeys(result.fingerprints))
        if not fingerprints:
            raise CorruptKey("no PGP key could be read from the data (corrupt, or not a key)")
        if len(fingerprints) > 1:
            raise CorruptKey(f"the data holds {len(fingerprints)} keys; import one key at a time")
        fingerprint = fingerprints[0]
        secret = [key for key in gpg.list_keys(secret=True) if key["fingerprint"] == fingerprint]
        bundle = None
        if secret:
            # Prove the passphrase by signing something with it.
            signed = gpg.sign("courier passphrase check", keyid=fingerprint, passphrase=passphrase or "", detach=True)
            if not signed.data:
                raise WrongPassphrase("wrong or missing passphrase for the private key")
            armored = gpg.export_keys(
                fingerprint, secret=True, armor=True, passphrase=passphrase or None, expect_passphrase=bool(passphrase)
            )
            bundle = json.dumps({"armored": armored, "passphrase": passphrase or None})
        return _describe(gpg, fingerprint, bundle)
