"""``billwatch audit rotate-key``: re-encrypt metadata under the ring's first key.

Row hashes cover the plaintext, so re-encryption changes no hash and the chain verifies the
same before and after. Each batch is its own transaction through the maintenance path, whose
trigger lets an UPDATE touch only ``metadata_ciphertext`` and ``metadata_key_id``; a crash
half-way leaves every row readable (under its old or its new key) and the command can simply
be run again. Once it reports zero rows left, the old key can leave the ring — unless archive
files sealed under it are still kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, bindparam, func, select, update

from billwatch.accounts.actor import SystemActor
from billwatch.audit import recorder
from billwatch.audit.chain import associated_data
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.events import AuditEvent
from billwatch.audit.maintenance import maintenance
from billwatch.audit.models import AuditLog
from billwatch.db import Database

BATCH = 1000
_table = cast(Table, AuditLog.__table__)
_reencrypt = (
    update(_table)
    .where(_table.c.id == bindparam("row_id"), _table.c.metadata_key_id == bindparam("old_kid"))
    .values(metadata_key_id=bindparam("new_kid"), metadata_ciphertext=bindparam("blob")))


@dataclass(frozen=True, slots=True)
class RotationResult:
    rotated: int
    key_id: str


async def rows_to_rotate(db: Database, keys: AuditKeys) -> int:
    """Rows whose metadata is sealed under any key but the ring's first."""
    async with db.sessionmaker() as session:
        return int(await session.scalar(
            select(func.count()).select_from(AuditLog)
            .where(AuditLog.metadata_key_id != keys.ring.primary_id)) or 0)


async def rotate(db: Database, *, keys: AuditKeys, batch: int = BATCH,
                 progress: Callable[[int], None] | None = None) -> RotationResult:
    """Re-encrypt every row not under the first key; ``progress(n)`` after each batch."""
    primary = keys.ring.primary_id
    rotated = 0
    after = None
    while True:
        async with db.unit_of_work() as session:
            query = (select(AuditLog.id, AuditLog.metadata_key_id, AuditLog.metadata_ciphertext)
                     .where(AuditLog.metadata_key_id != primary).order_by(AuditLog.id).limit(batch))
            if after is not None:
                query = query.where(AuditLog.id > after)
            rows = (await session.execute(query)).all()
            if not rows:
                break
            changes = []
            for row_id, old_kid, blob in rows:
                plaintext = keys.ring.decrypt(old_kid, blob, associated_data(row_id))
                new_kid, new_blob = keys.ring.encrypt(plaintext, associated_data(row_id))
                changes.append({"row_id": row_id, "old_kid": old_kid, "new_kid": new_kid,
                                "blob": new_blob})
            async with maintenance(session, "rotate-key"):
                await session.execute(_reencrypt, changes)
            after = rows[-1].id
        rotated += len(rows)
        if progress is not None:
            progress(len(rows))
    async with db.unit_of_work() as session:
        recorder.record(session, AuditEvent.AUDIT_KEY_ROTATED,
                        actor=SystemActor("cli:audit-rotate-key"),
                        data={"rows": rotated, "key_id": primary})
    return RotationResult(rotated, primary)
