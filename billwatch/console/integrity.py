"""The proof shown beside one audit row: its hash checked now, its seal, the checkpoint covering it.

``billwatch audit verify`` proves the whole trail; this proves one row cheaply enough for a page:
the row's HMAC is recomputed from its columns and decrypted metadata, its seal's chain link is
recomputed from the previous seal, and the seals from it up to the first checkpoint at or after
it are walked so the signed checkpoint head is shown to commit to this very row.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.audit.chain import (
    GENESIS,
    associated_data,
    canonical_values,
    chain_step,
    column_text,
    content_bytes,
)
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.models import AuditCheckpoint, AuditLog, AuditSeal
from billwatch.audit.sealing import from_row
from billwatch.secret_keys import KeyRingError

MAX_WALK = 1000
"""Seals walked from a row to its checkpoint on a page view; beyond it the walk is left to verify."""


@dataclass(frozen=True, slots=True)
class RowIntegrity:
    hash_ok: bool | None
    """The row's content hash recomputed now; None when its metadata key left the ring."""
    seq: int | None
    link_ok: bool | None
    """The seal's chain link recomputed from the previous seal (None: previous one archived)."""
    checkpoint_seq: int | None = None
    checkpoint_at: datetime | None = None
    checkpoint_signed: bool | None = None
    checkpoint_commits: bool | None = None
    """The walk from this row's seal reproduced the checkpoint's signed head."""
    note: str | None = None

    @property
    def intact(self) -> bool:
        """Nothing checked found a difference (unsealed rows can be intact, just not sealed)."""
        return self.hash_ok is not False and self.link_ok is not False and \
            self.checkpoint_signed is not False and self.checkpoint_commits is not False

    @property
    def summary(self) -> str:
        if not self.intact:
            return "TAMPERED: this row no longer matches what was recorded"
        if self.hash_ok is None:
            return "not checkable: its metadata key has left the key ring"
        if self.seq is None:
            return "intact, not sealed yet (the next checkpoint seals it)"
        if self.checkpoint_seq is None:
            return f"intact, sealed at seq {self.seq}, not covered by a checkpoint yet"
        return (f"intact, sealed at seq {self.seq}, covered by checkpoint {self.checkpoint_seq}"
                f" signed {self.checkpoint_at:%Y-%m-%d %H:%M:%S} UTC")


def row_hash_ok(row: AuditLog, keys: AuditKeys) -> bool | None:
    """Recompute the row's HMAC from its stored columns and metadata plaintext."""
    try:
        plaintext = keys.ring.decrypt(row.metadata_key_id, row.metadata_ciphertext,
                                      associated_data(row.id))
    except KeyRingError:
        return None
    except Exception:  # a ciphertext that no longer authenticates was altered
        return False
    digest = keys.row_hasher(content_bytes(column_text(canonical_values(row)), plaintext))
    return hmac.compare_digest(digest, bytes(row.content_hash))


async def check_row(session: AsyncSession, row: AuditLog, keys: AuditKeys) -> RowIntegrity:
    hash_ok = row_hash_ok(row, keys)
    seal = (await session.scalars(select(AuditSeal).where(AuditSeal.audit_log_id == row.id))).first()
    if seal is None:
        return RowIntegrity(hash_ok, None, None)
    previous = GENESIS if seal.seq == 1 else (await session.scalars(
        select(AuditSeal.chain_hash).where(AuditSeal.seq == seal.seq - 1))).first()
    link_ok = None if previous is None else hmac.compare_digest(
        chain_step(bytes(previous), bytes(row.content_hash)), bytes(seal.chain_hash))
    covering = (await session.scalars(
        select(AuditCheckpoint).where(AuditCheckpoint.last_seq >= seal.seq)
        .order_by(AuditCheckpoint.last_seq).limit(1))).first()
    if covering is None:
        return RowIntegrity(hash_ok, seal.seq, link_ok)
    signed = from_row(covering).valid(keys.hmac_key)
    commits, note = await _walk(session, seal, covering)
    return RowIntegrity(hash_ok, seal.seq, link_ok, covering.last_seq, covering.created_at,
                        signed, commits, note)


async def _walk(session: AsyncSession, seal: AuditSeal,
                covering: AuditCheckpoint) -> tuple[bool | None, str | None]:
    """Chain the stored row hashes from ``seal`` to the checkpoint and compare with its head."""
    span = covering.last_seq - seal.seq
    if span > MAX_WALK:
        return None, f"{span:,} seals to the checkpoint: `billwatch audit verify` walks them"
    links = (await session.execute(
        select(AuditSeal.seq, AuditSeal.chain_hash, AuditLog.content_hash)
        .outerjoin(AuditLog, AuditLog.id == AuditSeal.audit_log_id)
        .where(AuditSeal.seq > seal.seq, AuditSeal.seq <= covering.last_seq)
        .order_by(AuditSeal.seq))).all()
    if len(links) != span:
        return False, "seals are missing between this row and its checkpoint"
    head = bytes(seal.chain_hash)
    for link in links:
        if link.content_hash is None:
            return False, f"the row sealed at seq {link.seq} is missing"
        head = chain_step(head, bytes(link.content_hash))
        if not hmac.compare_digest(head, bytes(link.chain_hash)):
            return False, f"the chain breaks at seq {link.seq}"
    return hmac.compare_digest(head, bytes(covering.head_hash)), None
