"""The chain walker: re-computes row hashes and the chain, fast, and names the first break.

Rows arrive as plain tuples — ``(seq, sealed row id, chain hash, stored row hash, key id,
ciphertext, row id, column text)`` — from the database or from an archive file alike (see
:mod:`billwatch.audit.streams`). The hot loop converts nothing: it decrypts, hashes the
canonical bytes, compares, chains.
Anything odd stops the fast path; the few rows after it are then looked at slowly to say what
happened (changed, deleted, inserted, re-ordered), because "hash mismatch at row 81,233" is not
something an auditor can act on.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from binascii import unhexlify
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from billwatch.audit.chain import FORMAT, chain_step
from billwatch.audit.crypto import NONCE_BYTES, AuditKeys
from billwatch.audit.streams import ID_LENGTH, NULL, Row, parse_line

LOOKAHEAD = 32
SEQ, SEALED_ID, CHAIN, STORED_HASH, KEY_ID, CIPHERTEXT, ROW_ID, COLUMNS = range(8)


@dataclass(frozen=True, slots=True)
class Problem:
    """The first thing wrong with the trail; ``kind`` is one of the words in its message."""

    kind: str
    message: str
    seq: int | None = None
    row_id: str | None = None


@dataclass(frozen=True, slots=True)
class Pin:
    """What a signed checkpoint (or archive header) says the chain looks like at one seq."""

    head_hash: bytes
    last_id: str | None
    source: str


class ChainWalker:
    """Walks sealed rows in seq order from an anchor (genesis, or the archived prefix)."""

    def __init__(self, keys: AuditKeys, *, seq: int, chain: bytes,
                 pins: Mapping[int, list[Pin]] | None = None) -> None:
        self.expected = seq + 1
        self.chain = chain
        self.rows = 0
        self.problem: Problem | None = None
        self.pins = pins or {}
        self._ciphers: dict[bytes, AESGCM] = {
            kid.encode(): cipher for kid, _ in keys.ring.keys
            if (cipher := keys.ring.cipher(kid)) is not None}
        self._mac = hmac.new(keys.hmac_key, digestmod=hashlib.sha256)
        self._suspect: tuple[str, Row] | None = None
        self._ahead: list[Row] = []

    @property
    def last_seq(self) -> int:
        return self.expected - 1

    def feed(self, lines: Iterable[bytes]) -> bool:
        """Check row lines; False once a problem is found (the walk should stop).

        The hot loop: split off six fields, decrypt, HMAC the canonical bytes as received,
        compare, chain. Anything unexpected hands the row to the slow path.
        """
        if self.problem is not None:
            return False
        iterator = iter(lines)
        if self._suspect is not None:
            return self._collect(iterator)
        sha256, ciphers, base, pins = hashlib.sha256, self._ciphers, self._mac, self.pins
        expected, chain = self.expected, self.chain
        for line in iterator:
            seq, _sealed, sealed_chain, stored, kid, blob, columns = line.split(b"\t", 6)
            if int(seq) != expected or columns.startswith(NULL):
                self._advance(expected, chain)
                self.problem = _missing(parse_line(line), expected)
                return False
            try:
                ciphertext = unhexlify(blob)
                plain = ciphers[kid].decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:],
                                             columns[:ID_LENGTH])
            except (InvalidTag, KeyError, ValueError):
                return self._suspend("content", line, expected, chain, iterator)
            state = base.copy()
            state.update(FORMAT + columns + b"\n" + plain)
            mac = state.digest()
            if mac != unhexlify(stored):
                return self._suspend("content", line, expected, chain, iterator)
            next_chain = sha256(chain + mac).digest()
            if next_chain != unhexlify(sealed_chain):
                return self._suspend("chain", line, expected, chain, iterator)
            chain = next_chain
            if expected in pins and not self._pinned(expected, chain,
                                                     columns[:ID_LENGTH].decode()):
                self._advance(expected, chain)
                return False
            expected += 1
        self._advance(expected, chain)
        return True

    def _advance(self, expected: int, chain: bytes) -> None:
        self.rows += expected - self.expected
        self.expected, self.chain = expected, chain

    def _pinned(self, seq: int, chain: bytes, row_id: str) -> bool:
        for pin in self.pins[seq]:
            if pin.head_hash != chain or (pin.last_id and pin.last_id != row_id):
                self.expected, self.chain = seq, chain
                shown = _show(row_id)
                self.problem = Problem(
                    "rewritten", f"the chain at seq {seq} (row {shown}) disagrees with the "
                    f"signed {pin.source}: rows up to it were changed, removed or re-ordered and "
                    "their hashes re-computed", seq, shown)
                return False
        return True

    def finish(self) -> None:
        """Call when the rows run out, so a suspicion at the very end is still judged."""
        if self._suspect is not None and self.problem is None:
            self._diagnose()

    def row_hash(self, row: Row) -> bytes | None:
        """The row's HMAC re-computed from its content, or None if its metadata won't open."""
        cipher = self._ciphers.get((row[KEY_ID] or "").encode())
        blob, row_id = row[CIPHERTEXT], row[ROW_ID]
        if cipher is None or row_id is None or blob is None:
            return None
        try:
            plain = cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], row_id.encode())
        except (InvalidTag, ValueError):
            return None
        state = self._mac.copy()
        state.update(FORMAT + row[COLUMNS] + b"\n" + plain)
        return state.digest()

    # --- the slow path: what exactly happened -------------------------------------------------

    def _suspend(self, kind: str, line: bytes, expected: int, chain: bytes,
                 rest: Iterator[bytes]) -> bool:
        self._advance(expected, chain)
        self._suspect = (kind, parse_line(line))
        return self._collect(rest)

    def _collect(self, lines: Iterator[bytes]) -> bool:
        for line in lines:
            self._ahead.append(parse_line(line))
            if len(self._ahead) >= LOOKAHEAD:
                break
        if len(self._ahead) >= LOOKAHEAD:
            self._diagnose()
            return False
        return True

    def _diagnose(self) -> None:
        assert self._suspect is not None
        kind, row = self._suspect
        if kind == "content":
            self.problem = self._judge_content(row)
        else:
            self.problem = self._judge_chain(row)

    def _chains_after(self, previous: bytes, row: Row) -> bool:
        digest = self.row_hash(row)
        return digest is not None and chain_step(previous, digest) == row[CHAIN]

    def _judge_content(self, row: Row) -> Problem:
        seq, shown = row[SEQ], _show(row[ROW_ID])
        if (row[KEY_ID] or "").encode() not in self._ciphers:
            return Problem("key", f"row {shown} (seq {seq}) is encrypted under key "
                           f"{row[KEY_ID]!r}, which is not in the audit key ring", seq, shown)
        if self._ahead and self._chains_after(self.chain, self._ahead[0]):
            return Problem("inserted", f"row {shown} at seq {seq} was inserted: it is not signed "
                           "with the audit key and the chain continues without it", seq, shown)
        if chain_step(self.chain, row[STORED_HASH] or b"") == row[CHAIN]:
            return Problem("changed", f"row {shown} (seq {seq}) was changed after it was "
                           "written: its content no longer matches its signed hash", seq, shown)
        return Problem("changed", f"row {shown} (seq {seq}) does not match its signed hash and "
                       "its seal does not chain: changed with its hashes rewritten, or forged",
                       seq, shown)

    def _judge_chain(self, row: Row) -> Problem:
        seq, shown = row[SEQ], _show(row[ROW_ID])
        for later in self._ahead:
            if self._chains_after(self.chain, later):
                return Problem("reordered", f"rows re-ordered: row {_show(later[ROW_ID])}, now "
                               f"at seq {later[SEQ]}, was sealed at seq {seq}, where row {shown} "
                               "now sits", seq, shown)
        own = self.row_hash(row)
        if own is not None and self._ahead and self._chains_after(chain_step(self.chain, own),
                                                                  self._ahead[0]):
            return Problem("changed", f"the seal of row {shown} (seq {seq}) was altered",
                           seq, shown)
        return Problem("deleted", f"row {shown} at seq {seq} does not follow seq {seq - 1}: a row "
                       "before it was deleted (and later seals renumbered) or the chain was "
                       "rewritten", seq, shown)


def _show(row_id: str | None) -> str | None:
    """A row id as people read it (normalised; a forged one may be anything)."""
    if row_id is None:
        return None
    try:
        return str(uuid.UUID(row_id))
    except ValueError:
        return row_id


def _missing(row: Row, expected: int) -> Problem:
    seq = row[SEQ]
    if seq != expected:
        span = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
        return Problem("deleted", f"rows at {span} were deleted: the chain jumps from seq "
                       f"{expected - 1} to seq {seq}", expected, None)
    return Problem("deleted", f"row {_show(row[SEALED_ID])} (seq {seq}) was deleted: its seal remains "
                   "but the row is gone", seq, _show(row[SEALED_ID]))


class UnsealedCheck:
    """Rows written since the last seal have no chain yet: each must match its signed hash."""

    def __init__(self, keys: AuditKeys) -> None:
        self._walker = ChainWalker(keys, seq=0, chain=b"")
        self.rows = 0
        self.problem: Problem | None = None

    def feed(self, lines: Iterable[bytes]) -> bool:
        walker, base, ciphers = self._walker, self._walker._mac, self._walker._ciphers
        for line in lines:
            _seq, _sealed, _chain, stored, kid, blob, columns = line.split(b"\t", 6)
            try:
                ciphertext = unhexlify(blob)
                plain = ciphers[kid].decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:],
                                             columns[:ID_LENGTH])
                state = base.copy()
                state.update(FORMAT + columns + b"\n" + plain)
                if state.digest() == unhexlify(stored):
                    self.rows += 1
                    continue
            except (InvalidTag, KeyError, ValueError):
                pass
            row = parse_line(line)
            self.problem = _unsealed_problem(row, forged=walker.row_hash(row) is None)
            return False
        return True


def _unsealed_problem(row: Row, *, forged: bool) -> Problem:
    shown = _show(row[ROW_ID])
    if forged:
        return Problem("inserted", f"row {shown} (not yet sealed) was not written by billwatch: "
                       "its metadata does not open under the audit keys", None, shown)
    return Problem("changed", f"row {shown} (not yet sealed) was changed after it was written: "
                   "it no longer matches its signed hash", None, shown)
