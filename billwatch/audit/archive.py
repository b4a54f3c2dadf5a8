"""Retention: move the oldest sealed rows to compressed, verifiable archive files.

PCI DSS 10.5.1 asks for 12 months of history with 3 immediately available. billwatch keeps
``BILLWATCH_AUDIT_RETENTION_DAYS`` (default 365, never below 90) online; ``billwatch audit
archive --before DATE`` moves an oldest *prefix of the chain* (seq 1..K, every row of which
happened before DATE) to one gzip JSONL file:

* line 1 is the signed header: seq range, row count, the chain hash before the first row and
  at the last, the cut-off and time;
* every other line is one *row line* exactly as the verifier reads it from the database
  (:mod:`billwatch.audit.streams`): seq, chain hash, row hash, key id, ciphertext (metadata
  stays encrypted at rest) and the canonical column text, tab-separated.

The file is written under a temporary name, re-read and verified, linked into place without
overwriting anything, and only then are the rows deleted — through the maintenance path, in the
same transaction that inserts the signed manifest (``audit_archives``) from which the online
chain resumes. ``billwatch audit verify --archive-dir`` walks archives then table as one chain.
Archived metadata needs the key that sealed it: keep retired keys in the ring (they only
decrypt) as long as archives under them are kept.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from billwatch.accounts.actor import SystemActor
from billwatch.audit import recorder
from billwatch.audit.checkpoints import CheckpointStore, sign
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.events import AuditEvent
from billwatch.audit.maintenance import maintenance
from billwatch.audit.models import AuditArchive, AuditLog, AuditSeal
from billwatch.audit.sealing import seal
from billwatch.audit.streams import Anchor, online_anchor, stream_sealed
from billwatch.audit.walker import ChainWalker
from billwatch.db import Database, utcnow

KIND = "billwatch-audit-archive"
MINIMUM_ONLINE = timedelta(days=90)


class ArchiveRefused(Exception):
    """The archive would break a retention rule or the chain; nothing was changed."""


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    path: Path
    first_seq: int
    last_seq: int
    rows: int


def header_payload(header: dict[str, Any]) -> dict[str, object]:
    return {k: v for k, v in header.items() if k != "signature"}


def header_valid(header: dict[str, Any], key: bytes) -> bool:
    return header.get("kind") == KIND and hmac.compare_digest(
        str(header.get("signature", "")), sign(key, header_payload(header)))


def manifest_payload(manifest: AuditArchive) -> dict[str, object]:
    return {"first_seq": manifest.first_seq, "last_seq": manifest.last_seq,
            "row_count": manifest.row_count, "prev_hash": manifest.prev_hash.hex(),
            "head_hash": manifest.head_hash.hex(), "before": manifest.before.isoformat(),
            "created_at": manifest.created_at.isoformat(), "file_name": manifest.file_name,
            "file_sha256": manifest.file_sha256.hex(),
            **({"month": manifest.month} if manifest.month is not None else {})}


def read_archive(path: Path, batch: int = 5000) -> tuple[dict[str, Any], Iterator[list[bytes]]]:
    """The header of an archive file and its row lines, batch by batch."""
    with gzip.open(path, "rb") as handle:
        header: dict[str, Any] = json.loads(handle.readline())
    return header, _archived_lines(path, batch)


def _archived_lines(path: Path, batch: int) -> Iterator[list[bytes]]:
    with gzip.open(path, "rb") as handle:
        handle.readline()
        lines: list[bytes] = []
        for line in handle:
            lines.append(line.rstrip(b"\n"))
            if len(lines) >= batch:
                yield lines
                lines = []
        if lines:
            yield lines


def archive_files(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob("audit-*.jsonl.gz"))


async def archive(db: Database, *, keys: AuditKeys, store: CheckpointStore, directory: Path,
                  before: datetime, now: datetime | None = None) -> ArchiveResult | None:
    """Archive the chain prefix before ``before``; None when nothing is old enough."""
    now = now or utcnow()
    if before > now - MINIMUM_ONLINE:
        raise ArchiveRefused(f"refusing to archive rows after {(now - MINIMUM_ONLINE):%Y-%m-%d}: "
                             "the last 90 days must stay online")
    await seal(db, keys=keys, store=store)
    async with db.engine.connect() as conn:
        anchor = await online_anchor(conn)
        last_seq = await _last_archivable(conn, anchor, before)
        if last_seq <= anchor.seq:
            return None
        head = (await conn.execute(text("SELECT chain_hash FROM audit_seals WHERE seq = :seq"),
                                   {"seq": last_seq})).scalar_one()
        header = _header(anchor, last_seq, bytes(head), before, now, keys)
        path = await _write_file(conn, keys, directory, header, anchor)
    await _verify_file(path, keys, anchor)
    await _delete_archived(db, keys, header, path)
    return ArchiveResult(path, anchor.seq + 1, last_seq, last_seq - anchor.seq)


async def _last_archivable(conn: AsyncConnection, anchor: Anchor, before: datetime) -> int:
    """The largest K such that every sealed row up to seq K happened before ``before``."""
    first_young = (await conn.execute(
        select(func.min(AuditSeal.seq)).join(AuditLog, AuditLog.id == AuditSeal.audit_log_id)
        .where(AuditLog.occurred_at >= before, AuditSeal.seq > anchor.seq))).scalar()
    if first_young is not None:
        return int(first_young) - 1
    newest = (await conn.execute(select(func.max(AuditSeal.seq)))).scalar()
    return int(newest or 0)


def _header(anchor: Anchor, last_seq: int, head: bytes, before: datetime, now: datetime,
            keys: AuditKeys, month: str | None = None) -> dict[str, Any]:
    header: dict[str, Any] = {
        "kind": KIND, "version": 1, "first_seq": anchor.seq + 1, "last_seq": last_seq,
        "row_count": last_seq - anchor.seq, "prev_hash": anchor.chain.hex(),
        "head_hash": head.hex(), "before": before.isoformat(), "created_at": now.isoformat()}
    if month is not None:
        header["month"] = month
    header["signature"] = sign(keys.hmac_key, header_payload(header))
    return header


async def _write_file(conn: AsyncConnection, keys: AuditKeys, directory: Path, header: dict[str, Any],
                      anchor: Anchor) -> Path:
    """Write rows while walking their chain; the file appears only once complete."""
    _make_directory(directory)
    final = directory / f"audit-{header['first_seq']:015d}-{header['last_seq']:015d}.jsonl.gz"
    partial = final.with_suffix(".partial")
    walker = ChainWalker(keys, seq=anchor.seq, chain=anchor.chain)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as out:
            out.write(json.dumps(header, sort_keys=True).encode() + b"\n")

            def write(lines: list[bytes]) -> bool:
                if not walker.feed(lines):
                    return False
                out.write(b"\n".join(lines) + b"\n")
                return True

            await stream_sealed(conn, write, after=anchor.seq, through=header["last_seq"])
            walker.finish()
            out.flush()
            raw.flush()
            os.fsync(raw.fileno())
        if walker.problem is not None:
            raise ArchiveRefused(f"the chain is broken, run `billwatch audit verify`: "
                                 f"{walker.problem.message}")
        if walker.last_seq != header["last_seq"] or walker.chain.hex() != header["head_hash"]:
            raise ArchiveRefused("the rows to archive changed while they were being written")
        os.link(partial, final)
        os.chmod(final, 0o444)
    finally:
        partial.unlink(missing_ok=True)
    return final


def _make_directory(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)


def _file_sha256(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


async def _verify_file(path: Path, keys: AuditKeys, anchor: Anchor) -> None:
    header, batches = read_archive(path)
    walker = ChainWalker(keys, seq=anchor.seq, chain=anchor.chain)
    for rows in batches:
        if not walker.feed(rows):
            break
    walker.finish()
    if not header_valid(header, keys.hmac_key) or walker.problem is not None or (
            walker.chain.hex() != header["head_hash"]):
        raise ArchiveRefused(f"archive {path.name} did not verify after writing; rows kept")


def signed_manifest(keys: AuditKeys, header: dict[str, Any], path: Path) -> AuditArchive:
    """The manifest row of a written archive file, signed like the file's header."""
    manifest = AuditArchive(
        first_seq=header["first_seq"], last_seq=header["last_seq"],
        row_count=header["row_count"], prev_hash=bytes.fromhex(header["prev_hash"]),
        head_hash=bytes.fromhex(header["head_hash"]),
        before=datetime.fromisoformat(header["before"]),
        created_at=datetime.fromisoformat(header["created_at"]), file_name=path.name,
        file_sha256=_file_sha256(path), signature=b"", month=header.get("month"))
    manifest.signature = bytes.fromhex(sign(keys.hmac_key, manifest_payload(manifest)))
    return manifest


async def _delete_archived(db: Database, keys: AuditKeys, header: dict[str, Any],
                           path: Path) -> None:
    """Delete the archived rows and record the signed manifest, in one transaction."""
    span = {"first": header["first_seq"], "last": header["last_seq"]}
    manifest = signed_manifest(keys, header, path)
    async with db.unit_of_work() as session:
        async with maintenance(session, "archive"):
            await session.execute(text(
                "DELETE FROM audit_logs WHERE id IN (SELECT audit_log_id FROM audit_seals "
                "WHERE seq BETWEEN :first AND :last)"), span)
            await session.execute(text(
                "DELETE FROM audit_seals WHERE seq BETWEEN :first AND :last"), span)
        session.add(manifest)
        recorder.record(session, AuditEvent.AUDIT_ARCHIVED, actor=SystemActor("cli:audit-archive"),
                        data={**span, "rows": header["row_count"], "file": path.name,
                              "before": header["before"]})
