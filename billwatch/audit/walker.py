"""Walking the trail: re-compute row hashes and the chain, fast, and name the first break.

Two checks together prove a sealed trail: every row's content still matches its stored keyed
hash (:class:`ContentCheck`), and the stored hashes still chain, seal after seal, to the signed
checkpoints (:class:`ChainWalker`). The database is checked in those two passes — the chain
over the narrow seal table in seq order, the content in one sequential scan of the rows — which
spares the server a seq-ordered join of every wide row. An archive file holds whole rows in seq
order, so :class:`ChainWalker` can also check both at once (``content=True``).

Lines arrive as produced by :mod:`billwatch.audit.streams`; the hot loops split them and
convert nothing else. Anything odd leaves the fast path, and the few rows after it are looked
at slowly to say what happened (changed, deleted, inserted, re-ordered), because "hash mismatch
at row 81,233" is not something an auditor can act on.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from binascii import unhexlify
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from billwatch.audit.chain import FORMAT, chain_step
from billwatch.audit.crypto import NONCE_BYTES, AuditKeys
from billwatch.audit.streams import ID_LENGTH, NULL, Row, parse_line, parse_link

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


class _Keys:
    """The ciphers and the HMAC key schedule, ready for the hot loops."""

    def __init__(self, keys: AuditKeys) -> None:
        self.ciphers: dict[bytes, AESGCM] = {
            kid.encode(): cipher for kid, _ in keys.ring.keys
            if (cipher := keys.ring.cipher(kid)) is not None}
        self.mac = hmac.new(keys.hmac_key, digestmod=hashlib.sha256)

    def row_hash(self, row: Row) -> bytes | None:
        """A row's HMAC re-computed from its content, or None if its metadata won't open."""
        cipher = self.ciphers.get((row[KEY_ID] or "").encode())
        blob, row_id = row[CIPHERTEXT], row[ROW_ID]
        if cipher is None or row_id is None or blob is None:
            return None
        try:
            plain = cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], row_id.encode())
        except (InvalidTag, ValueError):
            return None
        state = self.mac.copy()
        state.update(FORMAT + row[COLUMNS] + b"\n" + plain)
        return state.digest()


class ChainWalker:
    """Walks sealed rows in seq order from an anchor (genesis, or the end of the archives)."""

    def __init__(self, keys: AuditKeys, *, seq: int, chain: bytes,
                 pins: Mapping[int, list[Pin]] | None = None, content: bool = True) -> None:
        self.expected = seq + 1
        self.chain = chain
        self.rows = 0
        self.problem: Problem | None = None
        self.pins = pins or {}
        self.content = content
        self._keys = _Keys(keys)
        self._parse: Callable[[bytes], Row] = parse_line if content else parse_link
        self._suspect: tuple[str, Row] | None = None
        self._ahead: list[Row] = []

    @property
    def last_seq(self) -> int:
        return self.expected - 1

    def feed(self, lines: Iterable[bytes]) -> bool:
        """Check lines; False once a problem is found (the walk should stop)."""
        if self.problem is not None:
            return False
        iterator = iter(lines)
        if self._suspect is not None:
            return self._collect(iterator)
        return self._feed_rows(iterator) if self.content else self._feed_links(iterator)

    def _feed_links(self, lines: Iterator[bytes]) -> bool:
        """The chain hot loop: seq, sealed row id, chain hash, the row's stored hash."""
        sha256, pins = hashlib.sha256, self.pins
        expected, chain = self.expected, self.chain
        for line in lines:
            seq, sealed, sealed_chain, stored = line.split(b"\t", 3)
            if int(seq) != expected or stored == NULL:
                return self._missing(line, expected, chain)
            next_chain = sha256(chain + unhexlify(stored)).digest()
            if next_chain != unhexlify(sealed_chain):
                return self._suspend("chain", line, expected, chain, lines)
            chain = next_chain
            if expected in pins and not self._pinned(expected, chain, sealed.decode()):
                return False
            expected += 1
        self._advance(expected, chain)
        return True

    def _feed_rows(self, lines: Iterator[bytes]) -> bool:
        """Chain and content at once (archive files): decrypt, HMAC, compare, chain."""
        sha256, ciphers, base, pins = hashlib.sha256, self._keys.ciphers, self._keys.mac, self.pins
        expected, chain = self.expected, self.chain
        for line in lines:
            seq, _sealed, sealed_chain, stored, kid, blob, columns = line.split(b"\t", 6)
            if int(seq) != expected or columns.startswith(NULL):
                return self._missing(line, expected, chain)
            try:
                ciphertext = unhexlify(blob)
                plain = ciphers[kid].decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:],
                                             columns[:ID_LENGTH])
            except (InvalidTag, KeyError, ValueError):
                return self._suspend("content", line, expected, chain, lines)
            state = base.copy()
            state.update(FORMAT + columns + b"\n" + plain)
            mac = state.digest()
            if mac != unhexlify(stored):
                return self._suspend("content", line, expected, chain, lines)
            next_chain = sha256(chain + mac).digest()
            if next_chain != unhexlify(sealed_chain):
                return self._suspend("chain", line, expected, chain, lines)
            chain = next_chain
            if expected in pins and not self._pinned(expected, chain,
                                                     columns[:ID_LENGTH].decode()):
                return False
            expected += 1
        self._advance(expected, chain)
        return True

    def finish(self) -> None:
        """Call when the lines run out, so a suspicion at the very end is still judged."""
        if self._suspect is not None and self.problem is None:
            self._diagnose()

    def _advance(self, expected: int, chain: bytes) -> None:
        self.rows += expected - self.expected
        self.expected, self.chain = expected, chain

    def _missing(self, line: bytes, expected: int, chain: bytes) -> bool:
        self._advance(expected, chain)
        self.problem = _missing(self._parse(line), expected)
        return False

    def _pinned(self, seq: int, chain: bytes, row_id: str) -> bool:
        for pin in self.pins[seq]:
            if pin.head_hash != chain or (pin.last_id and pin.last_id != row_id):
                self._advance(seq, chain)
                shown = _show(row_id)
                self.problem = Problem(
                    "rewritten", f"the chain at seq {seq} (row {shown}) disagrees with the "
                    f"signed {pin.source}: rows up to it were changed, removed or re-ordered and "
                    "their hashes re-computed", seq, shown)
                return False
        return True

    # --- the slow path: what exactly happened -------------------------------------------------

    def _suspend(self, kind: str, line: bytes, expected: int, chain: bytes,
                 rest: Iterator[bytes]) -> bool:
        self._advance(expected, chain)
        self._suspect = (kind, self._parse(line))
        return self._collect(rest)

    def _collect(self, lines: Iterator[bytes]) -> bool:
        for line in lines:
            self._ahead.append(self._parse(line))
            if len(self._ahead) >= LOOKAHEAD:
                break
        if len(self._ahead) >= LOOKAHEAD:
            self._diagnose()
            return False
        return True

    def _diagnose(self) -> None:
        assert self._suspect is not None
        kind, row = self._suspect
        self.problem = self._judge_content(row) if kind == "content" else self._judge_chain(row)

    def _judge_content(self, row: Row) -> Problem:
        seq, shown = row[SEQ], _show(row[ROW_ID])
        if (row[KEY_ID] or "").encode() not in self._keys.ciphers:
            return Problem("key", f"row {shown} (seq {seq}) is encrypted under key "
                           f"{row[KEY_ID]!r}, which is not in the audit key ring", seq, shown)
        return judge_sealed_content(row, self.chain, self._ahead[0] if self._ahead else None)

    def _judge_chain(self, row: Row) -> Problem:
        seq, shown = row[SEQ], _show(row[ROW_ID] or row[SEALED_ID])
        for later in self._ahead:
            if links(self.chain, later):
                return Problem("reordered", f"rows re-ordered: row {_show(later[SEALED_ID])}, "
                               f"now at seq {later[SEQ]}, was sealed at seq {seq}, where row "
                               f"{shown} now sits", seq, shown)
        if self._ahead and links(chain_step(self.chain, row[STORED_HASH]), self._ahead[0]):
            return Problem("changed", f"the seal of row {shown} (seq {seq}) was altered",
                           seq, shown)
        return Problem("deleted", f"row {shown} at seq {seq} does not follow seq {seq - 1}: a row "
                       "before it was deleted (and later seals renumbered) or the chain was "
                       "rewritten", seq, shown)


