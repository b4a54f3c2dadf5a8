"""``billwatch audit archive --month YYYY-MM``: one whole sealed month out, its partition dropped.

The archive file and its signed manifest are the ones :mod:`billwatch.audit.archive` writes:
the month leaves the database as a *prefix of the chain* (seq anchor+1..K, K the month's last
seal), so ``verify`` afterwards starts from the month's last seal, exactly as after a
``--before`` archive. Steps:

1. refuse unless the month ended more than 90 days ago and every older month still online is
   archived (rows dated in a month already archived, which only the DEFAULT partition can
   hold, do not count);
2. seal, then refuse if any row of the month is still unsealed;
3. write the file from the chain anchor through K, re-read it and verify it against the chain;
4. in one transaction: on PostgreSQL lock ``audit_logs`` and the month's partition, check the
   partition holds exactly the rows written, DETACH and DROP it (no row-by-row DELETE), delete
   the *strays* (rows of other months that were sealed inside the month's span: a transaction
   that committed across the month's end, a row dated far ahead), delete the span's seals, and
   insert the signed manifest and the ``audit.archived`` row; on SQLite delete the span's rows
   as ``--before`` does;
5. on PostgreSQL, VACUUM ``audit_seals`` so the deleted seals' space is reused by new seals.

If step 4 refuses, the file is removed again and nothing in the database changed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Table, and_, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from billwatch.accounts.actor import SystemActor
from billwatch.audit import recorder
from billwatch.audit.archive import (
    MINIMUM_ONLINE,
    ArchiveRefused,
    ArchiveResult,
    _delete_archived,
    _header,
    _verify_file,
    _write_file,
    signed_manifest,
)
from billwatch.audit.checkpoints import CheckpointStore
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.events import AuditEvent
from billwatch.audit.maintenance import maintenance
from billwatch.audit.models import AuditArchive, AuditLog, AuditSeal
from billwatch.audit.partitions import Month, partitions
from billwatch.audit.sealing import seal
from billwatch.audit.streams import Anchor, online_anchor
from billwatch.db import Database, utcnow

LOCK_TIMEOUT = "30s"
"""How long the final transaction waits for the trail's lock before giving up (retry later)."""
STRAYS_BATCH = 1000


@dataclass(frozen=True, slots=True)
class MonthArchive:
    archive: ArchiveResult
    month: Month
    month_rows: int
    strays: int
    """Rows of other months archived with this one (they sat inside its span of the chain)."""
    partition_dropped: str | None


@dataclass(frozen=True, slots=True)
class _Plan:
    last_seq: int
    month_rows: int
    strays: list[uuid.UUID]


async def archive_month(db: Database, *, keys: AuditKeys, store: CheckpointStore,
                        directory: Path, month: Month,
                        now: datetime | None = None) -> MonthArchive | None:
    """Archive every row of ``month``; None when the month has no rows."""
    now = now or utcnow()
    if month.end > now - MINIMUM_ONLINE:
        raise ArchiveRefused(f"refusing to archive {month}: rows after "
                             f"{(now - MINIMUM_ONLINE):%Y-%m-%d} must stay online (90 days)")
    await seal(db, keys=keys, store=store)
    async with db.engine.connect() as conn:
        partition = await _partition(conn, month)
        anchor = await online_anchor(conn)
        plan = await _plan(conn, anchor, month)
        if plan is None:
            return None
        head = (await conn.execute(select(AuditSeal.chain_hash).where(
            AuditSeal.seq == plan.last_seq))).scalar_one()
        header = _header(anchor, plan.last_seq, bytes(head), month.end, now, keys, str(month))
        path = await _write_file(conn, keys, directory, header, anchor)
    try:
        await _verify_file(path, keys, anchor)
        if partition is None:
            await _delete_archived(db, keys, header, path)
        else:
            await _drop_partition(db, keys, header, path, plan, partition)
    except BaseException:
        path.unlink(missing_ok=True)  # no manifest names it: it must not look like an archive
        raise
    if partition is not None:
        await _vacuum_seals(db)
    result = ArchiveResult(path, anchor.seq + 1, plan.last_seq, plan.last_seq - anchor.seq)
    return MonthArchive(result, month, plan.month_rows, len(plan.strays), partition)


