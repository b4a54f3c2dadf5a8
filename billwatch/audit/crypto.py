"""Keys of the audit trail: the metadata encryption key ring and the signing (HMAC) key.

Both come from settings, never from the database, so a copy of the database alone neither
reveals metadata nor lets anyone forge a row or a checkpoint.

* Metadata is sealed with AES-256-GCM; the row id is the associated data, so a ciphertext moved
  onto another row fails to decrypt. Each row stores the id of the key that sealed it.
  ``BILLWATCH_AUDIT_ENCRYPTION_KEYS`` is a ring ``kid:base64key,kid:base64key``: the first
  key encrypts new rows, every key decrypts, so rotation is "put the new key first, then run
  ``billwatch audit rotate-key``, then retire the old one".
* ``BILLWATCH_AUDIT_HMAC_KEY`` keys the row content hashes and signs checkpoints and archive
  manifests.

The keys of a process are part of its runtime (:mod:`billwatch.runtime`): the recorder seals
with the keys of the session's runtime, and a row loaded through a session decrypts with them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from billwatch.secret_keys import (
    DEVELOPMENT_ENCRYPTION_KEYS,
    DEVELOPMENT_HMAC_KEY,
    KeyRingError,
    check_hmac_key,
    check_key_id,
    check_ring,
    parse_ring,
)

NONCE_BYTES = 12
if TYPE_CHECKING:
    from billwatch.config import Settings


@dataclass(frozen=True)
class KeyRing:
    """Ordered AES-GCM keys: the first encrypts, all decrypt."""

    keys: tuple[tuple[str, bytes], ...]
    _ciphers: dict[str, AESGCM] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for kid, key in check_ring(self.keys):
            self._ciphers[kid] = AESGCM(key)

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """Read ``kid:base64key[,kid:base64key...]``."""
        return cls(parse_ring(spec))

    @property
    def primary_id(self) -> str:
        return self.keys[0][0]

    def encrypt(self, plaintext: bytes, associated: bytes) -> tuple[str, bytes]:
        """Seal under the primary key; returns (key id, nonce + ciphertext + tag)."""
        kid = self.primary_id
        nonce = os.urandom(NONCE_BYTES)
        return kid, nonce + self._ciphers[kid].encrypt(nonce, plaintext, associated)

    def decrypt(self, kid: str, blob: bytes, associated: bytes) -> bytes:
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise KeyRingError(f"audit key {kid!r} is not in the key ring")
        try:
            return cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated)
        except InvalidTag as error:
            raise KeyRingError("metadata ciphertext does not authenticate") from error

    def cipher(self, kid: str) -> AESGCM | None:
        """The AES-GCM object for ``kid`` (the verifier's hot loop calls it directly)."""
        return self._ciphers.get(kid)


def generate_key_entry(kid: str) -> str:
    """A fresh ``kid:base64key`` entry to put at the front of the ring."""
    return f"{check_key_id(kid)}:{base64.b64encode(os.urandom(32)).decode()}"


@dataclass(frozen=True)
class AuditKeys:
    ring: KeyRing
    hmac_key: bytes
    development: bool = False

    @cached_property
    def _row_mac(self) -> hmac.HMAC:
        return hmac.new(self.hmac_key, digestmod=hashlib.sha256)

    def row_hasher(self, content: bytes) -> bytes:
        """HMAC-SHA256 of ``content`` under the audit HMAC key (key schedule computed once)."""
        mac = self._row_mac.copy()
        mac.update(content)
        return mac.digest()


def keys_from(encryption_keys: str, hmac_key: str) -> AuditKeys:
    encoded = check_hmac_key(hmac_key)
    development = (encryption_keys.strip() == DEVELOPMENT_ENCRYPTION_KEYS
                   or hmac_key == DEVELOPMENT_HMAC_KEY)
    return AuditKeys(KeyRing.parse(encryption_keys), encoded, development)


def keys_for(settings: Settings) -> AuditKeys:
    """The audit keys configured in ``settings``."""
    return keys_from(settings.audit_encryption_keys.get_secret_value(),
                     settings.audit_hmac_key.get_secret_value())
