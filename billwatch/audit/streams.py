r"""Row streams for the verifier and the archiver: one text line per row, no ORM.

The verifier's speed is decided here. Rows travel as text lines, tab-separated in PostgreSQL's
``COPY`` text format (``\N`` for null), hashes and ciphertext in hex, content columns in the
exact canonical text the row hash covers (see :mod:`billwatch.audit.chain`)::

    row line      seq  sealed-row-id  chain-hash  row-hash  key-id  ciphertext  <22 columns>
    chain line    seq  sealed-row-id  chain-hash  row-hash
    content line  row-hash  key-id  ciphertext  <22 columns>

On PostgreSQL the server writes these lines itself through ``COPY (SELECT ...) TO STDOUT``, so
Python splits off the leading fields and hashes the tail as received; on SQLite the same lines
are built in Python. Archive files hold row lines. A sink returns False when it has seen enough.
"""

from __future__ import annotations

from binascii import unhexlify
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from billwatch.audit.chain import GENESIS, canonical_sql, column_text, sqlite_uuid
from billwatch.audit.models import AuditArchive

Row = tuple[Any, ...]
"""A parsed row line: (seq, sealed id, chain, row hash, key id, ciphertext, row id, columns)."""
Sink = Callable[[list[bytes]], bool]
BATCH = 10_000
NULL = b"\\N"
ID_LENGTH = 36


@dataclass(frozen=True, slots=True)
class Anchor:
    """Where the online chain starts: after the newest archived seq (or at genesis)."""

    seq: int
    chain: bytes


async def online_anchor(conn: AsyncConnection) -> Anchor:
    newest = (await conn.execute(
        select(AuditArchive.last_seq, AuditArchive.head_hash)
        .order_by(AuditArchive.last_seq.desc()).limit(1))).first()
    if newest is None:
        return Anchor(0, GENESIS)
    return Anchor(int(newest.last_seq), bytes(newest.head_hash))


def parse_line(line: bytes) -> Row:
    """A row line's fields, for the slow paths (diagnosis, tests)."""
    seq, sealed, chain, stored, kid, blob, columns = line.split(b"\t", 6)
    row_id = None if columns.startswith(NULL) else columns[:ID_LENGTH].decode()
    return (None if seq == NULL else int(seq), None if sealed == NULL else sealed.decode(),
            _unhex(chain), _unhex(stored), None if kid == NULL else kid.decode(), _unhex(blob),
            row_id, columns)


def parse_link(line: bytes) -> Row:
    """A chain line's fields, laid out like a row line's (content fields are None)."""
    seq, sealed, chain, stored = line.split(b"\t", 3)
    row_id = None if stored == NULL else sealed.decode()
    return (int(seq), sealed.decode(), _unhex(chain), _unhex(stored), None, None, row_id, None)


def _unhex(field: bytes) -> bytes | None:
    return None if field == NULL else unhexlify(field)


def _leading(dialect: str) -> list[str]:
    if dialect == "postgresql":
        return ["s.seq", "s.audit_log_id", "encode(s.chain_hash, 'hex')", "encode(l.content_hash, 'hex')",
                "l.metadata_key_id", "encode(l.metadata_ciphertext, 'hex')"]
    return ["s.seq", sqlite_uuid("s.audit_log_id"), "s.chain_hash", "l.content_hash", "l.metadata_key_id",
            "l.metadata_ciphertext"]


def sealed_sql(dialect: str, *, after: int, through: int | None = None) -> str:
    columns = ", ".join([*_leading(dialect), *canonical_sql(dialect, "l")])
    bound = f" AND s.seq <= {int(through)}" if through is not None else ""
    return (f"SELECT {columns} FROM audit_seals s LEFT JOIN audit_logs l "
            f"ON l.id = s.audit_log_id WHERE s.seq > {int(after)}{bound} ORDER BY s.seq")


def link_sql(dialect: str, *, after: int) -> str:
    """The chain pass: each seal with the stored hash of its row, in seq order."""
    columns = ", ".join(_leading(dialect)[:4])
    return (f"SELECT {columns} FROM audit_seals s LEFT JOIN audit_logs l "
            f"ON l.id = s.audit_log_id WHERE s.seq > {int(after)} ORDER BY s.seq")


def content_sql(dialect: str) -> str:
    """The content pass: every row with its stored hash, in storage order (no sort, no join)."""
    columns = ", ".join([*_leading(dialect)[3:], *canonical_sql(dialect, "l")])
    return f"SELECT {columns} FROM audit_logs l"


async def stream_sealed(conn: AsyncConnection, sink: Sink, *, after: int,
                        through: int | None = None) -> None:
    """Whole sealed rows after seq ``after`` (through ``through``), in seq order."""
    await _stream(conn, sealed_sql(conn.dialect.name, after=after, through=through), sink, 6)


async def stream_links(conn: AsyncConnection, sink: Sink, *, after: int) -> None:
    """Chain lines (seq, sealed row id, chain hash, row hash) after seq ``after``."""
    await _stream(conn, link_sql(conn.dialect.name, after=after), sink, 4)


async def stream_contents(conn: AsyncConnection, sink: Sink) -> None:
    """Content lines (row hash, key id, ciphertext, column text) of every row."""
    await _stream(conn, content_sql(conn.dialect.name), sink, 3)


async def _stream(conn: AsyncConnection, sql: str, sink: Sink, leading: int) -> None:
    """Feed ``sink`` the lines of ``sql``, whose first ``leading`` columns precede the content."""
    if conn.dialect.name == "postgresql":
        await _copy(conn, sql, sink)
    else:
        await _fetch(conn, sql, sink, leading)


async def _copy(conn: AsyncConnection, sql: str, sink: Sink) -> None:
    """Run ``COPY (sql) TO STDOUT`` on the driver connection, feeding complete lines.

    Once the sink has seen enough the rest is drained unread rather than cancelled, so the
    transaction (and its snapshot) stays usable for the next stream.
    """
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    pending = b""
    wanted = True

    async def output(chunk: bytes) -> None:
        nonlocal pending, wanted
        if not wanted:
            return
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        if lines:
            wanted = sink(lines)

    await driver.copy_from_query(sql, output=output)


async def _fetch(conn: AsyncConnection, sql: str, sink: Sink, leading: int) -> None:
    result = await conn.stream(text(sql).execution_options(yield_per=BATCH))
    async for rows in result.partitions(BATCH):
        if not sink([_line(row, leading) for row in rows]):
            await result.close()
            return


def _line(row: Sequence[Any], leading: int) -> bytes:
    """A SQLite row as the line PostgreSQL's COPY would have sent."""
    fields = [NULL if value is None else (value.hex() if isinstance(value, bytes) else str(value))
              .encode() for value in row[:leading]]
    if len(row) > leading:
        fields.append(column_text(row[leading:]))
    return b"\t".join(fields)