async def _partition(conn: AsyncConnection, month: Month) -> str | None:
    """The month's partition on PostgreSQL (refused if missing), None on SQLite."""
    if conn.dialect.name != "postgresql":
        return None
    if month.partition not in await partitions(conn):
        raise ArchiveRefused(f"audit_logs has no partition for {month}; nothing to detach")
    return month.partition


async def _plan(conn: AsyncConnection, anchor: Anchor, month: Month) -> _Plan | None:
    in_month = and_(AuditLog.occurred_at >= month.start, AuditLog.occurred_at < month.end)
    archived_before = (await conn.execute(select(func.max(AuditArchive.before)))).scalar()
    earlier = select(func.min(AuditLog.occurred_at)).where(AuditLog.occurred_at < month.start)
    if archived_before is not None:
        earlier = earlier.where(AuditLog.occurred_at >= archived_before)
    oldest = (await conn.execute(earlier)).scalar()
    if oldest is not None:
        raise ArchiveRefused(f"rows of {Month.of(oldest)} are still online: archive that month "
                             f"before {month}")
    rows, sealed, first_seq, last_seq = (await conn.execute(
        select(func.count(), func.count(AuditSeal.seq), func.min(AuditSeal.seq),
               func.max(AuditSeal.seq))
        .select_from(AuditLog).outerjoin(AuditSeal, AuditSeal.audit_log_id == AuditLog.id)
        .where(in_month))).one()
    if rows == 0:
        return None
    if sealed != rows:
        raise ArchiveRefused(f"{rows - sealed} row(s) of {month} are not sealed yet (still "
                             "being written?); try again")
    if first_seq <= anchor.seq:
        raise ArchiveRefused(f"rows of {month} at seq {first_seq} are already archived")
    strays: list[uuid.UUID] = []
    if last_seq - anchor.seq != rows:
        strays = list((await conn.execute(
            select(AuditSeal.audit_log_id).where(
                AuditSeal.seq > anchor.seq, AuditSeal.seq <= last_seq,
                ~select(AuditLog.id).where(AuditLog.id == AuditSeal.audit_log_id, in_month)
                .exists()))).scalars())
    return _Plan(int(last_seq), int(rows), strays)


async def _drop_partition(db: Database, keys: AuditKeys, header: dict[str, Any], path: Path,
                          plan: _Plan, partition: str) -> None:
    """Detach and drop the month, delete strays and seals, record the manifest: one transaction."""
    manifest = signed_manifest(keys, header, path)
    span = {"first": header["first_seq"], "last": header["last_seq"]}
    async with db.unit_of_work() as session:
        await session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        await session.execute(text(f"LOCK TABLE audit_logs, {partition} IN ACCESS EXCLUSIVE MODE"))
        present = (await session.execute(text(f"SELECT count(*) FROM {partition}"))).scalar_one()
        if present != plan.month_rows:
            raise ArchiveRefused(f"{partition} holds {present} rows, {plan.month_rows} were "
                                 "archived: rows changed meanwhile; nothing was removed")
        await session.execute(text(f"ALTER TABLE audit_logs DETACH PARTITION {partition}"))
        await session.execute(text(f"DROP TABLE {partition}"))
        async with maintenance(session, "archive"):
            await _delete_strays(session, plan.strays)
            await session.execute(text(
                "DELETE FROM audit_seals WHERE seq BETWEEN :first AND :last"), span)
        session.add(manifest)
        recorder.record(session, AuditEvent.AUDIT_ARCHIVED, actor=SystemActor("cli:audit-archive"),
                        data={**span, "rows": header["row_count"], "file": path.name,
                              "before": header["before"], "month": header["month"],
                              "partition": partition, "strays": len(plan.strays)})


async def _delete_strays(session: AsyncSession, strays: list[uuid.UUID]) -> None:
    table = cast(Table, AuditLog.__table__)
    deleted = 0
    for start in range(0, len(strays), STRAYS_BATCH):
        result = await session.execute(
            table.delete().where(table.c.id.in_(strays[start:start + STRAYS_BATCH])))
        deleted += cast(CursorResult[Any], result).rowcount
    if deleted != len(strays):
        raise ArchiveRefused(f"{len(strays) - deleted} row(s) of the archived span vanished "
                             "meanwhile; nothing was removed")


async def _vacuum_seals(db: Database) -> None:
    """Let new seals reuse the deleted seals' space (VACUUM cannot run inside a transaction)."""
    async with db.engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM (ANALYZE) audit_seals"))
