"""``billwatch audit verify``: prove the trail is intact, or name the first row that is not.

What is checked, in order:

1. archives (with ``--archive-dir``): each file's signed header, then every row, chained from
   genesis; without it the online chain starts from the newest signed archive manifest;
2. sealed rows in seq order: no seq missing, no sealed row gone, every row's content matching
   its keyed hash, every seal chaining from the previous one, and the chain agreeing with every
   signed checkpoint (the file store outside the database and the database copies);
3. the newest checkpoint is reached: fewer rows than it records means the newest were deleted;
   with ``--anchor`` the newest checkpoint an anchor off the database host holds counts too,
   so deleting the newest checkpoint together with the rows it covered is caught;
4. rows written since the last seal, each against its keyed hash.

A checkpoint file with a bad signature is reported too (after the rows, which name more), and
so is a break in the checkpoint chain: a checkpoint whose predecessor is in neither the store
nor the database, or an anchored checkpoint missing from both.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from billwatch.audit.archive import archive_files, header_valid, manifest_payload, read_archive
from billwatch.audit.chain import GENESIS
from billwatch.audit.checkpoints import Checkpoint, CheckpointStore, sign
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.models import AuditArchive, AuditCheckpoint, AuditLog, AuditSeal
from billwatch.audit.sealing import from_row
from billwatch.audit.streams import Anchor, online_anchor, stream_contents, stream_links
from billwatch.audit.walker import (
    ChainWalker,
    ContentCheck,
    Pin,
    Problem,
    Suspect,
    judge_sealed_content,
    key_problem,
    unsealed_problem,
)
from billwatch.db import Database

__all__ = ["AnchorCopy", "Problem", "VerifyReport", "verify"]


@dataclass(slots=True)
class VerifyReport:
    problem: Problem | None = None
    sealed_rows: int = 0
    unsealed_rows: int = 0
    archived_rows: int = 0
    checkpoints: int = 0
    head_seq: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def rows(self) -> int:
        return self.sealed_rows + self.unsealed_rows + self.archived_rows

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class AnchorCopy:
    """The checkpoints one anchor (a file or a URL) holds, read before verifying."""

    source: str
    checkpoints: Sequence[Checkpoint]


@dataclass(slots=True)
class _Pins:
    by_seq: dict[int, list[Pin]] = field(default_factory=dict)
    files: int = 0
    newest: tuple[int, str] = (0, "")
    problem: Problem | None = None
    local: dict[str, tuple[Checkpoint, str]] = field(default_factory=dict)
    """Every valid checkpoint of the store and the database, by digest (the checkpoint chain)."""

    def add(self, seq: int, head_hex: str, last_id: str | None, source: str) -> None:
        self.by_seq.setdefault(seq, []).append(Pin(bytes.fromhex(head_hex), last_id, source))
        if seq > self.newest[0]:
            self.newest = (seq, source)

    def add_checkpoint(self, checkpoint: Checkpoint, source: str) -> None:
        self.add(checkpoint.last_seq, checkpoint.head_hash, checkpoint.last_id, source)
        self.local.setdefault(checkpoint.digest(), (checkpoint, source))

    def refuse(self, message: str) -> None:
        self.problem = self.problem or Problem("checkpoint", message)


async def verify(db: Database, *, keys: AuditKeys, store: CheckpointStore,
                 archive_dir: Path | None = None,
                 anchors: Sequence[AnchorCopy] = ()) -> VerifyReport:
    """Re-compute the whole trail; the report's ``problem`` names the first break, if any."""
    started = time.perf_counter()
    report = VerifyReport()
    pins = _file_pins(store, keys)
    async with db.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        await _database_pins(conn, keys, pins)
        _checkpoint_chain(pins)
        _anchor_pins(anchors, keys, pins, report)
        report.checkpoints = pins.files
        async with _same_snapshot(db, conn) as second:
            report.problem = await _check((conn, second), keys, pins, archive_dir, report)
    report.problem = report.problem or pins.problem
    report.seconds = time.perf_counter() - started
    return report


@asynccontextmanager
async def _same_snapshot(db: Database, conn: AsyncConnection) -> AsyncIterator[AsyncConnection]:
    """A second connection seeing exactly what ``conn`` sees, so the two passes run at once.

    On PostgreSQL the chain pass (mostly the server's work) and the content pass (mostly
    Python's) then overlap on two cores; SQLite has one reader here and runs them in turn.
    """
    if conn.dialect.name != "postgresql":
        yield conn
        return
    snapshot = (await conn.execute(text("SELECT pg_export_snapshot()"))).scalar_one()
    async with db.engine.connect() as second:
        second = await second.execution_options(isolation_level="REPEATABLE READ")
        await second.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
        yield second


