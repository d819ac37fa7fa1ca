"""PGP keys through python-gnupg, each operation in a throwaway GnuPG home that holds no key afterwards."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gnupg

from courier_site.errors import ConfigurationError
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
        # allow-preset-passphrase lets unlock() hand the agent each key's passphrase (one --passphrase
        # fits one key only). A fixed S2K count spares every new agent its start-up calibration, which
        # takes seconds on a small machine; the highest count OpenPGP can express is at least as strong
        # as the calibrated one.
        (Path(home) / "gpg-agent.conf").write_text("allow-preset-passphrase\ns2k-count 65011712\n")
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


def check_new_passphrase(passphrase: str) -> None:
    """Refuse [E4001] a passphrase gpg would alter: it reads it from one line of its parameter file, trimmed."""
    if any(character in passphrase for character in "\r\n\x00"):
        raise WrongPassphrase("a passphrase may not contain line breaks or NUL characters")
    if passphrase != passphrase.strip():
        raise WrongPassphrase("a passphrase may not start or end with spaces")


def generate(
    algorithm: str, name: str, email: str = "", expire_days: int | None = None, passphrase: str | None = None
) -> PgpKeyMaterial:
    """A new key pair, its secret key protected by passphrase if one is given (stored sealed either way)."""
    try:
        parameters = dict(ALGORITHMS[algorithm])
    except KeyError:
        raise CorruptKey(f"cannot generate {algorithm!r}; choose one of {', '.join(ALGORITHMS)}") from None
    if passphrase:
        check_new_passphrase(passphrase)
        parameters["passphrase"] = passphrase
    else:
        parameters["no_protection"] = True
    with gnupg_home() as gpg:
        request = gpg.gen_key_input(
            # gpg reads one parameter a line: a line break in the name must not start another.
            name_real=" ".join(name.split()),
            name_email=email or None,
            expire_date=f"{expire_days}d" if expire_days else 0,
            **parameters,
        )
        result = gpg.gen_key(request)
        if not result.fingerprint:
            raise CorruptKey(f"gpg could not generate the key: {result.stderr.strip().splitlines()[-1:]}")
        armored = gpg.export_keys(
            result.fingerprint,
            secret=True,
            armor=True,
            passphrase=passphrase or None,
            expect_passphrase=bool(passphrase),
        )
        if "PRIVATE KEY BLOCK" not in armored:
            raise CorruptKey(f"gpg generated the key but would not export it: {result.stderr.strip()[-200:]}")
        return _describe(gpg, result.fingerprint, json.dumps({"armored": armored, "passphrase": passphrase or None}))


def load(data: str | bytes, passphrase: str | None = None) -> PgpKeyMaterial:
    """Parse armored or binary PGP key data: a public key or a key pair (passphrase checked)."""
    with gnupg_home() as gpg:
        if not passphrase:
            # A protected key without its passphrase must fail at once, not wait for a pinentry.
            gpg.options = ["--pinentry-mode", "error"]
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
            # Exporting has the agent unlock the key, which proves the passphrase; unlike a test
            # signature it also works for a key pair that has expired (kept to decrypt old files).
            armored = gpg.export_keys(
                fingerprint, secret=True, armor=True, passphrase=passphrase or None, expect_passphrase=bool(passphrase)
            )
            if "PRIVATE KEY BLOCK" not in armored:
                raise WrongPassphrase("wrong or missing passphrase for the private key")
            bundle = json.dumps({"armored": armored, "passphrase": passphrase or None})
        return _describe(gpg, fingerprint, bundle)


def unlock(gpg: gnupg.GPG, fingerprint: str, passphrase: str) -> None:
    """Give the agent of this GnuPG home the passphrase of an imported key pair (primary key and subkeys).

    gpg then decrypts with whichever imported key a message names without asking for a passphrase,
    which a single --passphrase cannot do when the key pairs have different ones.
    """
    keys = [key for key in gpg.list_keys(secret=True) if key["fingerprint"] == fingerprint]
    if not keys:
        raise CorruptKey(f"the private key {fingerprint} is not in the GnuPG home")
    keygrips = [keys[0]["keygrip"], *(info["keygrip"] for info in keys[0]["subkey_info"].values())]
    # The passphrase travels in hex on stdin, never on a command line other users could read.
    hex_passphrase = passphrase.encode().hex().upper()
    commands = "".join(f"PRESET_PASSPHRASE {keygrip} -1 {hex_passphrase}\n" for keygrip in keygrips if keygrip)
    connect_agent = shutil.which("gpg-connect-agent")
    if connect_agent is None:
        raise ConfigurationError("gpg-connect-agent (part of GnuPG) is not on the PATH")
    # Fixed arguments; the passphrase goes through stdin.
    answer = subprocess.run(  # noqa: S603
        [connect_agent, "--homedir", gpg.gnupghome],
        input=commands + "/bye\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if answer.returncode != 0 or "ERR" in answer.stdout:
        raise CorruptKey(f"the gpg agent refused the passphrase of {fingerprint}: {answer.stdout.strip()[-200:]}")


def decryption_key(result: Any) -> str | None:
    """Fingerprint of the primary key whose (sub)key decrypted a message, from gpg's DECRYPTION_KEY status."""
    for line in (result.stderr or "").splitlines():
        parts = line.split()
        # [GNUPG:] DECRYPTION_KEY <fingerprint of the subkey> <fingerprint of the primary key> <owner trust>
        if parts[:2] == ["[GNUPG:]", "DECRYPTION_KEY"] and len(parts) >= 4:
            return parts[3]
    return None


def signature_problem(result: Any) -> str:
    """Why gpg did not accept a signature (verify or decrypt result), in words an operator can act on."""
    # After EXPKEYSIG / REVKEYSIG gpg still sends VALIDSIG, which leaves status "signature valid".
    if result.key_status:
        return result.key_status
    problems = [problem.get("status") for problem in result.problems]
    if "no public key" in problems:
        return "unknown signer"
    if problems:
        return problems[-1]
    if result.status and result.status not in ("decryption ok", "signature valid"):
        return result.status
    return "no signature"
