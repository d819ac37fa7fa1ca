"""Envelope encryption of stored secrets: AES-256-GCM with a fresh data key per secret, wrapped by a master key.

Blob layout (version 1):
    0      1 byte   format version (1)
    1      8 bytes  master key id (first 8 bytes of a SHA-256 over the master key)
    9     12 bytes  nonce of the key wrap
    21    48 bytes  data key encrypted with the master key (32 bytes + 16-byte tag)
    69    12 bytes  nonce of the data
    81     …        secret encrypted with the data key (ciphertext + 16-byte tag)
The header is authenticated by the key wrap, so any altered byte fails to decrypt.
Rotating the master key re-wraps the data key only; the secret's ciphertext stays.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from courier_site.errors import ConfigurationError, CourierError

VERSION = 1
_KEY_ID_LENGTH = 8
_NONCE = 12
_WRAPPED = 32 + 16
_HEADER = 1 + _KEY_ID_LENGTH
_DATA_AAD = b"courier-secret-v1"


class SecretDecryptionError(CourierError):
    """A stored secret cannot be decrypted: altered, truncated, or sealed with an unknown master key."""

    code = "E1010"


@dataclass(frozen=True)
class MasterKey:
    key: bytes

    @property
    def key_id(self) -> bytes:
        return hashlib.sha256(b"courier-master-key-id:" + self.key).digest()[:_KEY_ID_LENGTH]

    @classmethod
    def from_base64(cls, text: str, name: str = "COURIER_MASTER_KEY") -> MasterKey:
        """Parse a base64 master key; anything but 32 bytes is a configuration error [E1005]."""
        if not text or not text.strip():
            raise ConfigurationError(
                f"{name} is not set: Courier refuses to start without its master key "
                "(32 random bytes, base64; see .env.example)"
            )
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(f"{name} is not valid base64") from None
        if len(raw) != 32:
            raise ConfigurationError(f"{name} must decode to 32 bytes, not {len(raw)}")
        return cls(raw)


class Keyring:
    """The current master key, which seals, and older ones kept only to open secrets during rotation."""

    def __init__(self, current: MasterKey, previous: list[MasterKey] | None = None) -> None:
        self.current = current
        self.by_id = {key.key_id: key for key in [*(previous or []), current]}

    def seal(self, secret: bytes | str) -> bytes:
        data = secret.encode() if isinstance(secret, str) else secret
        data_key = AESGCM.generate_key(bit_length=256)
        header = bytes([VERSION]) + self.current.key_id
        wrap_nonce, data_nonce = os.urandom(_NONCE), os.urandom(_NONCE)
        wrapped = AESGCM(self.current.key).encrypt(wrap_nonce, data_key, header)
        sealed = AESGCM(data_key).encrypt(data_nonce, data, _DATA_AAD)
        return header + wrap_nonce + wrapped + data_nonce + sealed

    def _data_key(self, blob: bytes) -> tuple[bytes, int]:
        minimum = _HEADER + _NONCE + _WRAPPED + _NONCE + 16
        if len(blob) < minimum:
            raise SecretDecryptionError("stored secret is truncated")
        if blob[0] != VERSION:
            raise SecretDecryptionError(f"stored secret has unknown format version {blob[0]}")
        key_id = blob[1:_HEADER]
        master = self.by_id.get(key_id)
        if master is None:
            raise SecretDecryptionError(
                f"stored secret was sealed with master key {key_id.hex()}, which is not configured "
                "(add it to COURIER_PREVIOUS_MASTER_KEYS to rotate)"
            )
        offset = _HEADER
        wrap_nonce = blob[offset : offset + _NONCE]
        wrapped = blob[offset + _NONCE : offset + _NONCE + _WRAPPED]
        try:
            return AESGCM(master.key).decrypt(wrap_nonce, wrapped, blob[:_HEADER]), offset + _NONCE + _WRAPPED
        except InvalidTag:
            raise SecretDecryptionError("stored secret was altered (key wrap failed authentication)") from None

    def open(self, blob: bytes | memoryview) -> bytes:
        blob = bytes(blob)
        data_key, offset = self._data_key(blob)
        nonce = blob[offset : offset + _NONCE]
        try:
            return AESGCM(data_key).decrypt(nonce, blob[offset + _NONCE :], _DATA_AAD)
        except InvalidTag:
            raise SecretDecryptionError("stored secret was altered (data failed authentication)") from None

    def open_text(self, blob: bytes | memoryview) -> str:
        return self.open(blob).decode()

    def needs_rewrap(self, blob: bytes | memoryview) -> bool:
        return bytes(blob[1:_HEADER]) != self.current.key_id

    def rewrap(self, blob: bytes | memoryview) -> bytes:
        """The same secret under the current master key (only the data key is re-encrypted)."""
        blob = bytes(blob)
        data_key, offset = self._data_key(blob)
        header = bytes([VERSION]) + self.current.key_id
        wrap_nonce = os.urandom(_NONCE)
        wrapped = AESGCM(self.current.key).encrypt(wrap_nonce, data_key, header)
        return header + wrap_nonce + wrapped + blob[offset:]


def keyring() -> Keyring:
    """The keyring built from settings (validated at start-up)."""
    from django.conf import settings

    return Keyring(
        MasterKey.from_base64(settings.COURIER_MASTER_KEY),
        [MasterKey.from_base64(text, "COURIER_PREVIOUS_MASTER_KEYS") for text in settings.COURIER_PREVIOUS_MASTER_KEYS],
    )