async def _check(conns: tuple[AsyncConnection, AsyncConnection], keys: AuditKeys, pins: _Pins,
                 archive_dir: Path | None, report: VerifyReport) -> Problem | None:
    conn, second = conns
    manifests, problem = await _manifests(conn, keys)
    if problem:
        return problem
    anchor = await online_anchor(conn)
    if archive_dir is not None:
        archived, problem = _walk_archives(archive_dir, keys, pins, manifests)
        report.archived_rows = archived.rows
        if problem:
            return problem
        if archived.last_seq != anchor.seq or archived.chain != anchor.chain:
            return Problem("archive", f"archives in {archive_dir} end at seq {archived.last_seq}, "
                           f"but the online chain resumes after seq {anchor.seq}")
    elif anchor.seq:
        report.notes.append(f"seq 1..{anchor.seq} are archived; pass --archive-dir to re-verify "
                            "them too")
    walker = ChainWalker(keys, seq=anchor.seq, chain=anchor.chain, pins=pins.by_seq,
                         content=False)
    content = ContentCheck(keys)
    if second is conn:
        await stream_links(conn, walker.feed, after=anchor.seq)
        await stream_contents(conn, content.feed)
    else:
        await asyncio.gather(stream_links(conn, walker.feed, after=anchor.seq),
                             stream_contents(second, content.feed))
    walker.finish()
    report.sealed_rows, report.head_seq = walker.rows, walker.last_seq
    chain_problem = walker.problem or _reached_newest(walker, pins)
    report.unsealed_rows = max(0, content.rows - report.sealed_rows)
    return _earliest(chain_problem, await _first_suspect(conn, content.suspects, anchor))


def _earliest(*problems: Problem | None) -> Problem | None:
    """The problem at the lowest seq (rows not yet sealed come after every sealed one)."""
    found = [p for p in problems if p is not None]
    return min(found, key=lambda p: float("inf") if p.seq is None else p.seq, default=None)


async def _first_suspect(conn: AsyncConnection, suspects: list[Suspect],
                         anchor: Anchor) -> Problem | None:
    """Name the earliest row whose content failed, judging it against its neighbours' seals."""
    if not suspects:
        return None
    ids = {_uuid(s.row_id): s for s in suspects if _uuid(s.row_id) is not None}
    placed = (await conn.execute(select(AuditSeal.audit_log_id, AuditSeal.seq)
                                 .where(AuditSeal.audit_log_id.in_(list(ids))))).all() if ids else []
    if not placed:
        return unsealed_problem(suspects[0])
    row_id, seq = min(placed, key=lambda found: found[1])
    suspect = ids[row_id]
    if suspect.reason == "unknown-key":
        return key_problem(suspect, seq)
    around = {found[0]: found for found in (await conn.execute(
        select(AuditSeal.seq, AuditSeal.audit_log_id, AuditSeal.chain_hash, AuditLog.content_hash)
        .outerjoin(AuditLog, AuditLog.id == AuditSeal.audit_log_id)
        .where(AuditSeal.seq.between(seq - 1, seq + 1)))).all()}
    previous = anchor.chain if seq - 1 == anchor.seq else (
        bytes(around[seq - 1][2]) if seq - 1 in around else b"")
    following = around.get(seq + 1)
    return judge_sealed_content(
        _link(seq, suspect.row_id, around[seq]), previous,
        _link(seq + 1, str(following[1]), following) if following else None)


def _link(seq: int, row_id: str, found: Any) -> tuple[Any, ...]:
    stored = None if found[3] is None else bytes(found[3])
    return (seq, str(found[1]), bytes(found[2]), stored, None, None, row_id, None)


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _reached_newest(walker: ChainWalker, pins: _Pins) -> Problem | None:
    newest_seq, source = pins.newest
    if newest_seq > walker.last_seq:
        return Problem("truncated", f"the newest rows were deleted: the chain ends at seq "
                       f"{walker.last_seq}, but the signed {source} records seq {newest_seq}",
                       walker.last_seq + 1, None)
    if walker.last_seq > 0 and pins.files == 0:
        return Problem("checkpoint", "no signed checkpoint in the checkpoint store: deleting the "
                       "newest rows could go unnoticed (run `billwatch audit checkpoint`)")
    return None


def _file_pins(store: CheckpointStore, keys: AuditKeys) -> _Pins:
    pins = _Pins()
    for stored in store.read_all():
        name = stored.path.name
        if stored.checkpoint is None:
            pins.refuse(f"checkpoint file {name} is {stored.error}")
        elif not stored.checkpoint.valid(keys.hmac_key):
            pins.refuse(f"checkpoint file {name} has a bad signature: forged or altered")
        else:
            pins.files += 1
            pins.add_checkpoint(stored.checkpoint, f"checkpoint {name}")
    return pins