def links(previous: bytes, row: Row) -> bool:
    """Whether ``row``'s seal chains from ``previous`` with the row hash it carries."""
    stored = row[STORED_HASH]
    return stored is not None and chain_step(previous, stored) == row[CHAIN]


def judge_sealed_content(row: Row, previous: bytes, following: Row | None) -> Problem:
    """A sealed row whose content fails its hash: inserted if the chain goes on without it."""
    seq, shown = row[SEQ], _show(row[ROW_ID] or row[SEALED_ID])
    if following is not None and links(previous, following):
        return Problem("inserted", f"row {shown} at seq {seq} was inserted: it is not signed "
                       "with the audit key and the chain continues without it", seq, shown)
    return Problem("changed", f"row {shown} (seq {seq}) was changed after it was written: its "
                   "content no longer matches its signed hash", seq, shown)


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
    shown = _show(row[SEALED_ID])
    return Problem("deleted", f"row {shown} (seq {seq}) was deleted: its seal remains but the "
                   "row is gone", seq, shown)


@dataclass(frozen=True, slots=True)
class Suspect:
    """A row whose content does not match its stored hash.

    ``reason``: ``changed`` (it opens but hashes differently), ``unopenable`` (its metadata does
    not decrypt: forged, or moved from another row) or ``unknown-key`` (its key left the ring).
    """

    row_id: str
    reason: str


