"""Tools for tests that attack the trail the way someone with database access would.

On PostgreSQL they act as a superuser does: ``session_replication_role = replica`` switches
off the append-only triggers for the transaction. On SQLite, someone holding the file drops the
triggers. Either way the trail's own defences — row HMACs, the chain, signed checkpoints
outside the database — are what must catch the change.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from billwatch.audit.chain import CONTENT_COLUMNS, seal_fields
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.models import AuditLog, AuditSeal
from billwatch.db import Database

GUARDED = ("audit_logs", "audit_seals", "audit_checkpoints", "audit_archives")


@asynccontextmanager
async def tampering(db: Database) -> AsyncIterator[AsyncConnection]:
    """A transaction in which the append-only triggers do not fire."""
    async with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            await conn.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            for table in GUARDED:
                await conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_update"))
                await conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_delete"))
        yield conn


async def row_at(db: Database, seq: int) -> uuid.UUID:
    async with db.sessionmaker() as session:
        found = await session.scalar(select(AuditSeal.audit_log_id).where(AuditSeal.seq == seq))
        assert found is not None
        return found


async def move_seal(conn: AsyncConnection, old: int, new: int) -> None:
    await conn.execute(update(AuditSeal).where(AuditSeal.seq == old).values(seq=new))


async def rechain_from(conn: AsyncConnection, seq: int) -> None:
    """Re-compute every chain hash from ``seq`` on from the stored row hashes (no key needed)."""
    previous = (await conn.execute(select(AuditSeal.chain_hash)
                                   .where(AuditSeal.seq == seq - 1))).scalar_one()
    rows = (await conn.execute(
        select(AuditSeal.seq, AuditLog.content_hash)
        .join(AuditLog, AuditLog.id == AuditSeal.audit_log_id)
        .where(AuditSeal.seq >= seq).order_by(AuditSeal.seq))).all()
    for row_seq, content_hash in rows:
        previous = hashlib.sha256(previous + content_hash).digest()
        await conn.execute(update(AuditSeal).where(AuditSeal.seq == row_seq)
                           .values(chain_hash=previous))


def protect(row: AuditLog, data: Mapping[str, Any], keys: AuditKeys) -> None:
    """Sign ``data`` onto a row built by hand, as the recorder would: what a key holder can forge."""
    sealed = seal_fields({name: getattr(row, name) for name in CONTENT_COLUMNS}, data, keys)
    row.metadata_key_id, row.metadata_ciphertext = sealed.key_id, sealed.ciphertext
    row.content_hash = sealed.content_hash