async def _database_pins(conn: AsyncConnection, keys: AuditKeys, pins: _Pins) -> None:
    async with AsyncSession(bind=conn) as session:  # joins conn's transaction, never ends it
        rows = list((await session.scalars(select(AuditCheckpoint))).all())
    for row in rows:
        cp = from_row(row)
        if not cp.valid(keys.hmac_key):
            pins.refuse(f"the database copy of checkpoint {row.file_name} has a bad signature")
        else:
            pins.add_checkpoint(cp, f"checkpoint {row.file_name} (db copy)")


def _checkpoint_chain(pins: _Pins) -> None:
    """Each version-2 checkpoint's predecessor must still exist, in the store or the database."""
    ordered = sorted(pins.local.values(), key=lambda found: (found[0].last_seq,
                                                             found[0].created_at))
    for index, (checkpoint, source) in enumerate(ordered):
        if checkpoint.version < 2:
            continue
        if checkpoint.prev_hash and checkpoint.prev_hash not in pins.local:
            pins.refuse(f"the checkpoint chain is broken: {source} follows a checkpoint that is "
                        "in neither the checkpoint store nor the database (deleted)")
            return
        if not checkpoint.prev_hash and index > 0:
            pins.refuse(f"the checkpoint chain is broken: {source} starts a new chain after "
                        f"{index} older checkpoint(s) (their database copies were deleted)")
            return


def _anchor_pins(anchors: Sequence[AnchorCopy], keys: AuditKeys, pins: _Pins,
                 report: VerifyReport) -> None:
    """Anchored checkpoints pin the chain like local ones, and must still exist locally."""
    for anchor in anchors:
        for checkpoint in anchor.checkpoints:
            source = f"checkpoint {checkpoint.file_name} from the anchor {anchor.source}"
            if not checkpoint.valid(keys.hmac_key):
                pins.refuse(f"{source} has a bad signature: forged, altered or another key's")
                continue
            pins.add(checkpoint.last_seq, checkpoint.head_hash, checkpoint.last_id, source)
            if checkpoint.digest() not in pins.local:
                pins.refuse(f"{source} is in neither the checkpoint store nor the database: "
                            "a signed checkpoint was deleted")
        report.notes.append(f"anchor {anchor.source}: {len(anchor.checkpoints)} checkpoint(s), "
                            f"newest seq {max((c.last_seq for c in anchor.checkpoints), default=0)}")


async def _manifests(conn: AsyncConnection, keys: AuditKeys) -> tuple[list[AuditArchive], Problem | None]:
    """Archive manifests, each signed and each continuing the previous one."""
    async with AsyncSession(bind=conn) as session:  # joins conn's transaction, never ends it
        rows = list((await session.scalars(
            select(AuditArchive).order_by(AuditArchive.first_seq))).all())
    previous = Anchor(0, b"")
    for manifest in rows:
        expected = sign(keys.hmac_key, manifest_payload(manifest))
        if bytes(manifest.signature).hex() != expected:
            return rows, Problem("archive", f"archive manifest for {manifest.file_name} has a bad "
                                 "signature: forged or altered")
        if manifest.first_seq != previous.seq + 1 or (
                previous.chain and bytes(manifest.prev_hash) != previous.chain):
            return rows, Problem("archive", f"archive manifest for {manifest.file_name} does not "
                                 f"continue the previous archive (seq {previous.seq})")
        previous = Anchor(manifest.last_seq, bytes(manifest.head_hash))
    return rows, None


def _walk_archives(directory: Path, keys: AuditKeys, pins: _Pins,
                   manifests: list[AuditArchive]) -> tuple[ChainWalker, Problem | None]:
    """Walk every archive file from genesis as one chain."""
    walker = ChainWalker(keys, seq=0, chain=GENESIS, pins=pins.by_seq)
    heads: dict[int, str] = {}
    for path in archive_files(directory):
        header, batches = read_archive(path)
        if not header_valid(header, keys.hmac_key):
            return walker, Problem("archive", f"archive {path.name} has a bad header signature")
        if header["first_seq"] != walker.expected or header["prev_hash"] != walker.chain.hex():
            return walker, Problem("archive", f"archive {path.name} does not continue the chain "
                                   f"at seq {walker.expected} (missing or extra archive)")
        for rows in batches:
            if not walker.feed(rows):
                break
        walker.finish()
        if walker.problem:
            return walker, Problem(walker.problem.kind, f"{path.name}: {walker.problem.message}",
                                   walker.problem.seq, walker.problem.row_id)
        if walker.last_seq != header["last_seq"] or walker.chain.hex() != header["head_hash"]:
            return walker, Problem("archive", f"archive {path.name} ends short of its header")
        heads[walker.last_seq] = walker.chain.hex()
    for manifest in manifests:
        if heads.get(manifest.last_seq) != bytes(manifest.head_hash).hex():
            return walker, Problem("archive", f"archive {manifest.file_name} (seq "
                                   f"{manifest.first_seq}..{manifest.last_seq}) is missing from "
                                   f"{directory}")
    return walker, None
