"""PGP keys through python-gnupg, each operation in a throwaway GnuPG home that holds no key afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
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
# How often run_on_file() asks a running gpg how far it has read and whether to stop: well inside
# the second within which a cancel must take effect (SPEC 4.2).
POLL_SECONDS = 0.1
_STATUS_PREFIX = "[GNUPG:] "
# Encrypted and signed messages name no file inside, as when Courier fed gpg through its stdin; gpg
# would otherwise record the source's name, which a partner's gpg may use to name its output.
_NO_EMBEDDED_NAME = ["--set-filename", ""]


@dataclass(frozen=True)
class PgpKeyMaterial:
    fingerprint: str  # 40 hex digits
    short_key_id: str  # 16 hex digits
    algorithm: str
    public_armored: str
    secret_bundle: str | None  # JSON {"armored": …, "passphrase": …}, stored sealed, or None
    expires_at: datetime | None
    user_id: str


HOME_PREFIX = "courier-gnupg-"


@contextmanager
def gnupg_home() -> Iterator[gnupg.GPG]:
    """A private, empty GnuPG home for one operation, removed afterwards with every key in it."""
    # Named for the process that owns it: a home left by a process killed outright (SIGKILL,
    # OOM) is found and removed by remove_abandoned_homes().
    home = tempfile.mkdtemp(prefix=f"{HOME_PREFIX}{os.getpid()}-")
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
        # gpg speaks UTF-8 (user ids, passphrases); python-gnupg's latin-1 default fails on a
        # name or passphrase outside latin-1 with an encoding error instead of making the key.
        gpg.encoding = "utf-8"
        yield gpg
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another account's process: alive
        return True
    # A killed process nobody has reaped yet (a zombie) is dead all the same.
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    return True


def remove_abandoned_homes() -> list[Path]:
    """Remove the GnuPG homes of processes on this host that died without removing them.

    Such a home holds the secret keys the dead process imported, and its gpg-agent (a daemon in a
    session of its own, so it outlives a killed process group) holds their passphrases: the agent
    is told to exit before the home goes.
    """
    removed = []
    for home in Path(tempfile.gettempdir()).glob(f"{HOME_PREFIX}*-*"):
        owner = home.name[len(HOME_PREFIX) :].split("-", 1)[0]
        if not owner.isdigit() or _alive(int(owner)) or not home.is_dir():
            continue
        gpgconf = shutil.which("gpgconf")
        if gpgconf:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(  # noqa: S603
                    [gpgconf, "--homedir", str(home), "--kill", "gpg-agent"],
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
        shutil.rmtree(home, ignore_errors=True)
        removed.append(home)
    return removed


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
    # python-gnupg lists no subkey_info at all for a key without subkeys (a sign-only key pair).
    subkeys = keys[0].get("subkey_info", {}).values()
    keygrips = [keys[0]["keygrip"], *(info["keygrip"] for info in subkeys)]
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


# OpenPGP algorithm ids (RFC 4880, 9.2 and 9.4): what FIPS mode accepts in a message it decrypts or verifies.
FIPS_CIPHERS = frozenset({"7", "8", "9"})
FIPS_DIGESTS = frozenset({"8", "9", "10", "11"})
CIPHER_NAMES = {
    "1": "IDEA", "2": "3DES", "3": "CAST5", "4": "Blowfish", "7": "AES-128", "8": "AES-192", "9": "AES-256",
    "10": "Twofish", "11": "Camellia-128", "12": "Camellia-192", "13": "Camellia-256",
}  # fmt: skip
DIGEST_NAMES = {
    "1": "MD5", "2": "SHA-1", "3": "RIPEMD-160", "8": "SHA-256", "9": "SHA-384", "10": "SHA-512", "11": "SHA-224",
}  # fmt: skip


def fips_message_problem(result: Any) -> str | None:
    """What of a decrypted or verified message FIPS mode refuses (its cipher, its signature's digest), from
    gpg's DECRYPTION_INFO and VALIDSIG status lines; None when both are approved or absent."""
    for line in (result.stderr or "").splitlines():
        parts = line.split()
        # [GNUPG:] DECRYPTION_INFO <mdc method> <cipher> [<aead>]
        if parts[:2] == ["[GNUPG:]", "DECRYPTION_INFO"] and len(parts) >= 4 and parts[3] not in FIPS_CIPHERS:
            return f"encrypted with {CIPHER_NAMES.get(parts[3], f'cipher {parts[3]}')}"
        # [GNUPG:] VALIDSIG <fpr> <date> <timestamp> <expiry> <version> <reserved> <key algo> <digest> …
        if parts[:2] == ["[GNUPG:]", "VALIDSIG"] and len(parts) >= 10 and parts[9] not in FIPS_DIGESTS:
            return f"signed with {DIGEST_NAMES.get(parts[9], f'digest {parts[9]}')}"
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


def encrypt_file(
    gpg: gnupg.GPG,
    source: Path,
    output: Path,
    recipients: list[str],
    *,
    armor: bool,
    sign_with: str | None,
    extra_args: list[str],
    check: Callable[[], None],
    on_progress: Callable[[int], None],
) -> gnupg.Crypt:
    """Encrypt source to the recipients' fingerprints into output, signed by sign_with if given (see run_on_file)."""
    args = ["--encrypt", *(argument for fingerprint in recipients for argument in ("--recipient", fingerprint))]
    if armor:
        args.append("--armor")
    if sign_with:
        args += ["--sign", "--default-key", sign_with]
    # The agent holds the signing key's passphrase (unlock); never wait for a pinentry.
    args += ["--trust-model", "always", "--pinentry-mode", "error", *_NO_EMBEDDED_NAME, *extra_args]
    return run_on_file(gpg, args, source, output, gnupg.Crypt(gpg), check=check, on_progress=on_progress)


def decrypt_file(
    gpg: gnupg.GPG, source: Path, output: Path, *, check: Callable[[], None], on_progress: Callable[[int], None]
) -> gnupg.Crypt:
    """Decrypt source into output with whichever imported key pair it names (see run_on_file)."""
    # The agent holds every passphrase (unlock); never wait for a pinentry.
    args = ["--decrypt", "--trust-model", "always", "--pinentry-mode", "error"]
    return run_on_file(gpg, args, source, output, gnupg.Crypt(gpg), check=check, on_progress=on_progress)


def sign_file(
    gpg: gnupg.GPG,
    source: Path,
    output: Path,
    signer: str,
    *,
    mode: str,
    armor: bool,
    check: Callable[[], None],
    on_progress: Callable[[int], None],
) -> gnupg.Sign:
    """Sign source with signer into output: a detached signature, an inline signed message or clear text."""
    args = [{"detached": "--detach-sign", "inline": "--sign", "clear": "--clearsign"}[mode]]
    if armor:
        args.append("--armor")
    args += ["--default-key", signer, "--pinentry-mode", "error", *_NO_EMBEDDED_NAME]
    return run_on_file(gpg, args, source, output, gnupg.Sign(gpg), check=check, on_progress=on_progress)


def verify_file(
    gpg: gnupg.GPG,
    data: Path,
    signature: Path | None,
    *,
    check: Callable[[], None],
    on_progress: Callable[[int], None],
) -> gnupg.Verify:
    """Check the signature of data: inline or clear-signed, or the detached signature file (see run_on_file)."""
    files = [signature, data] if signature is not None else [data]
    return _supervised(gpg, ["--verify"], files, data.stat().st_size, gnupg.Verify(gpg), check, on_progress)


def run_on_file(
    gpg: gnupg.GPG,
    args: list[str],
    source: Path,
    output: Path,
    result: Any,
    *,
    check: Callable[[], None],
    on_progress: Callable[[int], None],
) -> Any:
    """Run gpg with args on source, writing output, and return result (a python-gnupg result) filled from its status.

    gpg reads and writes the files itself, as fast as the gpg command line; the calling thread only
    watches it. Every POLL_SECONDS it reports the bytes gpg has read since the last report to
    on_progress (the rest of the source once gpg has ended) and calls check(): whatever check()
    raises kills gpg and propagates. output must not exist yet; removing it after a failed or
    stopped run is the caller's business.
    """
    # No --yes: gpg refuses to write over an existing output.
    args = [*args, "--output", str(output)]
    return _supervised(gpg, args, [source], source.stat().st_size, result, check, on_progress)


def _supervised(
    gpg: gnupg.GPG,
    args: list[str],
    files: list[Path],
    size: int,
    result: Any,
    check: Callable[[], None],
    on_progress: Callable[[int], None],
) -> Any:
    """Run gpg with args on files while watching it: progress out of size bytes, check() between polls."""
    check()
    # The source goes by name, as on the command line: gpg then knows its length and writes packets
    # of that length, which decrypt faster than the chunked ones it writes for data of unknown length
    # (stdin).
    command = gpg.make_args([*args, "--", *(str(path) for path in files)], passphrase=False)
    with tempfile.TemporaryFile() as messages:
        # The status lines go to a file, not a pipe that would need draining while gpg runs.
        # python-gnupg's command line for its gpg binary, no shell, no passphrase on it.
        process = subprocess.Popen(  # noqa: S603
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=messages, env=gpg.env
        )
        reported = 0
        try:
            while not _ended(process, POLL_SECONDS):
                # gpg's read total also counts its keyring and the agent's answers, a few kilobytes.
                done = min(_bytes_read(process.pid), size)
                if done > reported:
                    on_progress(done - reported)
                    reported = done
                check()
        except BaseException:
            process.kill()
            process.wait()
            raise
        on_progress(size - reported)
        messages.seek(0)
        _read_status(messages.read().decode(gpg.encoding, errors="replace"), result)
    result.returncode = process.returncode
    return result


def _ended(process: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _bytes_read(pid: int) -> int:
    """Bytes the process has read so far (rchar in Linux's /proc/<pid>/io); 0 where that cannot be read."""
    try:
        counters = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return 0
    for line in counters.splitlines():
        name, _, value = line.partition(":")
        if name == "rchar":
            return int(value)
    return 0


def _read_status(text: str, result: Any) -> None:
    """Hand each [GNUPG:] status line to result, as python-gnupg does for the operations it runs itself."""
    for line in text.splitlines():
        if line.startswith(_STATUS_PREFIX):
            keyword, _, value = line[len(_STATUS_PREFIX) :].strip().partition(" ")
            if keyword:
                result.handle_status(keyword, value.strip())
    result.stderr = text


def run_problem(result: Any) -> str | None:
    """Why a run_on_file() run failed, in gpg's words; None when its output is complete."""
    if not result:  # no DECRYPTION_OKAY, END_ENCRYPTION or SIG_CREATED
        return result.status or _last_message(result)
    # gpg 2.2 still reports DECRYPTION_OKAY when it could not write the plaintext (a full disk): only
    # its exit status tells. A signature gpg could not check or accept also makes it exit non-zero;
    # whether that matters is the decrypt step's call (verify_signature), as before.
    signature_problems = result.problems if isinstance(result, gnupg.Verify) else []
    if result.returncode != 0 and not signature_problems:
        return _last_message(result)
    return None


def _last_message(result: Any) -> str:
    messages = [line for line in (result.stderr or "").splitlines() if line and not line.startswith(_STATUS_PREFIX)]
    if messages:
        return messages[-1].removeprefix("gpg: ")
    return f"gpg exited with status {result.returncode}"
