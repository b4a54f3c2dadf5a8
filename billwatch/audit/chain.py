r"""Canonical row content, keyed row hashes and the seal chain: what makes tampering visible.

A row's *content* is every column a reader relies on — id, time, event, outcome, actor, owner,
resource, origin, Stripe ids, idempotency key — plus its **plaintext** metadata::

    b"billwatch-audit-v1\n" + column values + b"\n" + metadata (canonical JSON)

The column values are text in one fixed form (UUIDs as ``8-4-4-4-12`` lowercase hex, times as
``YYYY-MM-DD HH:MM:SS.ffffff`` UTC, enums as their values), joined by tabs and escaped the way
PostgreSQL's ``COPY ... TO STDOUT`` text format escapes them (``\\``, ``\t``, ``\n``,
``\r``, ``\b``, ``\f``, ``\v``; null is ``\N``). That encoding is unambiguous, and it is
chosen for speed: PostgreSQL emits it byte for byte, so the verifier hashes each line it
receives without parsing or re-encoding a single value (SQLite rows are encoded in Python, the
same way the recorder does). The metadata part is the exact canonical JSON that was encrypted.

The row hash is HMAC-SHA256 over that content with the audit HMAC key. Hashing plaintext (not
ciphertext) means re-encrypting under a new key (``rotate-key``) changes no hash; keying it
means someone who can write to the database but does not hold the key can neither forge a row
nor re-compute hashes after an edit.

The *chain* is assigned later, by the sealer, in ``audit_seals``: seal ``n`` stores
``SHA-256(chain[n-1] || row_hash)``, starting from :data:`GENESIS`. Writers never wait for each
other; the sealer orders rows once, and signed checkpoints pin the chain's head.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from billwatch.audit.crypto import AuditKeys

if TYPE_CHECKING:
    from billwatch.audit.models import AuditLog

FORMAT = b"billwatch-audit-v1\n"
GENESIS = hashlib.sha256(b"billwatch-audit-chain-genesis-v1").digest()
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

CONTENT_COLUMNS: tuple[str, ...] = (
    "id", "occurred_at", "event_type", "outcome", "action", "reason",
    "actor_user_id", "actor_role", "actor_name", "manager_assignment_id",
    "resource_type", "resource_id", "owner_type", "owner_id",
    "request_id", "client_ip", "job_id",
    "stripe_event_id", "stripe_customer_id", "stripe_subscription_id", "stripe_invoice_id",
    "idempotency_key",
)
"""Every column the row hash covers, in hashing order (the metadata follows them)."""
UUID_COLUMNS = frozenset({"id", "actor_user_id", "manager_assignment_id", "owner_id"})
PROTECTED_COLUMNS = (*CONTENT_COLUMNS, "content_hash")
"""Columns no maintenance path may change (rotation rewrites only ciphertext and key id)."""

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
                               "\r": "\\r", "\t": "\\t", "\v": "\\v"})
_NEEDS_ESCAPE = re.compile(r"[\\\b\f\n\r\t\v]")


def format_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def canonical_metadata(data: Mapping[str, Any]) -> bytes:
    """The one JSON encoding of (already redacted) metadata: sorted keys, no spaces, ASCII."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return str(value)
    if name in UUID_COLUMNS:
        return str(uuid.UUID(str(value)))
    if isinstance(value, datetime):
        return format_timestamp(value)
    return str(value)


def canonical_values(row: AuditLog) -> tuple[str | None, ...]:
    """The row's column values in their canonical text form."""
    return tuple(_text(name, getattr(row, name)) for name in CONTENT_COLUMNS)


def canonical_fields(fields: Mapping[str, Any]) -> tuple[str | None, ...]:
    """The same, from the column values of a row not built yet."""
    return tuple(_text(name, fields.get(name)) for name in CONTENT_COLUMNS)


def column_text(values: Sequence[str | None]) -> bytes:
    """Column values in COPY text form: tab-joined, escaped, null as ``\\N``."""
    present = [value for value in values if value is not None]
    if not _NEEDS_ESCAPE.search("".join(present)):
        return "\t".join("\\N" if value is None else value for value in values).encode()
    return "\t".join("\\N" if value is None else value.translate(_COPY_ESCAPES)
                     for value in values).encode()


def content_bytes(columns: bytes, metadata: bytes) -> bytes:
    """What the row hash covers: format tag, column text, metadata plaintext."""
    return FORMAT + columns + b"\n" + metadata


class RowHasher:
    """HMAC-SHA256 of row content, with the key schedule computed once (the verify hot path)."""

    def __init__(self, key: bytes) -> None:
        self._base = hmac.new(key, digestmod=hashlib.sha256)

    def __call__(self, content: bytes) -> bytes:
        mac = self._base.copy()
        mac.update(content)
        return mac.digest()


@dataclass(frozen=True, slots=True)
class Sealed:
    """What protecting a row's content yields: its hash, its encrypted metadata, the plaintext."""

    content_hash: bytes
    key_id: str
    ciphertext: bytes
    plaintext: bytes


def chain_step(previous: bytes, row_hash: bytes) -> bytes:
    return hashlib.sha256(previous + row_hash).digest()


def associated_data(row_id: uuid.UUID) -> bytes:
    """What binds a row's ciphertext to the row: its id in canonical text form."""
    return str(row_id).encode()


def seal_fields(fields: Mapping[str, Any], data: Mapping[str, Any], keys: AuditKeys) -> Sealed:
    """Encrypt ``data`` for the row with these column values and hash its content."""
    plaintext = canonical_metadata(data)
    key_id, ciphertext = keys.ring.encrypt(plaintext, associated_data(fields["id"]))
    digest = keys.row_hasher(content_bytes(column_text(canonical_fields(fields)), plaintext))
    return Sealed(digest, key_id, ciphertext, plaintext)


def canonical_sql(dialect: str, alias: str) -> list[str]:
    """SQL expressions yielding each content column already in canonical text form.

    PostgreSQL prints UUIDs canonically already and is asked to format times; SQLite stores
    times canonically already and UUIDs as 32 hex digits, which get their dashes back.
    """
    expressions = []
    for name in CONTENT_COLUMNS:
        column = f"{alias}.{name}"
        if dialect != "postgresql" and name in UUID_COLUMNS:
            expressions.append(sqlite_uuid(column))
        elif dialect == "postgresql" and name == "occurred_at":
            expressions.append(
                f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
        else:
            expressions.append(column)
    return expressions


def sqlite_uuid(column: str) -> str:
    """SQLite SQL turning a stored 32-hex-digit UUID into its dashed canonical form."""
    parts = [f"substr({column}, {start}, {length})"
             for start, length in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))]
    return " || '-' || ".join(parts)