class ContentCheck:
    """Every row against its own keyed hash, in whatever order the rows come.

    It keeps going after a failure (up to :data:`LIMIT` suspects), because rows come in storage
    order and the verifier reports the *first* broken row of the chain.
    """

    LIMIT = 1000

    def __init__(self, keys: AuditKeys) -> None:
        self._keys = _Keys(keys)
        self.rows = 0
        self.suspects: list[Suspect] = []

    def feed(self, lines: Iterable[bytes]) -> bool:
        ciphers, base = self._keys.ciphers, self._keys.mac
        for line in lines:
            stored, kid, blob, columns = line.split(b"\t", 3)
            self.rows += 1
            try:
                ciphertext = unhexlify(blob)
                plain = ciphers[kid].decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:],
                                             columns[:ID_LENGTH])
                state = base.copy()
                state.update(FORMAT + columns + b"\n" + plain)
                if state.digest() == unhexlify(stored):
                    continue
                reason = "changed"
            except KeyError:
                reason = "unknown-key"
            except (InvalidTag, ValueError):
                reason = "unopenable"
            self.suspects.append(Suspect(columns[:ID_LENGTH].decode(), reason))
            if len(self.suspects) >= self.LIMIT:
                return False
        return True


def unsealed_problem(suspect: Suspect) -> Problem:
    shown = _show(suspect.row_id)
    if suspect.reason == "unknown-key":
        return key_problem(suspect, None)
    if suspect.reason == "unopenable":
        return Problem("inserted", f"row {shown} (not yet sealed) was not written by billwatch: "
                       "its metadata does not open under the audit keys", None, shown)
    return Problem("changed", f"row {shown} (not yet sealed) was changed after it was written: "
                   "it no longer matches its signed hash", None, shown)


def key_problem(suspect: Suspect, seq: int | None) -> Problem:
    shown = _show(suspect.row_id)
    return Problem("key", f"row {shown} is encrypted under a key that is not in the audit key "
                   "ring (add the retired key back to verify it)", seq, shown)
