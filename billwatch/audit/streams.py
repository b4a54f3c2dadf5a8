r"""Row streams for the verifier and the archiver: one text line per row, no ORM.

The verifier's speed is decided here. Every row travels as one *row line*, tab-separated in
PostgreSQL's ``COPY`` text format (``\N`` for null)::

    seq  sealed-row-id  chain-hash  row-hash  key-id  ciphertext  <22 content columns>

hashes and ciphertext in hex, the content columns in the exact canonical text the row hash
covers (see :mod:`billwatch.audit.chain`). On PostgreSQL the server produces these lines itself
through ``COPY (SELECT ...) TO STDOUT``, so Python splits off six fields and hashes the tail
as received; on SQLite the same lines are built in Python. Archive files store the same lines,
so one hot loop (:mod:`billwatch.audit.walker`) checks them all. A sink returns False to stop.
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


def unsealed_sql(dialect: str) -> str:
    columns = ", ".join(["NULL", "NULL", "NULL", *_leading(dialect)[3:],
                         *canonical_sql(dialect, "l")])
    return (f"SELECT {columns} FROM audit_logs l WHERE NOT EXISTS "
            "(SELECT 1 FROM audit_seals s WHERE s.audit_log_id = l.id) "
            "ORDER BY l.occurred_at, l.id")


async def stream_sealed(conn: AsyncConnection, sink: Sink, *, after: int,
                        through: int | None = None) -> None:
    """Sealed rows after seq ``after`` (through ``through``), in seq order."""
    await _stream(conn, sealed_sql(conn.dialect.name, after=after, through=through), sink)


async def stream_unsealed(conn: AsyncConnection, sink: Sink) -> None:
    """Rows written since the last seal, oldest first (their seal fields are null)."""
    await _stream(conn, unsealed_sql(conn.dialect.name), sink)


async def _stream(conn: AsyncConnection, sql: str, sink: Sink) -> None:
    if conn.dialect.name == "postgresql":
        await _copy(conn, sql, sink)
    else:
        await _fetch(conn, sql, sink)


class _Stop(Exception):
    """Raised out of the COPY output callback when the sink has seen enough."""


async def _copy(conn: AsyncConnection, sql: str, sink: Sink) -> None:
    """Run ``COPY (sql) TO STDOUT`` on the driver connection, feeding complete lines."""
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    pending = b""

    async def output(chunk: bytes) -> None:
        nonlocal pending
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        if lines and not sink(lines):
            raise _Stop

    try:
        await driver.copy_from_query(sql, output=output)
    except _Stop:  # the COPY was cancelled; its transaction is spent, and so is the connection
        await conn.invalidate()


async def _fetch(conn: AsyncConnection, sql: str, sink: Sink) -> None:
    result = await conn.stream(text(sql).execution_options(yield_per=BATCH))
    async for rows in result.partitions(BATCH):
        if not sink([_line(row) for row in rows]):
            await result.close()
            return


def _line(row: Sequence[Any]) -> bytes:
    """A SQLite row as the row line PostgreSQL would have sent."""
    lead = [NULL if value is None else (value.hex() if isinstance(value, bytes) else str(value))
            .encode() for value in row[:6]]
    return b"\t".join(lead) + b"\t" + column_text(row[6:])
