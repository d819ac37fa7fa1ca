"""SSH keys: generation, import (OpenSSH, PKCS#1, PKCS#8, with passphrase), public export, fingerprints."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from keystore.errors import CorruptKey, WrongPassphrase

KEY_TYPES = {
    "rsa_2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "rsa_4096": lambda: rsa.generate_private_key(public_exponent=65537, key_size=4096),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "ecdsa_256": lambda: ec.generate_private_key(ec.SECP256R1()),
}


@dataclass(frozen=True)
class SshKeyMaterial:
    key_type: str
    private_openssh: str  # unencrypted OpenSSH text, only ever stored sealed
    public_openssh: str
    fingerprint: str


def _key_type(key: Any) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        return "ecdsa_256"
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size in (2048, 4096):
        return f"rsa_{key.key_size}"
    raise CorruptKey(
        f"unsupported SSH key ({type(key).__name__.replace('_', ' ')}); use RSA 2048/4096, Ed25519 or ECDSA P-256"
    )


def _material(key: Any) -> SshKeyMaterial:
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(public.split()[1])
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    return SshKeyMaterial(_key_type(key), private, public.decode(), fingerprint)


def generate(key_type: str) -> SshKeyMaterial:
    try:
        return _material(KEY_TYPES[key_type]())
    except KeyError:
        raise CorruptKey(f"cannot generate SSH key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}") from None


def load(text: str | bytes, passphrase: str | None = None) -> SshKeyMaterial:
    """Parse an OpenSSH, PKCS#1 or PKCS#8 private key; E4001 for a wrong or missing passphrase, E4000 otherwise."""
    data = text.encode() if isinstance(text, str) else text
    password = passphrase.encode() if passphrase else None
    loaders = (serialization.load_ssh_private_key, serialization.load_pem_private_key)
    last: Exception | None = None
    for loader in loaders:
        try:
            return _material(loader(data, password=password))
        except TypeError as error:  # encrypted without passphrase, or passphrase for a plain key
            message = str(error).lower()
            if "password was not given" in message or "encrypted" in message:
                raise WrongPassphrase("the private key is encrypted: give its passphrase") from None
            last = error
        except ValueError as error:
            message = str(error).lower()
            wrong_passphrase = "bad decrypt" in message or "incorrect password" in message
            # PKCS#1/PKCS#8 report a wrong passphrase only as "could not deserialize".
            if wrong_passphrase or (password and "could not deserialize" in message):
                last = WrongPassphrase("wrong passphrase for the private key")
            else:
                last = error
    if isinstance(last, WrongPassphrase):
        raise last
    raise CorruptKey("not a readable SSH private key (OpenSSH, PKCS#1 or PKCS#8 PEM)")
