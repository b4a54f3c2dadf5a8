"""The audit keys' development values and their format, below both settings and the audit trail.

Settings validate the keys when they are read, and :mod:`billwatch.audit.crypto` builds ciphers
from them; keeping the format here lets :mod:`billwatch.config` check keys without importing
the audit domain (which imports settings).
"""

from __future__ import annotations

import base64
import binascii
import re

DEVELOPMENT_KEY_ID = "dev"
DEVELOPMENT_ENCRYPTION_KEYS = (
    f"{DEVELOPMENT_KEY_ID}:" + base64.b64encode(b"billwatch-DEVELOPMENT-ONLY-key!!").decode())
"""A fixed, public key for laptops and tests. Anything encrypted with it is readable by anyone."""
DEVELOPMENT_HMAC_KEY = "billwatch-development-audit-hmac-key-DO-NOT-USE-IN-PRODUCTION"

AES_KEY_BYTES = 32
MIN_HMAC_KEY_BYTES = 32
KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")

RingKeys = tuple[tuple[str, bytes], ...]
"""An ordered key ring: (key id, AES-256 key), the first one encrypting."""


class KeyRingError(ValueError):
    """A malformed key ring, or a ciphertext no key in the ring can open."""


def check_key_id(kid: str) -> str:
    """``kid`` if it may name a key (it is stored on every row, so it stays short and plain)."""
    if not KEY_ID.match(kid):
        raise KeyRingError(f"bad key id {kid!r}: use 1-32 of A-Z a-z 0-9 _ . -")
    return kid


def check_ring(keys: RingKeys) -> RingKeys:
    """``keys`` if they form a usable ring: not empty, good ids, each once, 32-byte keys."""
    if not keys:
        raise KeyRingError("the audit key ring is empty")
    seen: set[str] = set()
    for kid, key in keys:
        check_key_id(kid)
        if len(key) != AES_KEY_BYTES:
            raise KeyRingError(f"key {kid!r} must be 32 bytes (AES-256), got {len(key)}")
        if kid in seen:
            raise KeyRingError(f"key id {kid!r} appears twice in the ring")
        seen.add(kid)
    return keys


def parse_ring(spec: str) -> RingKeys:
    """Read and check ``kid:base64key[,kid:base64key...]``."""
    keys: list[tuple[str, bytes]] = []
    for entry in (part.strip() for part in spec.split(",")):
        if not entry:
            continue
        kid, sep, encoded = entry.partition(":")
        if not sep:
            raise KeyRingError("each key ring entry is kid:base64key")
        try:
            keys.append((kid.strip(), base64.b64decode(encoded.strip(), validate=True)))
        except binascii.Error as error:
            raise KeyRingError(f"key {kid.strip()!r} is not valid base64") from error
    return check_ring(tuple(keys))


def check_hmac_key(hmac_key: str) -> bytes:
    """The HMAC key's bytes, refused when shorter than the SHA-256 output."""
    encoded = hmac_key.encode()
    if len(encoded) < MIN_HMAC_KEY_BYTES:
        raise KeyRingError("the audit HMAC key must be at least 32 bytes")
    return encoded


def check_audit_keys(encryption_keys: str, hmac_key: str) -> None:
    """Raise :class:`KeyRingError` unless both audit key settings are well formed."""
    check_hmac_key(hmac_key)
    parse_ring(encryption_keys)
