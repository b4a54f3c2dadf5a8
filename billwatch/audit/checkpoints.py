"""Signed checkpoints and their append-only store outside the database.

A checkpoint says "at time T the chain held N rows, the last one (seq N, row id X) with chain
hash H, and the checkpoint before me hashed to P", signed with HMAC-SHA256 under the audit HMAC
key. ``P`` makes the checkpoints a chain of their own (version 2): one missing from the middle
is caught. Only a copy outside the database host — an anchor, :mod:`billwatch.audit.anchors` —
catches the *newest* one going missing together with the rows it covered. Because the key is not in the
database and the files are not either, someone who deletes the newest rows — or rewrites every
hash from the first row on — cannot produce a checkpoint that agrees with the result.

The store is a directory: one file per checkpoint, created with ``O_EXCL`` (never overwritten),
fsynced, made read-only. Point it at storage the database's operators cannot rewrite (a
separate volume, a WORM bucket mount) for the guarantee to hold against them too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

KIND = "billwatch-audit-checkpoint"
VERSION = 2
"""Version 2 signs ``prev_hash``; version 1 files (no checkpoint chain) still verify."""


def sign(key: bytes, payload: dict[str, object]) -> str:
    """HMAC-SHA256 over the canonical JSON of ``payload`` (hex)."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    last_seq: int
    last_id: str | None
    row_count: int
    """Rows in the chain from seq 1 (archived ones included)."""
    batch_rows: int
    """Rows this checkpoint's seal added."""
    head_hash: str
    created_at: str
    signature: str = ""
    kind: str = KIND
    version: int = 1
    prev_hash: str = ""
    """SHA-256 (hex) of the previous checkpoint (:meth:`digest`); empty for the first one."""

    def payload(self) -> dict[str, object]:
        body = asdict(self)
        body.pop("signature")
        if self.version < 2:  # what version 1 signed
            body.pop("prev_hash")
        return body

    def digest(self) -> str:
        """SHA-256 (hex) of the whole signed checkpoint: what the next one commits to."""
        body = {**self.payload(), "signature": self.signature}
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                              .encode()).hexdigest()

    def to_json(self) -> str:
        body = {**self.payload(), "signature": self.signature}
        return json.dumps(body, sort_keys=True, indent=2)

    def signed(self, key: bytes) -> Checkpoint:
        return Checkpoint(**{**asdict(self), "signature": sign(key, self.payload())})

    def valid(self, key: bytes) -> bool:
        return self.kind == KIND and hmac.compare_digest(self.signature, sign(key, self.payload()))

    @property
    def file_name(self) -> str:
        stamp = datetime.fromisoformat(self.created_at).strftime("%Y%m%dT%H%M%S%fZ")
        return f"checkpoint-{self.last_seq:015d}-{stamp}-{self.signature[:12]}.json"

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        return cls.from_fields(json.loads(text))

    @classmethod
    def from_fields(cls, fields: object) -> Checkpoint:
        if not isinstance(fields, dict) or fields.get("kind") != KIND:
            raise ValueError("not a billwatch audit checkpoint")
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    path: Path
    checkpoint: Checkpoint | None
    error: str | None = None


class CheckpointStore:
    """A directory where checkpoints are only ever added."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def write(self, checkpoint: Checkpoint) -> Path:
        """Create the checkpoint's file; refuses to overwrite, survives a crash (fsync)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / checkpoint.file_name
        body = checkpoint.to_json().encode() + b"\n"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            os.write(descriptor, body)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        _fsync_directory(self.directory)
        return path

    def read_all(self) -> list[StoredCheckpoint]:
        """Every checkpoint file, oldest chain position first; unreadable ones carry an error."""
        if not self.directory.is_dir():
            return []
        found: list[StoredCheckpoint] = []
        for path in sorted(self.directory.glob("checkpoint-*.json")):
            try:
                found.append(StoredCheckpoint(path, Checkpoint.from_json(path.read_text())))
            except (OSError, ValueError, TypeError) as error:
                found.append(StoredCheckpoint(path, None, f"unreadable: {error}"))
        return found


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
