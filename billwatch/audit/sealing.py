"""The sealer: gives unsealed rows their place in the chain, then signs a checkpoint.

Writers never wait for one another: a request only INSERTs its row with a content hash. The
sealer — ``billwatch audit checkpoint``, run hourly by the scheduler and on demand — takes the
rows not yet sealed, in (occurred_at, id) order, numbers them after the current head and chains
their hashes into ``audit_seals``, all in one transaction. After that commits it writes the
signed checkpoint to the store outside the database (and keeps a copy in
``audit_checkpoints``, written in the same transaction as the seals), and only then — no
transaction open — sends it to the configured anchors off the database host. Each checkpoint
signs the digest of the one before it (a checkpoint chain).

It runs as its own database role when ``BILLWATCH_AUDIT_SEALER_DATABASE_URL`` is set: the
service role may then not write seals or checkpoints at all (:mod:`billwatch.audit.roles`).

Two sealers at once: on PostgreSQL an advisory lock makes the second wait; on SQLite (one
writer anyway) the unique seq / row id constraints make the loser fail, and it retries once.
A row whose transaction commits after a seal, with an earlier ``occurred_at``, is simply
sealed by the next run: the chain records sealing order, not event time.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, exists, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from billwatch.audit import crypto
from billwatch.audit.anchors import CheckpointAnchor, anchors_for, send_to_anchors
from billwatch.audit.chain import GENESIS, chain_step
from billwatch.audit.checkpoints import VERSION, Checkpoint, CheckpointStore
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.models import AuditArchive, AuditCheckpoint, AuditLog, AuditSeal
from billwatch.config import Settings
from billwatch.db import Database, utcnow

_SEALS_INSERT = insert(cast(Table, AuditSeal.__table__))
"""A plain Core insert: the ORM's bulk path costs more than the chain itself."""
SEAL_LOCK = 0x6277_6175_6469_74  # "bwaudit": the advisory lock key sealers share
BATCH = 5000


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    chain_hash: bytes
    row_id: str | None


@dataclass(frozen=True, slots=True)
class SealResult:
    checkpoint: Checkpoint
    path: Path
    sealed: int


async def chain_head(session: AsyncSession) -> Head:
    """The newest seal, or the archive anchor the online chain resumes from, or genesis."""
    seal = (await session.execute(
        select(AuditSeal.seq, AuditSeal.chain_hash, AuditSeal.audit_log_id)
        .order_by(AuditSeal.seq.desc()).limit(1))).first()
    if seal is not None:
        return Head(seal.seq, seal.chain_hash, str(seal.audit_log_id))
    archive = (await session.execute(
        select(AuditArchive.last_seq, AuditArchive.head_hash)
        .order_by(AuditArchive.last_seq.desc()).limit(1))).first()
    if archive is not None:
        return Head(archive.last_seq, archive.head_hash, None)
    return Head(0, GENESIS, None)


async def seal(db: Database, *, keys: AuditKeys, store: CheckpointStore,
               anchors: Sequence[CheckpointAnchor] = ()) -> SealResult:
    """Seal every unsealed row, then write a signed checkpoint of the new head and anchor it."""
    result = await _seal(db, keys=keys, store=store, anchors=anchors, skip_empty=False)
    assert result is not None  # only a skip_empty seal finds nothing to do
    return result


async def _seal(db: Database, *, keys: AuditKeys, store: CheckpointStore,
                anchors: Sequence[CheckpointAnchor], skip_empty: bool) -> SealResult | None:
    try:
        checkpoint = await _seal_once(db, keys, skip_empty=skip_empty)
    except IntegrityError:  # another sealer won the race on SQLite; its seals are now visible
        checkpoint = await _seal_once(db, keys, skip_empty=skip_empty)
    if checkpoint is None:
        return None
    path = store.write(checkpoint)
    metrics = db.runtime.metrics if db.runtime is not None else None
    await send_to_anchors(checkpoint, anchors, metrics)  # after the commit and file: no tx open
    return SealResult(checkpoint, path, checkpoint.batch_rows)


async def checkpoint(db: Database, settings: Settings) -> SealResult:
    """What the hourly job runs: seal with the configured keys, store and anchors, as the
    sealer role when one is configured."""
    result = await _configured(db, settings, skip_empty=False)
    assert result is not None
    return result


async def checkpoint_new_rows(db: Database, settings: Settings) -> SealResult | None:
    """What the frequent schedule runs: the same, but nothing when no row waits."""
    return await _configured(db, settings, skip_empty=True)


async def _configured(db: Database, settings: Settings, *, skip_empty: bool) -> SealResult | None:
    sealer = sealer_database(db, settings)
    try:
        return await _seal(sealer, keys=crypto.keys_for(settings),
                           store=CheckpointStore(settings.audit_checkpoint_dir),
                           anchors=anchors_for(settings), skip_empty=skip_empty)
    finally:
        if sealer is not db:
            await sealer.dispose()


def sealer_database(db: Database, settings: Settings) -> Database:
    """The database as the sealer role (its own URL), or ``db`` when none is configured."""
    url = settings.audit_sealer_database_url
    return Database(url.get_secret_value(), runtime=db.runtime) if url is not None else db


def seal_period(moment: datetime, interval_seconds: int) -> str:
    """The schedule slot ``moment`` falls in (UTC, floored to the interval): one seal each."""
    epoch = int(moment.timestamp())
    start = datetime.fromtimestamp(epoch - epoch % interval_seconds, tz=moment.tzinfo)
    return start.strftime("%Y-%m-%dT%H:%M:%S")


async def newest_checkpoint(session: AsyncSession) -> Checkpoint | None:
    """The newest checkpoint's database copy, rebuilt as signed (what the next one chains to)."""
    row = (await session.scalars(select(AuditCheckpoint).order_by(
        AuditCheckpoint.last_seq.desc(), AuditCheckpoint.created_at.desc()).limit(1))).first()
    return None if row is None else from_row(row)


def from_row(row: AuditCheckpoint) -> Checkpoint:
    """The signed checkpoint a database copy stands for."""
    return Checkpoint(last_seq=row.last_seq, last_id=str(row.last_id) if row.last_id else None,
                      row_count=row.row_count, batch_rows=row.batch_rows,
                      head_hash=bytes(row.head_hash).hex(), created_at=row.created_at.isoformat(),
                      signature=bytes(row.signature).hex(), version=row.version,
                      prev_hash=bytes(row.prev_hash).hex() if row.prev_hash else "")


async def _seal_once(db: Database, keys: AuditKeys, *, skip_empty: bool) -> Checkpoint | None:
    async with db.unit_of_work() as session:
        if db.dialect == "postgresql":
            await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEAL_LOCK})
        previous = await newest_checkpoint(session)
        head = await chain_head(session)
        start_seq = head.seq
        head = await _seal_unsealed(db, session, head)
        if skip_empty and previous is not None and head.seq == start_seq:
            return None
        now = utcnow()
        prev_hash = previous.digest() if previous is not None else ""
        checkpoint = Checkpoint(
            last_seq=head.seq, last_id=head.row_id, row_count=head.seq,
            batch_rows=head.seq - start_seq, head_hash=head.chain_hash.hex(),
            created_at=now.isoformat(), version=VERSION,
            prev_hash=prev_hash).signed(keys.hmac_key)
        session.add(AuditCheckpoint(
            last_seq=checkpoint.last_seq,
            last_id=None if head.row_id is None else uuid.UUID(head.row_id),
            row_count=checkpoint.row_count, batch_rows=checkpoint.batch_rows,
            head_hash=head.chain_hash, created_at=now,
            signature=bytes.fromhex(checkpoint.signature), file_name=checkpoint.file_name,
            version=VERSION, prev_hash=bytes.fromhex(prev_hash) if prev_hash else None))
    return checkpoint


def not_sealed() -> ColumnElement[bool]:
    """An audit row no seal names yet: what the sealer chains next."""
    return ~exists().where(AuditSeal.audit_log_id == AuditLog.id)


async def count_unsealed(reader: AsyncSession | AsyncConnection) -> int:
    """How many audit rows wait for their place in the seal chain (the sealer's own test)."""
    count = await reader.scalar(select(func.count()).select_from(AuditLog).where(not_sealed()))
    return int(count or 0)


async def _seal_unsealed(db: Database, session: AsyncSession, head: Head) -> Head:
    """Stream unsealed rows on a second connection and chain them in ``session``'s transaction.

    Streaming keeps memory flat however many rows wait (a first seal after an import may meet
    millions); the reader starts after the lock is held, so it sees every earlier seal.
    """
    unsealed = (select(AuditLog.id, AuditLog.content_hash)
                .where(not_sealed())
                .order_by(AuditLog.occurred_at, AuditLog.id))
    seq, chain_hash, row_id = head.seq, head.chain_hash, head.row_id
    sealed_at = utcnow()
    async with db.engine.connect() as reader:
        result = await reader.stream(unsealed.execution_options(yield_per=BATCH))
        async for rows in result.partitions(BATCH):
            seals: list[dict[str, Any]] = []
            for log_id, content_hash in rows:
                seq += 1
                chain_hash = chain_step(chain_hash, content_hash)
                seals.append({"seq": seq, "audit_log_id": log_id, "chain_hash": chain_hash,
                              "sealed_at": sealed_at})
                row_id = str(log_id)
            await session.execute(_SEALS_INSERT, seals)
    return Head(seq, chain_hash, row_id)
